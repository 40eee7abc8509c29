package control

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/internal/netx"
	"github.com/gatehouse-dev/gatehouse/token"
)

// Defaults of Config.
const (
	// DefaultAddr is Config.Addr's default (SPEC §2: port 8282).
	DefaultAddr = "127.0.0.1:8282"
	// DefaultDataDir is Config.DataDir's default.
	DefaultDataDir = "./var/control"
	// DefaultHistory is Config.History's default, in revisions.
	DefaultHistory = 100000
	// DefaultHeartbeat is Config.Heartbeat's default.
	DefaultHeartbeat = 5 * time.Second
	// DefaultMaxBodyBytes is Config.MaxBodyBytes's default: 32 MiB.
	DefaultMaxBodyBytes = 32 << 20
	// DefaultMaxEntityBytes is Config.MaxEntityBytes's default: 1 MiB.
	DefaultMaxEntityBytes = 1 << 20
	// DefaultBodyBudgetWait is Config.BodyBudgetWait's default.
	DefaultBodyBudgetWait = 2 * time.Second
	// DefaultFeedPartBytes is Config.FeedPartBytes's default: 1 MiB.
	DefaultFeedPartBytes = 1 << 20
	// DefaultMaxStreams is Config.MaxStreams's default.
	DefaultMaxStreams = 4096

	// StoreBolt and StoreEtcd are the values of Config.Store.
	StoreBolt = "bbolt"
	StoreEtcd = "etcd"
	// DefaultEtcdPrefix is EtcdConfig.Prefix's default.
	DefaultEtcdPrefix = "/gatehouse/"
	// DefaultEtcdDialTimeout is EtcdConfig.DialTimeout's default.
	DefaultEtcdDialTimeout = 5 * time.Second

	// DBFile is the name of the bbolt file in Config.DataDir.
	DBFile = "control.db"
)

// Config configures the control endpoint (`gatehouse control --config`).
type Config struct {
	// Addr is the listen address, "host:port" or "unix:///path"; default
	// 127.0.0.1:8282.
	Addr string `yaml:"addr"`
	// DataDir is the folder of the bbolt file control.db, the state of
	// record (with store etcd, this replica's materialized copy of the
	// log); default ./var/control.
	DataDir string `yaml:"data_dir"`
	// Store is where revisions are committed: "bbolt" (default: the local
	// file, one process) or "etcd" (replicas sharing one history in an etcd
	// v3 cluster, SPEC §11).
	Store string `yaml:"store"`
	// Etcd configures the etcd store.
	Etcd EtcdConfig `yaml:"etcd"`
	// AdminTokenFile holds the bearer token with full admin rights
	// (required; surrounding whitespace is trimmed; an empty token is
	// refused).
	AdminTokenFile string `yaml:"admin_token_file"`
	// SyncTokenFile, when set, holds a read-only token for the sync feed and
	// bundle downloads (what sidecars put in their data.token_file).
	SyncTokenFile string `yaml:"sync_token_file"`
	// Issuers are the trusted issuers of membership-scoped tokens: such a
	// token acts as users[sub] with the rights of the user's memberships.
	Issuers []token.IssuerConfig `yaml:"issuers"`
	// History is the number of revisions of change history retained for
	// the change feed; default 100000. A sidecar further behind re-snapshots.
	History int `yaml:"history"`
	// Heartbeat is the interval of heartbeat lines on an idle change
	// stream; default 5s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// MaxBodyBytes bounds the body of a batch (POST /v1/batch) and of a
	// bundle upload (PUT /v1/bundles/{name}); default 32 MiB. Larger bodies
	// answer 413 without being read.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxEntityBytes bounds the body of PUT /v1/{collection}/{id} (one
	// entity); default 1 MiB, and at most MaxBodyBytes.
	MaxEntityBytes int64 `yaml:"max_entity_bytes"`
	// BodyBudgetBytes bounds the bytes of request bodies being read and
	// decoded at once, across the server: a body reserves its
	// Content-Length (or its endpoint's bound when it is sent chunked)
	// until its request ends. Default twice MaxBodyBytes; at least
	// MaxBodyBytes and MaxEntityBytes.
	BodyBudgetBytes int64 `yaml:"body_budget_bytes"`
	// BodyBudgetWait is how long a body waits for room in BodyBudgetBytes
	// (bounded by its request's context too) before it is refused with
	// 503 and Retry-After; default 2s.
	BodyBudgetWait time.Duration `yaml:"body_budget_wait"`
	// FeedPartBytes bounds one record of the change feed: a larger revision
	// is stored and streamed as several parts of about this size (a single
	// change larger than it is one part); default 1 MiB.
	FeedPartBytes int `yaml:"feed_part_bytes"`
	// MaxStreams bounds the sync streams (snapshots and change streams) open
	// at once; more answer 503 and the sidecar retries. Default 4096.
	MaxStreams int `yaml:"max_streams"`
	// StreamWriteTimeout bounds each write to a sync stream's client: a
	// client that stops reading for longer is cut off. Default 30s.
	StreamWriteTimeout time.Duration `yaml:"stream_write_timeout"`
	// Audit configures the audit trail of admin writes.
	Audit AuditConfig `yaml:"audit"`
	// Decisions configures the store of the sidecars' decision logs.
	Decisions DecisionsConfig `yaml:"decisions"`
	// SidecarTTL is how long a sidecar stays in the fleet view after its
	// last status report; default 1m.
	SidecarTTL time.Duration `yaml:"sidecar_ttl"`

	// Now is the clock (test hook); default time.Now.
	Now func() time.Time `yaml:"-"`
	// Registerer receives the server's metrics; when it is also a
	// prometheus.Gatherer, /metrics serves it. Nil means a private registry.
	Registerer prometheus.Registerer `yaml:"-"`
}

