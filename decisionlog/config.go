package decisionlog

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is the `decision_logs:` section of the serve configuration.
type Config struct {
	// Console writes each record as one JSON line to stdout.
	Console bool `yaml:"console"`
	// File writes each record as one JSON line to a rotated file.
	File *FileConfig `yaml:"file"`
	// Service uploads records in OPA's decision-log protocol.
	Service *ServiceConfig `yaml:"service"`
	// Sample keeps a fraction of allows and of denies (default 1 each).
	Sample SampleConfig `yaml:"sample"`
	// QueueSize bounds the decisions waiting to become records (default
	// 10000); beyond it they are dropped and counted (queue_full).
	QueueSize int `yaml:"queue_size"`
	// QueueBytes bounds the requests those decisions hold (Entry.Size;
	// default 64 MiB): bodies can be large. Beyond it: queue_full.
	QueueBytes int64 `yaml:"queue_bytes"`

	// ID is the sidecar's id (labels.id).
	ID string `yaml:"-"`
	// Version is Gatehouse's version (labels.version).
	Version string `yaml:"-"`
	// Labels are added to labels (id and version win).
	Labels map[string]string `yaml:"-"`
	// Path is the decision rule's path (the record's "path").
	Path string `yaml:"-"`
	// Stdout is the console sink's writer (default os.Stdout).
	Stdout interface{ Write([]byte) (int, error) } `yaml:"-"`
	// Registerer receives the metrics (nil: none).
	Registerer prometheus.Registerer `yaml:"-"`
	// HTTPClient is the upload client (default: 10s timeout).
	HTTPClient *http.Client `yaml:"-"`
	// Now is a test hook (default time.Now).
	Now func() time.Time `yaml:"-"`
}

// FileConfig is `decision_logs.file`.
type FileConfig struct {
	// Path of the log file; rotated files are kept beside it.
	Path string `yaml:"path"`
	// MaxSizeMB rotates the file when it would grow beyond this (default 100).
	MaxSizeMB int `yaml:"max_size_mb"`
	// MaxBackups is the number of rotated files kept (default 5; 0 = default).
	MaxBackups int `yaml:"max_backups"`
}

// ServiceConfig is `decision_logs.service`: OPA's upload protocol.
type ServiceConfig struct {
	// URL receives POSTs of gzip'd JSON arrays of records (e.g. the
	// control endpoint's http://control:8282/v1/logs).
	URL string `yaml:"url"`
	// TokenFile holds the bearer token sent with each upload (read at
	// each upload, so it can be rotated).
	TokenFile string `yaml:"token_file"`
	// Reporting tunes the upload, with OPA's names.
	Reporting ReportingConfig `yaml:"reporting"`
}

// ReportingConfig is `decision_logs.service.reporting`.
type ReportingConfig struct {
	// MinDelaySeconds is the delay between uploads, and the first delay
	// after a failed one (default 1; fractions allowed).
	MinDelaySeconds float64 `yaml:"min_delay_seconds"`
	// MaxDelaySeconds caps the exponential backoff after failures
	// (default 30).
	MaxDelaySeconds float64 `yaml:"max_delay_seconds"`
	// BufferSizeLimitBytes bounds the records waiting for upload
	// (default 32 MiB): when full the oldest are dropped and counted
	// (buffer_full).
	BufferSizeLimitBytes int64 `yaml:"buffer_size_limit_bytes"`
}

// SampleConfig is `decision_logs.sample`: the fractions of allowed and
// denied decisions logged (0 to 1; unset = 1).
type SampleConfig struct {
	Allow *float64 `yaml:"allow"`
	Deny  *float64 `yaml:"deny"`
}

// Defaults.
const (
	DefaultQueueSize        = 10000
	DefaultQueueBytes       = 64 << 20
	DefaultBufferLimitBytes = 32 << 20
	defaultMinDelay         = 1.0
	defaultMaxDelay         = 30.0
	defaultFileMaxSizeMB    = 100
	defaultFileMaxBackups   = 5
)

// Enabled reports whether any sink is configured.
func (c *Config) Enabled() bool {
	return c != nil && (c.Console || c.File != nil || c.Service != nil)
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	if c.File != nil {
		if c.File.MaxSizeMB == 0 {
			c.File.MaxSizeMB = defaultFileMaxSizeMB
		}
		if c.File.MaxBackups == 0 {
			c.File.MaxBackups = defaultFileMaxBackups
		}
	}
	if c.Service != nil {
		r := &c.Service.Reporting
		if r.MinDelaySeconds == 0 {
			r.MinDelaySeconds = defaultMinDelay
		}
		if r.MaxDelaySeconds == 0 {
			r.MaxDelaySeconds = max(defaultMaxDelay, r.MinDelaySeconds)
		}
		if r.BufferSizeLimitBytes == 0 {
			r.BufferSizeLimitBytes = DefaultBufferLimitBytes
		}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every problem, each naming the key and value.
func (c Config) Validate() error {
	var errs []error
	if c.QueueSize < 0 {
		errs = append(errs, fmt.Errorf("decision_logs.queue_size: %d is negative", c.QueueSize))
	}
	if c.QueueBytes < 0 {
		errs = append(errs, fmt.Errorf("decision_logs.queue_bytes: %d is negative", c.QueueBytes))
	}
	for name, f := range map[string]*float64{"allow": c.Sample.Allow, "deny": c.Sample.Deny} {
		if f != nil && (*f < 0 || *f > 1) {
			errs = append(errs, fmt.Errorf("decision_logs.sample.%s: %v is not a fraction between 0 and 1", name, *f))
		}
	}
	if f := c.File; f != nil {
		if f.Path == "" {
			errs = append(errs, errors.New("decision_logs.file.path: required"))
		}
		if f.MaxSizeMB < 0 {
			errs = append(errs, fmt.Errorf("decision_logs.file.max_size_mb: %d is negative", f.MaxSizeMB))
		}
		if f.MaxBackups < 0 {
			errs = append(errs, fmt.Errorf("decision_logs.file.max_backups: %d is negative", f.MaxBackups))
		}
	}
	if s := c.Service; s != nil {
		if u, err := url.Parse(s.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("decision_logs.service.url: %q is not an http(s) URL", s.URL))
		}
		r := s.Reporting
		if r.MinDelaySeconds < 0 {
			errs = append(errs, fmt.Errorf("decision_logs.service.reporting.min_delay_seconds: %v is negative", r.MinDelaySeconds))
		}
		if r.MaxDelaySeconds < 0 || (r.MaxDelaySeconds > 0 && r.MaxDelaySeconds < r.MinDelaySeconds) {
			errs = append(errs, fmt.Errorf("decision_logs.service.reporting.max_delay_seconds: %v is negative or below min_delay_seconds (%v)", r.MaxDelaySeconds, r.MinDelaySeconds))
		}
		if r.BufferSizeLimitBytes < 0 {
			errs = append(errs, fmt.Errorf("decision_logs.service.reporting.buffer_size_limit_bytes: %d is negative", r.BufferSizeLimitBytes))
		}
	}
	return errors.Join(errs...)
}
