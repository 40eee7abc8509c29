package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/netx"
	"github.com/gatehouse-dev/gatehouse/token"
)

// ServeConfig is the configuration file of `gatehouse serve` (SPEC §1).
type ServeConfig struct {
	// Listen holds the listener addresses.
	Listen ListenConfig `yaml:"listen"`
	// Policies locates the policy set and names the decision rule.
	Policies bundle.PolicyConfig `yaml:"policies"`
	// Data configures tenancy data: cache folder, control endpoint, freshness.
	Data DataConfig `yaml:"data"`
	// Issuers are the trusted token issuers.
	Issuers []token.IssuerConfig `yaml:"issuers"`
	// Log configures logging.
	Log LogConfig `yaml:"log"`
	// Cache bounds the in-memory caches.
	Cache CacheConfig `yaml:"cache"`
	// Limits bound what checks may cost.
	Limits LimitsConfig `yaml:"limits"`
}

// CacheConfig is the `cache:` section: entry and size bounds of the
// in-memory caches (0 = default, negative = off).
type CacheConfig struct {
	// Decisions: memoized decisions (default 10000).
	Decisions int `yaml:"decisions"`
	// Tokens: verified tokens (default 10000).
	Tokens int `yaml:"tokens"`
	// Documents: decoded tenancy documents (default 50000).
	Documents int `yaml:"documents"`
	// DecisionsMB: MiB of memoized decisions, as accounted (keys are
	// hashes; deny bodies, headers, metadata and recorded reads count);
	// default 32.
	DecisionsMB int `yaml:"decisions_mb"`
	// TokensMB: MiB of verified tokens, as accounted (their claims count);
	// default 32.
	TokensMB int `yaml:"tokens_mb"`
}

// LimitsConfig is the `limits:` section: what one check, and all checks in
// flight, may cost. Requests over them are denied (413 request_too_large,
// 429 overloaded), never answered with an error status (SPEC §2).
type LimitsConfig struct {
	// MaxRequestBytes bounds a request Gatehouse evaluates: the encoded
	// CheckRequest (gRPC); the request target, headers and body (HTTP
	// service, where a body is cut to what fits and passed on as partial).
	// Default 1 MiB; keep it above Envoy's max_request_headers_kb plus
	// with_request_body.max_request_bytes.
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// MaxInflight is the number of checks evaluated at once, each on a
	// long-lived goroutine (default 4×GOMAXPROCS, at least 4).
	MaxInflight int `yaml:"max_inflight"`
	// MaxInflightBytes bounds the summed size of the requests being
	// answered (default 16 MiB; at least max_request_bytes).
	MaxInflightBytes int64 `yaml:"max_inflight_bytes"`
	// MemoryLimitMB is the Go runtime's soft memory limit in MiB (the
	// collector works harder near it). 0 (default): GOMEMLIMIT when set,
	// else 90% of the cgroup memory limit when there is one, else none;
	// -1: none.
	MemoryLimitMB int `yaml:"memory_limit_mb"`
}

// bytesOfMB converts a cache size in MiB: 0 stays 0 (the default),
// negative is -1 (off).
func bytesOfMB(mb int) int64 {
	if mb < 0 {
		return -1
	}
	return int64(mb) << 20
}

// ListenConfig is the `listen:` section.
type ListenConfig struct {
	// GRPC is the ext_authz gRPC address (and grpc.health.v1).
	GRPC string `yaml:"grpc"`
	// HTTP is the ext_authz HTTP service address.
	HTTP string `yaml:"http"`
	// Ops serves /healthz, /readyz, /metrics, /v1/status.
	Ops string `yaml:"ops"`
	// TLS applies to the grpc and http listeners.
	TLS netx.TLSConfig `yaml:"tls"`
	// HTTPPathPrefix is stripped from HTTP service request paths.
	HTTPPathPrefix string `yaml:"http_path_prefix"`
	// Pprof serves /debug/pprof/ on the ops listener.
	Pprof bool `yaml:"pprof"`
	// GRPCReflection registers gRPC server reflection, for grpcurl.
	GRPCReflection bool `yaml:"grpc_reflection"`
}

