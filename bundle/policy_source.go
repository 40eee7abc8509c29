package bundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/token"
)

// PersistedBundleFile is the name, in PolicySourceConfig.DataDir, of the
// copy of the last applied bundle.
const PersistedBundleFile = "policy-bundle.tar.gz"

// Results of a bundle poll: the label values of
// gatehouse_bundle_downloads_total.
const (
	// DownloadUpdated: a new bundle verified, compiled and is now active.
	DownloadUpdated = "updated"
	// DownloadNotModified: 304 Not Modified, or a download identical to the
	// active bundle; nothing was recompiled.
	DownloadNotModified = "not_modified"
	// DownloadRefused: a bundle arrived but was refused (unsigned, bad
	// signature, tampered, malformed, too large, does not compile).
	DownloadRefused = "refused"
	// DownloadError: no bundle arrived (network error, an HTTP status other
	// than 200 and 304, an unreadable token file).
	DownloadError = "error"
)

// PolicySourceConfig configures a PolicySource.
type PolicySourceConfig struct {
	// Policies is the `policies:` section of the serve configuration;
	// Bundle.URL and Bundle.PublicKeyFile are required.
	Policies PolicyConfig
	// DataDir, when set, keeps a copy of the last applied bundle
	// (<DataDir>/policy-bundle.tar.gz) that Restore verifies and loads at
	// start, so a sidecar restarted while the bundle server is down still
	// has its policy.
	DataDir string
	// MaxBytes bounds a download (default DefaultMaxBundleBytes); the
	// unpacked content may be four times as large.
	MaxBytes int64
	// HTTPClient is a test hook (default: a client with a 60s timeout).
	HTTPClient *http.Client
	// Registerer receives gatehouse_bundle_downloads_total (nil: none).
	Registerer prometheus.Registerer
}

// PolicySource keeps an engine's policy in step with a signed bundle at a
// URL: it polls with If-None-Match, and applies a new bundle only when its
// signature verifies with the configured public key, every file matches the
// signed list, and the policy compiles. Anything else is reported through
// engine.PolicyFailed and the last good policy keeps serving; the next poll
// fetches the bundle again (the ETag kept is that of the last applied
// bundle). The public key and token files are read at every verification
// and request, so both can be rotated in place.
//
// Load, Restore and Run may be called concurrently; polls are serialised.
type PolicySource struct {
	cfg       PolicySourceConfig
	url       string
	keyFile   string
	tokenFile string
	poll      time.Duration
	decision  string
	version   ast.RegoVersion
	engine    *authz.Engine
	logger    *slog.Logger
	downloads *prometheus.CounterVec

	mu       sync.Mutex // serialises polls; guards the fields below
	etag     string     // ETag of the applied bundle ("" = none known)
	sum      [sha256.Size]byte
	active   *authz.PolicySet // the set this source applied last
	reported string           // the error last reported to the engine
}

// NewPolicySource returns a source for cfg.Policies.Bundle feeding engine.
// It checks the URL and that the public key file holds a usable key.
func NewPolicySource(cfg PolicySourceConfig, engine *authz.Engine, logger *slog.Logger) (*PolicySource, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.Policies.SetDefaults()
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBundleBytes
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 60 * time.Second}
	}
	bc := cfg.Policies.Bundle
	u, err := url.Parse(bc.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("policies.bundle.url: %q is not an http(s) URL", bc.URL)
	}
	if bc.PublicKeyFile == "" {
		return nil, errors.New("policies.bundle: public_key_file is required (unsigned bundles are refused)")
	}
	version, err := authz.ParseRegoVersion(cfg.Policies.RegoVersion)
	if err != nil {
		return nil, err
	}
	s := &PolicySource{
		cfg:       cfg,
		url:       bc.URL,
		keyFile:   bc.PublicKeyFile,
		tokenFile: bc.TokenFile,
		poll:      bc.Poll,
		decision:  cfg.Policies.Decision,
		version:   version,
		engine:    engine,
		logger:    logger.With("component", "policy_bundle"),
	}
	if _, err := s.verifier(); err != nil {
		return nil, fmt.Errorf("policies.bundle.public_key_file: %w", err)
	}
	s.downloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_bundle_downloads_total",
		Help: "Policy bundle polls by result: updated (applied), not_modified (304 or identical: no recompile), refused (unsigned, bad signature, tampered, does not compile: the last good policy keeps serving), error (no bundle arrived).",
	}, []string{"result"})
	for _, r := range []string{DownloadUpdated, DownloadNotModified, DownloadRefused, DownloadError} {
		s.downloads.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(s.downloads); err != nil {
			return nil, fmt.Errorf("register bundle metrics: %w", err)
		}
	}
	return s, nil
}

// verifier reads the public key file.
func (s *PolicySource) verifier() (*KeySet, error) {
	pem, err := os.ReadFile(s.keyFile)
	if err != nil {
		return nil, err
	}
	keys, err := token.ParsePublicKeys(pem)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.keyFile, err)
	}
	return NewKeySet(keys, s.keyFile)
}

// open verifies and compiles a bundle.
func (s *PolicySource) open(tarball []byte, origin string) (*authz.PolicySet, error) {
	v, err := s.verifier()
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	src, err := OpenBundle(tarball, OpenOptions{Keys: v, RegoVersion: s.version, Origin: origin, MaxBytes: 4 * s.cfg.MaxBytes})
	if err != nil {
		return nil, err
	}
	return s.engine.Compile(src, s.decision)
}