// EtcdConfig is the etcd cluster of Config.Store "etcd".
type EtcdConfig struct {
	// Endpoints are the cluster's client endpoints (host:port or URLs).
	Endpoints []string `yaml:"endpoints"`
	// Prefix is the key prefix of this control plane's keys; default
	// /gatehouse/. Replicas with the same prefix share one history.
	Prefix string `yaml:"prefix"`
	// CAFile verifies the members' certificates (TLS); CertFile and
	// KeyFile are this client's certificate (mutual TLS). Any of them set
	// turns TLS on.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// DialTimeout bounds connecting to the cluster at start; default 5s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// LogRetention is the number of revisions the etcd log keeps at
	// least; older ones are deleted once every live replica applied them.
	// Default 100000. A replica further behind (stopped longer than its
	// lease) starts from a copy of another replica's file.
	LogRetention int `yaml:"log_retention"`
	// AdvertiseURL is the URL other replicas reach this one at (its
	// admin API): a new replica, once the log is compacted, builds its
	// file from the snapshot of a replica that advertises one.
	AdvertiseURL string `yaml:"advertise_url"`
}

// SetDefaults fills the unset (zero) fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Store == "" {
		c.Store = StoreBolt
	}
	if c.Store == StoreEtcd {
		if c.Etcd.Prefix == "" {
			c.Etcd.Prefix = DefaultEtcdPrefix
		}
		if c.Etcd.DialTimeout == 0 {
			c.Etcd.DialTimeout = DefaultEtcdDialTimeout
		}
		if c.Etcd.LogRetention == 0 {
			c.Etcd.LogRetention = DefaultHistory
		}
	}
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.History == 0 {
		c.History = DefaultHistory
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxEntityBytes == 0 {
		c.MaxEntityBytes = min(DefaultMaxEntityBytes, c.MaxBodyBytes)
	}
	if c.BodyBudgetBytes == 0 {
		c.BodyBudgetBytes = 2 * max(c.MaxBodyBytes, c.MaxEntityBytes)
	}
	if c.BodyBudgetWait == 0 {
		c.BodyBudgetWait = DefaultBodyBudgetWait
	}
	if c.FeedPartBytes == 0 {
		c.FeedPartBytes = DefaultFeedPartBytes
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.StreamWriteTimeout == 0 {
		c.StreamWriteTimeout = writeTimeout
	}
	if c.SidecarTTL == 0 {
		c.SidecarTTL = DefaultSidecarTTL
	}
	if c.Decisions.MaxMB == 0 {
		c.Decisions.MaxMB = DefaultDecisionsMaxMB
	}
	if c.Audit.Retention == 0 {
		c.Audit.Retention = DefaultAuditRetention
	}
	for i := range c.Issuers {
		c.Issuers[i].SetDefaults()
	}
}

// Validate reports every problem of c, one per line after an ErrConfig
// prefix, each naming the key and the bad value. It does not read the
// token files: New does.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if err := netx.ValidateAddr("addr", c.Addr); err != nil {
		errs = append(errs, err)
	}
	if c.DataDir == "" {
		bad("data_dir: must not be empty")
	}
	if c.AdminTokenFile == "" {
		bad("admin_token_file: required (a file holding the admin bearer token)")
	}
	if c.SyncTokenFile != "" && c.SyncTokenFile == c.AdminTokenFile {
		bad("sync_token_file: %q is also the admin_token_file: the sync token must differ from the admin token", c.SyncTokenFile)
	}
	if c.History < 1 {
		bad("history: %d must be at least 1", c.History)
	}
	if c.Heartbeat <= 0 {
		bad("heartbeat: %v must be positive", c.Heartbeat)
	}
	if c.MaxBodyBytes < 1024 {
		bad("max_body_bytes: %d must be at least 1024", c.MaxBodyBytes)
	}
	if c.MaxEntityBytes < 1024 || c.MaxEntityBytes > c.MaxBodyBytes {
		bad("max_entity_bytes: %d must be from 1024 to max_body_bytes (%d)", c.MaxEntityBytes, c.MaxBodyBytes)
	}
	if c.BodyBudgetBytes < max(c.MaxBodyBytes, c.MaxEntityBytes) {
		bad("body_budget_bytes: %d must be at least max_body_bytes (%d): a body of that size could never be read", c.BodyBudgetBytes, c.MaxBodyBytes)
	}
	if c.BodyBudgetWait < 0 {
		bad("body_budget_wait: %v must not be negative", c.BodyBudgetWait)
	}
	if c.FeedPartBytes < 1 {
		bad("feed_part_bytes: %d must be positive", c.FeedPartBytes)
	}
	if c.MaxStreams < 1 {
		bad("max_streams: %d must be at least 1", c.MaxStreams)
	}
	if c.StreamWriteTimeout <= 0 {
		bad("stream_write_timeout: %v must be positive", c.StreamWriteTimeout)
	}
	switch c.Store {
	case StoreBolt:
	case StoreEtcd:
		errs = append(errs, c.Etcd.validate(c.FeedPartBytes)...)
	default:
		bad("store: %q is not a store (want %s or %s)", c.Store, StoreBolt, StoreEtcd)
	}
	if c.Audit.Retention < time.Hour {
		bad("audit.retention: %v must be at least 1h", c.Audit.Retention)
	}
	if c.SidecarTTL < time.Second {
		bad("sidecar_ttl: %v must be at least 1s", c.SidecarTTL)
	}
	if c.Decisions.MaxMB < 1 || c.Decisions.MaxMB > 1<<20 {
		bad("decisions.max_mb: %d must be from 1 to %d", c.Decisions.MaxMB, 1<<20)
	}
	if err := token.ValidateIssuers(c.Issuers); err != nil {
		errs = append(errs, fmt.Errorf("issuers: %w", err))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w:\n%w", ErrConfig, errors.Join(errs...))
}