// DataConfig is the `data:` section.
type DataConfig struct {
	// Dir holds the bbolt cache file.
	Dir string `yaml:"dir"`
	// ControlURL is the control endpoint to sync tenancy data from ("" =
	// no tenancy data: empty at revision 0).
	ControlURL string `yaml:"control_url"`
	// TokenFile holds the bearer token for the control endpoint.
	TokenFile string `yaml:"token_file"`
	// MaxStaleness: older data makes checks answer "cannot decide"; 0 = serve
	// however old.
	MaxStaleness time.Duration `yaml:"max_staleness"`
	// MinRevisionWait bounds waiting for x-gatehouse-min-revision (default 1s).
	MinRevisionWait time.Duration `yaml:"min_revision_wait"`
	// ReconnectMaxBackoff caps the delay between attempts to reach the
	// control endpoint (default 10s; attempts start at 100ms, with jitter).
	ReconnectMaxBackoff time.Duration `yaml:"reconnect_max_backoff"`
	// ResidentBudgetMB: when the cache file's pages resident in the
	// process exceed it, they are dropped from the resident set (they stay in
	// the page cache). Default 32; -1 never trims.
	ResidentBudgetMB int `yaml:"resident_budget_mb"`
	// VerifyOnStart runs bbolt's consistency check over the cache file in
	// the background after a restart: true always, false never; unset, for
	// files up to 1 GiB (the check reads every page: ~80 s of one core at
	// 6.5 GB). Damage found while reading triggers a rebuild either way.
	VerifyOnStart *bool `yaml:"verify_on_start"`
}

// LogConfig is the `log:` section.
type LogConfig struct {
	// Level is debug, info, warn or error (default info).
	Level string `yaml:"level"`
	// Format is json (default) or text.
	Format string `yaml:"format"`
}

// SetDefaults fills unset fields.
func (c *ServeConfig) SetDefaults() {
	if c.Listen.GRPC == "" {
		c.Listen.GRPC = "127.0.0.1:9191"
	}
	if c.Listen.HTTP == "" {
		c.Listen.HTTP = "127.0.0.1:9192"
	}
	if c.Listen.Ops == "" {
		c.Listen.Ops = "127.0.0.1:8181"
	}
	c.Policies.SetDefaults()
	if c.Data.Dir == "" {
		c.Data.Dir = "./var"
	}
	if c.Data.MinRevisionWait == 0 {
		c.Data.MinRevisionWait = time.Second
	}
	for i := range c.Issuers {
		c.Issuers[i].SetDefaults()
	}
	c.Log.SetDefaults()
}

// SetDefaults fills unset fields.
func (c *LogConfig) SetDefaults() {
	if c.Level == "" {
		c.Level = "info"
	}
	if c.Format == "" {
		c.Format = "json"
	}
}

// Validate reports every problem, each naming the bad key and value.
func (c ServeConfig) Validate() error {
	errs := []error{
		netx.ValidateAddr("listen.grpc", c.Listen.GRPC),
		netx.ValidateAddr("listen.http", c.Listen.HTTP),
		netx.ValidateAddr("listen.ops", c.Listen.Ops),
		c.Listen.TLS.Validate(),
		c.Policies.Validate(),
		c.Log.Validate(),
	}
	if c.Data.ReconnectMaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("data.reconnect_max_backoff: %v is negative", c.Data.ReconnectMaxBackoff))
	}
	errs = append(errs, keyed(c.engineConfig().Validate(), engineKeys))
	if c.Data.ControlURL != "" && !strings.HasPrefix(c.Data.ControlURL, "http://") && !strings.HasPrefix(c.Data.ControlURL, "https://") {
		errs = append(errs, fmt.Errorf("data.control_url: %q is not an http(s) URL", c.Data.ControlURL))
	}
	errs = append(errs, c.Limits.Validate())
	errs = append(errs, token.ValidateIssuers(c.Issuers))
	return errors.Join(errs...)
}

