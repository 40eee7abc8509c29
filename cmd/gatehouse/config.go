package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/authzen"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
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
	// DecisionLogs configures decision logs (SPEC §9); nil = none.
	DecisionLogs *decisionlog.Config `yaml:"decision_logs"`
	// DryRun answers every check "allow" and logs what was decided.
	DryRun bool `yaml:"dry_run"`
	// Labels describe the sidecar in decision logs and status reports.
	Labels map[string]string `yaml:"labels"`
	// ID names the sidecar (labels.id; --id, GATEHOUSE_ID; default the
	// host name).
	ID string `yaml:"id"`
	// Tracing exports a span per Check over OTLP; nil = off.
	Tracing *TracingConfig `yaml:"tracing"`
	// AuthZEN configures the AuthZEN API served on listen.authzen.
	AuthZEN authzen.Config `yaml:"authzen"`
}

// CacheConfig is the `cache:` section: entry and size bounds of the
// in-memory caches (0 = default, negative = off).
type CacheConfig struct {
	// Decisions: memoized decisions (default 10000).
	Decisions int `yaml:"decisions"`
	// Tokens: verified tokens (default 5000).
	Tokens int `yaml:"tokens"`
	// Documents: decoded tenancy documents (default 50000).
	Documents int `yaml:"documents"`
	// DecisionsMB: MiB of memoized decisions, as accounted (keys are
	// hashes; deny bodies, headers, metadata and recorded reads count);
	// default 16.
	DecisionsMB int `yaml:"decisions_mb"`
	// TokensMB: MiB of verified tokens, as accounted (their claims count);
	// default 16.
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
	// AuthZEN is the AuthZEN API address (SPEC §10); "" = off.
	AuthZEN string `yaml:"authzen"`
	// TLS applies to the grpc, http and authzen listeners.
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
	// no tenancy data: empty at revision 0), or several replicas of it: a
	// comma-separated string, or a YAML list. The sidecar follows one and
	// fails over to the next.
	ControlURL URLList `yaml:"control_url"`
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
	// the page cache). Default 8; -1 never trims.
	ResidentBudgetMB int `yaml:"resident_budget_mb"`
	// VerifyOnStart runs bbolt's consistency check over the cache file in
	// the background after a restart: true always, false never; unset, for
	// files up to 1 GiB (the check reads every page: ~80 s of one core at
	// 6.5 GB). Damage found while reading triggers a rebuild either way.
	VerifyOnStart *bool `yaml:"verify_on_start"`
	// StatusInterval is how often the sidecar reports its state to the
	// control endpoint (POST /v1/sidecars/{id}/status; default 5s).
	StatusInterval time.Duration `yaml:"status_interval"`
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
	if c.ID == "" {
		c.ID, _ = os.Hostname()
	}
	if c.DecisionLogs != nil {
		c.DecisionLogs.SetDefaults()
	}
	if c.Tracing != nil {
		c.Tracing.SetDefaults()
	}
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
		c.authzenConfig().ValidateIfServed(c.Listen.AuthZEN),
		c.Log.Validate(),
	}
	if c.Data.ReconnectMaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("data.reconnect_max_backoff: %v is negative", c.Data.ReconnectMaxBackoff))
	}
	if c.Data.StatusInterval < 0 {
		errs = append(errs, fmt.Errorf("data.status_interval: %v is negative", c.Data.StatusInterval))
	}
	errs = append(errs, keyed(c.engineConfig().Validate(), engineKeys))
	errs = append(errs, c.Data.ControlURL.Validate("data.control_url"))
	errs = append(errs, c.Limits.Validate())
	if c.Tracing != nil {
		errs = append(errs, c.Tracing.Validate())
	}
	if c.DecisionLogs != nil {
		errs = append(errs, c.DecisionLogs.Validate())
		if !c.DecisionLogs.Enabled() {
			errs = append(errs, errors.New("decision_logs: no sink (console, file or service) is configured"))
		}
	}
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
	if sh := c.Policies.Shadow; sh != nil {
		for _, p := range []*string{&sh.Dir, &sh.Bundle.PublicKeyFile, &sh.Bundle.TokenFile} {
			*p = resolve(base, *p)
		}
	}
	for _, p := range []*string{
		&c.Policies.Dir, &c.Policies.Bundle.PublicKeyFile, &c.Policies.Bundle.TokenFile,
		&c.Data.Dir, &c.Data.TokenFile, &c.AuthZEN.TokenFile,
		&c.Listen.TLS.CertFile, &c.Listen.TLS.KeyFile, &c.Listen.TLS.ClientCAFile,
	} {
		*p = resolve(base, *p)
	}
	if dl := c.DecisionLogs; dl != nil {
		if dl.File != nil {
			dl.File.Path = resolve(base, dl.File.Path)
		}
		if dl.Service != nil {
			dl.Service.TokenFile = resolve(base, dl.Service.TokenFile)
		}
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

// URLList is one URL or several: in YAML a string (comma-separated) or a
// list of strings; held comma-separated.
type URLList string

// UnmarshalYAML accepts a string or a list of strings.
func (l *URLList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		var v string
		if err := n.Decode(&v); err != nil {
			return err
		}
		*l = URLList(v)
		return nil
	case yaml.SequenceNode:
		var vs []string
		if err := n.Decode(&vs); err != nil {
			return err
		}
		for _, v := range vs {
			if strings.Contains(v, ",") {
				return fmt.Errorf("line %d: %q: one URL per list entry", n.Line, v)
			}
		}
		*l = URLList(strings.Join(vs, ","))
		return nil
	}
	return fmt.Errorf("line %d: want a URL, a comma-separated list of URLs or a YAML list of them", n.Line)
}

// URLs returns the URLs of the list (none for an empty one).
func (l URLList) URLs() []string {
	var out []string
	for u := range strings.SplitSeq(string(l), ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// Validate checks that every entry is an http(s) URL with a host, listed
// once, and that a non-empty list has entries.
func (l URLList) Validate(key string) error {
	if strings.TrimSpace(string(l)) == "" {
		return nil
	}
	urls := l.URLs()
	if len(urls) == 0 {
		return fmt.Errorf("%s: %q lists no URL", key, string(l))
	}
	seen := map[string]bool{}
	var errs []error
	for _, u := range urls {
		p, err := url.Parse(u)
		switch {
		case err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "":
			errs = append(errs, fmt.Errorf("%s: %q is not an http(s) URL", key, u))
		case seen[strings.TrimRight(u, "/")]:
			errs = append(errs, fmt.Errorf("%s: %q is listed twice", key, u))
		}
		seen[strings.TrimRight(u, "/")] = true
	}
	return errors.Join(errs...)
}

// authzenConfig is the AuthZEN API's configuration as the serve
// configuration sets it: its section, the decision rule of policies:, and
// mTLS from listen.tls.
func (c ServeConfig) authzenConfig() authzen.Config {
	az := c.AuthZEN
	az.Decision = c.Policies.AuthZENDecision
	az.ClientCerts = c.Listen.TLS.ClientCAFile != ""
	return az
}
