package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// ReporterConfig configures a Reporter (the fleet view, SPEC §9).
type ReporterConfig struct {
	// ControlURLs are the control endpoint's replicas (data.control_url).
	// Every report goes to each of them: a replica keeps the fleet view in
	// its own memory, so each one that answers knows every sidecar.
	ControlURLs []string
	// TokenFile holds the bearer token (data.token_file), read at each
	// report.
	TokenFile string
	// ID names the sidecar; Version is Gatehouse's; Labels describe it.
	ID, Version string
	Labels      map[string]string
	// Interval between reports (data.status_interval, default 5s).
	Interval time.Duration
	// Watch, when set, returns the signals of the next change of the
	// sidecar's state (Engine.WatchReadiness): a new tenancy revision or
	// policy is reported at once (at most every MinSpacing), so the fleet
	// view sees an enforced revocation without waiting for the next tick.
	Watch func() authz.ReadinessWatch
	// MinSpacing is the least time between two reports caused by Watch
	// (default 200ms): a burst of revisions costs one report.
	MinSpacing time.Duration
	// HTTPClient is a test hook (default: a 5s timeout).
	HTTPClient *http.Client
}

// Report is what a sidecar POSTs to {control_url}/v1/sidecars/{id}/status.
type Report struct {
	ID              string            `json:"id"`
	Version         string            `json:"version"`
	Ready           bool              `json:"ready"`
	PolicyRevision  string            `json:"policy_revision"`
	TenancyRevision uint64            `json:"tenancy_revision"`
	SyncedAt        *time.Time        `json:"synced_at"`
	LastError       string            `json:"last_error"`
	Labels          map[string]string `json:"labels"`
}

// Reporter posts the sidecar's status to the control endpoint every
// Interval, from the same snapshot /v1/status serves.
type Reporter struct {
	cfg    ReporterConfig
	status func() Status
	logger *slog.Logger
	failed bool // the last report failed (logged once per outage)
}

// NewReporter returns a reporter of status (e.g. Server.Snapshot).
func NewReporter(cfg ReporterConfig, status func() Status, logger *slog.Logger) *Reporter {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 5 * time.Second}
	}
	if cfg.MinSpacing <= 0 {
		cfg.MinSpacing = 200 * time.Millisecond
	}
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	return &Reporter{cfg: cfg, status: status, logger: logger}
}

// ReportOf builds the report of a status.
func (r *Reporter) ReportOf(st Status) Report {
	rep := Report{
		ID: r.cfg.ID, Version: r.cfg.Version, Ready: st.Ready, Labels: r.cfg.Labels,
		PolicyRevision: st.Policy.Revision, TenancyRevision: st.Tenancy.Revision, SyncedAt: st.Tenancy.SyncedAt,
		LastError: st.Tenancy.LastError,
	}
	if rep.LastError == "" {
		rep.LastError = st.Policy.LastError
	}
	return rep
}

// Run reports at once, then every Interval and after each change Watch
// signals, until ctx is done. Failures are logged (once per outage) and
// retried at the next tick.
func (r *Reporter) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	var changed ReadinessSignals
	for {
		if r.cfg.Watch != nil {
			changed = r.cfg.Watch() // taken before the state is read: no change is missed
		}
		err := r.post(ctx, r.ReportOf(r.status()))
		switch {
		case err != nil && ctx.Err() == nil && !r.failed:
			r.logger.Warn("status report failed", "err", err)
			r.failed = true
		case err == nil && r.failed:
			r.logger.Info("status report delivered again")
			r.failed = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-changed.Policy:
			r.pause(ctx)
		case <-changed.Tenancy:
			r.pause(ctx)
		}
	}
}

// ReadinessSignals are the channels a Watch returns.
type ReadinessSignals = authz.ReadinessWatch

// pause waits MinSpacing (or until ctx is done), so that a burst of
// changes is one report.
func (r *Reporter) pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(r.cfg.MinSpacing):
	}
}

func (r *Reporter) post(ctx context.Context, rep Report) error {
	body, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	var errs []error
	for _, base := range r.cfg.ControlURLs {
		if err := r.postTo(ctx, base, body); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == len(r.cfg.ControlURLs) {
		return errors.Join(errs...) // no replica has the report
	}
	return nil // a replica that missed it is down or behind; it hears the next one

}

func (r *Reporter) postTo(ctx context.Context, base string, body []byte) error {
	u := strings.TrimRight(base, "/") + "/v1/sidecars/" + url.PathEscape(r.cfg.ID) + "/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.cfg.TokenFile != "" {
		tok, err := os.ReadFile(r.cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("token_file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := r.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s", u, resp.Status)
	}
	return nil
}