// engineConfig is the engine's part of the serve configuration.
func (c ServeConfig) engineConfig() authz.Config {
	return authz.Config{
		MaxStaleness:         c.Data.MaxStaleness,
		MinRevisionWait:      c.Data.MinRevisionWait,
		DecisionCacheEntries: c.Cache.Decisions,
		DecisionCacheBytes:   bytesOfMB(c.Cache.DecisionsMB),
	}
}

// engineKeys maps the authz.Config fields named by its Validate to the
// keys of the serve configuration file.
var engineKeys = map[string]string{
	"MaxStaleness":         "data.max_staleness",
	"MinRevisionWait":      "data.min_revision_wait",
	"DecisionCacheEntries": "cache.decisions",
	"DecisionCacheBytes":   "cache.decisions_mb",
}

// keyed rewrites the *authz.FieldError problems of a component's Validate
// (joined) into "key: problem", by the field's key in the file.
func keyed(err error, keys map[string]string) error {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		var fe *authz.FieldError
		if errors.As(e, &fe) && keys[fe.Field] != "" {
			e = fmt.Errorf("%s: %w", keys[fe.Field], fe.Err)
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// Validate reports negative limits and a max_inflight_bytes that cannot
// hold one request of max_request_bytes.
func (c LimitsConfig) Validate() error {
	var errs []error
	if c.MaxRequestBytes < 0 {
		errs = append(errs, fmt.Errorf("limits.max_request_bytes: %d is negative", c.MaxRequestBytes))
	}
	if c.MaxInflight < 0 {
		errs = append(errs, fmt.Errorf("limits.max_inflight: %d is negative", c.MaxInflight))
	}
	if c.MaxInflightBytes < 0 {
		errs = append(errs, fmt.Errorf("limits.max_inflight_bytes: %d is negative", c.MaxInflightBytes))
	}
	if c.MemoryLimitMB < -1 {
		errs = append(errs, fmt.Errorf("limits.memory_limit_mb: %d is negative (-1 is no limit, 0 the default)", c.MemoryLimitMB))
	}
	if c.MaxInflightBytes > 0 && c.MaxInflightBytes < c.MaxRequestBytes {
		errs = append(errs, fmt.Errorf("limits.max_inflight_bytes: %d is less than limits.max_request_bytes (%d)", c.MaxInflightBytes, c.MaxRequestBytes))
	}
	return errors.Join(errs...)
}

// Validate reports a bad level or format.
func (c LogConfig) Validate() error {
	var errs []error
	switch c.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Level))
	}
	switch c.Format {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not json or text", c.Format))
	}
	return errors.Join(errs...)
}

// resolvePaths makes the file paths of a configuration file relative to the
// file's folder.
func (c *ServeConfig) resolvePaths(base string) {
	for _, p := range []*string{
		&c.Policies.Dir, &c.Policies.Bundle.PublicKeyFile, &c.Policies.Bundle.TokenFile,
		&c.Data.Dir, &c.Data.TokenFile,
		&c.Listen.TLS.CertFile, &c.Listen.TLS.KeyFile, &c.Listen.TLS.ClientCAFile,
	} {
		*p = resolve(base, *p)
	}
	for i := range c.Issuers {
		c.Issuers[i].JWKSFile = resolve(base, c.Issuers[i].JWKSFile)
		c.Issuers[i].PublicKeyFile = resolve(base, c.Issuers[i].PublicKeyFile)
	}
}

func resolve(base, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

// envPrefix prefixes the environment variable of every flag:
// --control-url → GATEHOUSE_CONTROL_URL.
const envPrefix = "GATEHOUSE_"

// applyEnv sets every flag not given on the command line from its
// GATEHOUSE_* environment variable, so flags override the environment.
func applyEnv(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if err := cmd.Flags().Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}