// Restore loads the persisted copy of the last applied bundle, verified
// and compiled again, when no bundle is active yet. A missing copy is not
// an error; an unusable one is logged and returned, and the source waits
// for a download.
func (s *PolicySource) Restore() error {
	if s.cfg.DataDir == "" {
		return nil
	}
	p := filepath.Join(s.cfg.DataDir, PersistedBundleFile)
	body, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil && int64(len(body)) > s.cfg.MaxBytes {
		err = fmt.Errorf("larger than %d bytes", s.cfg.MaxBytes)
	}
	var ps *authz.PolicySet
	if err == nil {
		ps, err = s.open(body, s.url+" (persisted copy "+p+")")
	}
	if err != nil {
		err = fmt.Errorf("persisted policy bundle %s: %w", p, err)
		s.logger.Warn("persisted policy bundle not used; waiting for a download", "path", p, "err", err)
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active != nil {
		return nil
	}
	s.engine.SetPolicy(ps)
	s.active, s.sum = ps, sha256.Sum256(body)
	s.logger.Info("policy restored from the persisted bundle", "path", p, "policy_revision", ps.Revision())
	return nil
}

// Load polls the bundle once and applies it if it changed. It returns the
// error, if any, after reporting it to the engine (a repeated identical
// error is reported once). A cancelled ctx returns ctx's error unreported.
func (s *PolicySource) Load(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	body, etag, err := s.fetch(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		s.downloads.WithLabelValues(DownloadRefused).Inc()
		return s.fail(err)
	case err != nil:
		s.downloads.WithLabelValues(DownloadError).Inc()
		return s.fail(err)
	case body == nil: // 304
		s.downloads.WithLabelValues(DownloadNotModified).Inc()
		s.recovered()
		s.logger.Debug("policy bundle not modified", "etag", etag)
		return nil
	}
	sum := sha256.Sum256(body)
	if s.active != nil && sum == s.sum {
		s.etag = etag
		s.downloads.WithLabelValues(DownloadNotModified).Inc()
		s.recovered()
		s.logger.Debug("policy bundle identical to the active one", "etag", etag)
		return nil
	}
	ps, err := s.open(body, s.url)
	if err != nil {
		s.downloads.WithLabelValues(DownloadRefused).Inc()
		what := s.url
		if etag != "" {
			what += " (etag " + etag + ")"
		}
		return s.fail(fmt.Errorf("policy bundle %s refused: %w", what, err))
	}
	s.engine.SetPolicy(ps)
	s.etag, s.sum, s.active, s.reported = etag, sum, ps, ""
	s.downloads.WithLabelValues(DownloadUpdated).Inc()
	s.persist(body)
	return nil
}

// refusedError is a download that arrived but cannot be used.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// fetch downloads the bundle: (nil, etag, nil) on 304.
func (s *PolicySource) fetch(ctx context.Context) ([]byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, "", fmt.Errorf("download policy bundle %s: %w", s.url, err)
	}
	if s.etag != "" && s.active != nil {
		req.Header.Set("If-None-Match", s.etag)
	}
	if err := token.SetBearer(req, s.tokenFile, "policy bundle token"); err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", "application/gzip, application/octet-stream")
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("download policy bundle: %w", err)
	}
	defer resp.Body.Close()
	etag := resp.Header.Get("ETag")
	switch resp.StatusCode {
	case http.StatusNotModified:
		if req.Header.Get("If-None-Match") == "" {
			return nil, "", fmt.Errorf("download policy bundle %s: 304 Not Modified to an unconditional request", s.url)
		}
		return nil, etag, nil
	case http.StatusOK:
	default:
		excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		msg := strings.Join(strings.Fields(string(excerpt)), " ")
		if msg != "" {
			msg = ": " + msg
		}
		return nil, "", fmt.Errorf("download policy bundle %s: %s%s", s.url, resp.Status, msg)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, s.cfg.MaxBytes+1))
	if err != nil {
		return nil, "", fmt.Errorf("download policy bundle %s: %w", s.url, err)
	}
	if int64(len(body)) > s.cfg.MaxBytes {
		return nil, "", &refusedError{fmt.Errorf("policy bundle %s refused: larger than %d bytes", s.url, s.cfg.MaxBytes)}
	}
	if body == nil {
		body = []byte{}
	}
	return body, etag, nil
}

// fail reports err to the engine unless it was the last error reported.
func (s *PolicySource) fail(err error) error {
	if msg := err.Error(); msg != s.reported {
		s.reported = msg
		s.engine.PolicyFailed(err)
	} else {
		s.logger.Debug("policy bundle still failing", "err", err)
	}
	return err
}

// recovered clears an error reported earlier once the bundle server
// serves the active bundle again, by re-activating the same (already
// compiled) set: the engine has no other way to clear its last error.
func (s *PolicySource) recovered() {
	if s.reported == "" || s.active == nil {
		return
	}
	s.reported = ""
	s.engine.SetPolicy(s.active)
	s.logger.Info("policy bundle source recovered", "policy_revision", s.active.Revision())
}

// persist keeps a copy of an applied bundle, written atomically.
func (s *PolicySource) persist(body []byte) {
	if s.cfg.DataDir == "" {
		return
	}
	err := func() error {
		if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
			return err
		}
		f, err := os.CreateTemp(s.cfg.DataDir, ".policy-bundle-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name()) // after the rename: no-op
		if _, err := io.Copy(f, bytes.NewReader(body)); err != nil {
			f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Rename(f.Name(), filepath.Join(s.cfg.DataDir, PersistedBundleFile))
	}()
	if err != nil {
		s.logger.Warn("cannot keep a copy of the policy bundle", "dir", s.cfg.DataDir, "err", err)
	}
}

// Run polls every policies.bundle.poll (±10%), starting now, until ctx is
// done.
func (s *PolicySource) Run(ctx context.Context) error {
	for {
		_ = s.Load(ctx)
		jitter := time.Duration((rand.Float64()*0.2 - 0.1) * float64(s.poll))
		t := time.NewTimer(s.poll + jitter)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