// readToken reads a token file: the content trimmed of whitespace, which
// must not be empty.
func readToken(key, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrConfig, key, err)
	}
	tok := bytes.TrimSpace(b)
	if len(tok) == 0 {
		return nil, fmt.Errorf("%w: %s: %q holds no token", ErrConfig, key, path)
	}
	if bytes.ContainsAny(tok, " \t\r\n") {
		return nil, fmt.Errorf("%w: %s: %q holds more than one word: a bearer token has no whitespace", ErrConfig, key, path)
	}
	return tok, nil
}

// validate checks the etcd store's keys; partBytes is feed_part_bytes.
func (e EtcdConfig) validate(partBytes int) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if len(e.Endpoints) == 0 {
		bad("etcd.endpoints: required with store etcd (host:port of the cluster's members)")
	}
	for _, ep := range e.Endpoints {
		if err := validEndpoint(ep); err != nil {
			bad("etcd.endpoints: %q: %v", ep, err)
		}
	}
	if e.Prefix == "" || strings.ContainsAny(e.Prefix, "\x00\n") {
		bad("etcd.prefix: %q must be a non-empty key prefix", e.Prefix)
	}
	if (e.CertFile == "") != (e.KeyFile == "") {
		bad("etcd.cert_file and etcd.key_file: give both or neither (%q, %q)", e.CertFile, e.KeyFile)
	}
	if e.DialTimeout <= 0 {
		bad("etcd.dial_timeout: %v must be positive", e.DialTimeout)
	}
	if e.AdvertiseURL != "" {
		if u, err := url.Parse(e.AdvertiseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("etcd.advertise_url: %q must be an http(s) URL of this replica", e.AdvertiseURL)
		}
	}
	if e.LogRetention < 1 {
		bad("etcd.log_retention: %d must be at least 1", e.LogRetention)
	}
	if partBytes > maxEtcdPartBytes {
		bad("feed_part_bytes: %d must be at most %d with store etcd (a revision's parts travel in one etcd request)", partBytes, maxEtcdPartBytes)
	}
	return errs
}

// validEndpoint checks an etcd endpoint: host:port, or an http(s) or unix
// URL.
func validEndpoint(ep string) error {
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return err
		}
		switch u.Scheme {
		case "http", "https":
			if u.Host == "" {
				return errors.New("the URL has no host")
			}
		case "unix", "unixs":
		default:
			return fmt.Errorf("scheme %q: want http, https or unix", u.Scheme)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return err
	}
	if host == "" || port == "" {
		return errors.New("want host:port")
	}
	return nil
}
