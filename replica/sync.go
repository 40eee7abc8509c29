// sync.go is long (about 680 lines) on purpose: it is the one client of
// the control endpoint's feed — snapshot, bulk bootstrap, change stream,
// failover between replicas and the background consistency check — whose
// steps share the stream's reader, deadlines and retry state.

package replica

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/tenancy"
	"github.com/gatehouse-dev/gatehouse/token"
)

// SyncConfig configures a Syncer.
type SyncConfig struct {
	// ControlURL is the control endpoint, e.g. http://127.0.0.1:8282, or
	// several replicas of it, comma-separated: the Syncer follows one and
	// moves to the next when it fails (see Run).
	ControlURL string
	// TokenFile holds the bearer token (re-read at every connection, so it
	// can be rotated).
	TokenFile string
	// IdleTimeout: a change stream silent for longer (no change, no
	// heartbeat) is considered dead and reconnected. Default 20s.
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 100ms, 10s).
	MinBackoff, MaxBackoff time.Duration
	// CheckOnStart runs the cache file's consistency check in the background
	// after start. It reads every page (about 80 s of one core for a 6.5 GB
	// file), so CheckMaxBytes can limit it to smaller files.
	CheckOnStart bool
	// CheckMaxBytes skips the start-up check for files larger than this
	// (0: no limit).
	CheckMaxBytes int64
	// HTTPClient is a test hook (default: no overall timeout, streams are
	// long-lived).
	HTTPClient *http.Client
	// Now is a test hook.
	Now func() time.Time
	// MaxLineBytes bounds one line of the feed (default 64 MiB). A revision
	// larger than it arrives in several parts, each a line; a line beyond it
	// ends the stream with an error.
	MaxLineBytes int
	// ResidentBudget: when the cache file's mapped pages in the process's
	// resident set exceed it, they are dropped from it (measured every
	// 100ms; default 8 MiB; <0 never). Faulting them back costs little:
	// at 16 and 32 MiB the cold bench made 16,000 and 8,300 minor faults
	// in 8 s at the same CPU per check. See Store.TrimResident and
	// residentMeter.
	ResidentBudget int64
	// Registerer receives sync metrics (nil: none).
	Registerer prometheus.Registerer
}

// SetDefaults fills unset fields.
func (c *SyncConfig) SetDefaults() {
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 20 * time.Second
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.ResidentBudget == 0 {
		c.ResidentBudget = 8 << 20
	}
	if c.MaxLineBytes == 0 {
		c.MaxLineBytes = 64 << 20
	}
}

// Syncer keeps a Store in step with a control endpoint: a snapshot when the
// cache is empty, damaged, or too far behind, then the change stream.
type Syncer struct {
	cfg     SyncConfig
	store   *Store
	logger  *slog.Logger
	metrics syncMetrics

	// urls are the control endpoint's replicas; cur the one followed.
	urls []string
	cur  int

	lastPersist time.Time
	// noBulk: the last bulk snapshot failed its checksums; take the next
	// one as NDJSON (then bulk again).
	noBulk bool
}

type syncMetrics struct {
	applied   prometheus.Counter
	snapshots *prometheus.CounterVec
	errors    prometheus.Counter
	apply     prometheus.Histogram
	lag       prometheus.Gauge
}

// NewSyncer returns a syncer feeding store.
func NewSyncer(cfg SyncConfig, store *Store, logger *slog.Logger) *Syncer {
	cfg.SetDefaults()
	m := syncMetrics{
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_sync_revisions_applied_total", Help: "Revisions of the change feed applied to the cache.",
		}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_sync_snapshots_total", Help: "Snapshots taken, by result (success, error).",
		}, []string{"result"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_sync_errors_total", Help: "Sync connections that ended in an error.",
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "gatehouse_sync_apply_seconds", Help: "Time to apply a group of revisions to the cache.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gatehouse_sync_lag_revisions", Help: "Control endpoint revision minus cache revision, as last heard.",
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(m.applied, m.snapshots, m.errors, m.apply, m.lag)
	}
	return &Syncer{cfg: cfg, store: store, logger: logger, metrics: m, urls: SplitURLs(cfg.ControlURL)}
}

// SplitURLs splits a comma-separated list of control endpoint URLs,
// trimming spaces and dropping empty entries.
func SplitURLs(list string) []string {
	var out []string
	for u := range strings.SplitSeq(list, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	if len(out) == 0 {
		out = []string{""}
	}
	return out
}

// failover moves to the next replica of the control endpoint.
func (s *Syncer) failover(cause error) {
	from := s.urls[s.cur]
	s.cur = (s.cur + 1) % len(s.urls)
	s.logger.Warn("moving to another replica of the control endpoint", "from", from, "to", s.urls[s.cur], "cause", cause)
}

// errGone means the feed no longer holds the cache's revision, or the
// control endpoint's history is not the one the cache holds (another
// epoch, a different history hash, a since ahead of its revision): a
// snapshot is needed.
var errGone = errors.New("change history gone")

// errAhead: the control endpoint has not reached the cache's revision (a
// replica lagging behind, or a history restored from a backup). It is an
// errGone: with several replicas the others are tried first.
var errAhead = fmt.Errorf("the control endpoint is behind the cache: %w", errGone)

// Run syncs until ctx is done.
func (s *Syncer) Run(ctx context.Context) error {
	if s.cfg.CheckOnStart && s.store.State().Present {
		if size := s.store.FileSize(); s.cfg.CheckMaxBytes > 0 && size > s.cfg.CheckMaxBytes {
			s.logger.Info("tenancy cache consistency check skipped: the file is large (set data.verify_on_start: true to force it)",
				"bytes", size, "limit", s.cfg.CheckMaxBytes)
		} else {
			go s.checkInBackground(ctx)
		}
	}
	if s.cfg.ResidentBudget > 0 {
		go s.keepResident(ctx.Done(), s.cfg.ResidentBudget)
	}
	backoff := s.cfg.MinBackoff
	misses := 0 // replicas that failed in a row
	behind := 0 // replicas found behind the cache (and skipped) since the last progress
	for ctx.Err() == nil {
		var err error
		progressed := false
		if !s.store.State().Present || s.store.Corrupt() {
			err = s.snapshot(ctx)
			progressed = err == nil
		} else {
			progressed, err = s.follow(ctx)
			switch {
			case errors.Is(err, errAhead) && behind+1 < len(s.urls):
				// this replica has not reached the cache's revision: the
				// others may have; a snapshot once as many replicas were
				// found behind as there are others
				behind++
			case errors.Is(err, errGone):
				s.logger.Info("change history no longer covers the cache; taking a snapshot", "revision", s.store.State().Revision, "control_url", s.urls[s.cur])
				err = s.snapshot(ctx)
				progressed = err == nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			s.metrics.errors.Inc()
			s.store.setError(err.Error())
			s.logger.Warn("tenancy sync interrupted; serving from the cache", "err", err, "revision", s.store.State().Revision, "control_url", s.urls[s.cur], "retry_in", backoff)
		}
		if progressed {
			backoff, misses, behind = s.cfg.MinBackoff, 0, 0
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if err != nil && len(s.urls) > 1 {
			// the next replica at once; back off after a whole round
			s.failover(err)
			if misses++; misses < len(s.urls) {
				wait = s.cfg.MinBackoff / 2
			} else {
				misses = 0
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if !progressed && misses == 0 {
			backoff = min(backoff*2, s.cfg.MaxBackoff)
		}
	}
	return nil
}

func (s *Syncer) request(ctx context.Context, path string, q url.Values, accept string) (*http.Response, error) {
	u := strings.TrimRight(s.urls[s.cur], "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	// a replica that does not answer within the idle timeout is given up
	// (the next one is tried); the stream itself is bounded by lineReader
	rctx, cancel := context.WithCancel(ctx)
	answered := make(chan struct{})
	go func() {
		t := time.NewTimer(s.cfg.IdleTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-answered:
		}
	}()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		close(answered)
		cancel()
		return nil, err
	}
	if err := token.SetBearer(req, s.cfg.TokenFile, "data.token_file"); err != nil {
		close(answered)
		cancel()
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := s.cfg.HTTPClient.Do(req)
	close(answered)
	if err != nil {
		cancel()
		if ctx.Err() == nil && rctx.Err() != nil {
			err = fmt.Errorf("no answer within %v: %w", s.cfg.IdleTimeout, err)
		}
		return nil, fmt.Errorf("GET %s%s: %w", s.urls[s.cur], path, err)
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	var answer struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(b, &answer)
	switch {
	case resp.StatusCode == http.StatusGone:
		return nil, fmt.Errorf("%w: %s", errGone, strings.TrimSpace(string(b)))
	case resp.StatusCode == http.StatusConflict && answer.Code == "ahead":
		// the control endpoint is behind the cache: a replica lagging
		// behind, or not the history the cache holds (restored from a
		// backup, or replaced)
		return nil, fmt.Errorf("%w: %s", errAhead, strings.TrimSpace(string(b)))
	}
	return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
}

// cancelBody ends its request's context when closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// lineReader reads NDJSON lines, each bounded, with an idle timeout.
type lineReader struct {
	r    *bufio.Reader
	body io.Closer
	idle time.Duration
	max  int
}

func (lr *lineReader) next() (tenancy.FeedLine, error) {
	var l tenancy.FeedLine
	t := time.AfterFunc(lr.idle, func() { lr.body.Close() })
	b, err := lr.r.ReadSlice('\n')
	var long []byte
	for errors.Is(err, bufio.ErrBufferFull) {
		long = append(long, b...)
		if len(long) > lr.max {
			t.Stop()
			return l, fmt.Errorf("a feed line exceeds %d bytes", lr.max)
		}
		b, err = lr.r.ReadSlice('\n')
	}
	t.Stop()
	if long != nil {
		b = append(long, b...)
	}
	if len(b) > lr.max {
		return l, fmt.Errorf("a feed line of %d bytes exceeds %d", len(b), lr.max)
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(b) > 0 {
			return l, fmt.Errorf("stream cut inside a line (%d bytes)", len(b))
		}
		return l, err
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("bad feed line: %w", err)
	}
	return l, nil
}

// buffered reports whether a complete line may already be waiting.
func (lr *lineReader) buffered() bool { return lr.r.Buffered() > 0 }

func (s *Syncer) open(resp *http.Response) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(resp.Body, min(1<<20, s.cfg.MaxLineBytes)), body: resp.Body, idle: s.cfg.IdleTimeout, max: s.cfg.MaxLineBytes}
}

// snapshot builds a new cache file from the control endpoint's snapshot:
// its entities, then the revisions committed while they were read, every
// one checked against the history hash chain from the header's to the end
// line's.
func (s *Syncer) snapshot(ctx context.Context) (err error) {
	start := time.Now()
	defer func() {
		result := "success"
		if err != nil {
			result = "error"
		}
		s.metrics.snapshots.WithLabelValues(result).Inc()
	}()
	accept := tenancy.BulkMediaType + ", " + ndjson + ";q=0.5"
	if s.noBulk {
		accept, s.noBulk = ndjson, false // this once
	}
	// the snapshot holds every revision committed before it was asked for:
	// it is known current as of then (or of its last revision's stamp)
	asked := s.cfg.Now()
	resp, err := s.request(ctx, "/v1/sync/snapshot", nil, accept)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";"); strings.TrimSpace(mt) == tenancy.BulkMediaType {
		return s.bulkSnapshot(resp, start, asked)
	}
	lr := s.open(resp)
	head, err := lr.next()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if head.Type != tenancy.LineHeader || head.Epoch == "" || head.Hash == "" {
		return fmt.Errorf("snapshot: first line is %q, want a header with an epoch and a history hash", head.Type)
	}
	b, err := s.store.BeginSnapshot(head.Revision, head.Epoch, head.Hash)
	if err != nil {
		return err
	}
	for {
		l, err := lr.next()
		if err != nil {
			b.Abort()
			return fmt.Errorf("snapshot at revision %d cut after %d entities: %w", head.Revision, b.Count(), err)
		}
		switch l.Type {
		case tenancy.LineEntity:
			if err := b.Put(l); err != nil {
				b.Abort()
				return err
			}
			continue
		case tenancy.LineRevision:
			if !l.More && l.Hash == "" {
				b.Abort()
				return fmt.Errorf("snapshot: revision %d carries no history hash", l.Revision)
			}
			if err := b.Revision(l); err != nil {
				b.Abort()
				return err
			}
			if k := knownAt(s.cfg.Now(), l.Time); !l.Time.IsZero() && k.After(asked) {
				asked = k
			}
			continue
		case tenancy.LineEnd:
			rev, hash := b.End()
			if l.Count != b.Count() || l.Revision != rev || l.Hash == "" || l.Hash != hash {
				b.Abort()
				return fmt.Errorf("snapshot: end line says %d entities at revision %d (hash %.12s), received %d at %d (hash %.12s)", l.Count, l.Revision, l.Hash, b.Count(), rev, hash)
			}
			if err := b.Commit(asked); err != nil {
				return err
			}
			s.trim()
			s.logger.Info("tenancy snapshot applied", "revision", rev, "start_revision", head.Revision, "entities", l.Count, "duration", time.Since(start))
			return nil
		default:
			b.Abort()
			return fmt.Errorf("snapshot: unexpected %q line", l.Type)
		}
	}
}

// ndjson is the media type of the NDJSON feed.
const ndjson = "application/x-ndjson"

// bulkSnapshot builds a new cache file from a bulk snapshot (see
// tenancy.BulkMediaType): the control endpoint's buckets, in key order,
// loaded into full pages of a new file and verified before it is swapped
// in. A snapshot whose values fail their checksums makes the next one an
// NDJSON snapshot (the control endpoint then reports its damage).
func (s *Syncer) bulkSnapshot(resp *http.Response, start, asked time.Time) error {
	// the idle timeout cuts a stream that stops sending
	body := &idleReader{r: resp.Body, c: resp.Body, idle: s.cfg.IdleTimeout}
	defer body.stop()
	br := tenancy.NewBulkReader(body, s.cfg.MaxLineBytes)
	h, err := br.ReadHeader()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	n, err := s.store.LoadBulk(br, h, asked)
	if err != nil {
		if errors.Is(err, tenancy.ErrDamaged) {
			s.noBulk = true
		}
		return fmt.Errorf("bulk snapshot at revision %d: %w", h.Revision, err)
	}
	s.trim()
	s.logger.Info("tenancy snapshot applied", "revision", h.Revision, "entities", n, "bulk", true, "duration", time.Since(start))
	return nil
}

// idleReader closes a body that delivers nothing for longer than idle.
type idleReader struct {
	r    io.Reader
	c    io.Closer
	idle time.Duration
	t    *time.Timer
}

func (r *idleReader) Read(p []byte) (int, error) {
	if r.t == nil {
		r.t = time.AfterFunc(r.idle, func() { r.c.Close() })
	} else {
		r.t.Reset(r.idle)
	}
	return r.r.Read(p)
}

func (r *idleReader) stop() {
	if r.t != nil {
		r.t.Stop()
	}
}

// maxGroup bounds how many already-received revisions are applied together.
const maxGroup = 512

// follow streams changes after the cache's revision until the stream ends.
// It reports whether any revision was applied or heartbeat received. The
// parts of a revision, and revisions already received, are applied in one
// transaction; a stream cut inside a revision leaves nothing of it. A
// revision whose history hash does not follow the cache's ends it with
// errGone.
func (s *Syncer) follow(ctx context.Context) (progressed bool, err error) {
	// damage found in the cache ends the stream: the loop rebuilds it
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	damaged := s.store.Damaged()
	go func() {
		select {
		case <-damaged:
			cancel()
		case <-ctx.Done():
		}
	}()
	rev, epoch, hash, err := s.store.head()
	if err != nil {
		return false, err
	}
	q := url.Values{"since": {strconv.FormatUint(rev, 10)}, "epoch": {epoch}, "hash": {hash}}
	asked := s.cfg.Now() // the header's head revision is at least the head as of then
	resp, err := s.request(ctx, "/v1/sync/changes", q, "")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	lr := s.open(resp)
	head, err := lr.next()
	if err != nil {
		return false, fmt.Errorf("changes: %w", err)
	}
	if head.Type != tenancy.LineHeader {
		return false, fmt.Errorf("changes: first line is %q, want a header", head.Type)
	}
	if head.Epoch != "" && head.Epoch != epoch {
		return false, errGone
	}
	s.heard(head.Revision, asked)

	var a *Applier
	var applyStart time.Time
	// stamped is when the control endpoint committed the last revision
	// received: the data is known current then, not when it arrives (a
	// stream held back by the network delivers old revisions late)
	var stamped time.Time
	defer func() {
		if a != nil {
			a.Abort() // a cut revision, or an error: nothing of it is applied
		}
	}()
	commit := func() error {
		now := s.cfg.Now()
		n, last := a.Applied(), a.Revision()
		err := a.Commit(knownAt(now, stamped))
		a = nil
		if err != nil {
			return err
		}
		s.lastPersist = now
		s.metrics.apply.Observe(time.Since(applyStart).Seconds())
		s.metrics.applied.Add(float64(n))
		s.metrics.lag.Set(0)
		s.logger.Debug("tenancy revisions applied", "revisions", n, "to", last, "duration", time.Since(applyStart))
		return nil
	}
	for {
		l, err := lr.next()
		if err != nil {
			if s.store.Corrupt() {
				return progressed, errors.New("tenancy cache damaged; rebuilding from a snapshot")
			}
			if ctx.Err() != nil {
				return progressed, nil
			}
			return progressed, fmt.Errorf("changes after revision %d: %w", s.store.State().Revision, err)
		}
		switch l.Type {
		case tenancy.LineRevision:
			if !l.More && l.Hash == "" {
				return progressed, fmt.Errorf("changes: revision %d carries no history hash (a control endpoint too old for this sidecar?)", l.Revision)
			}
			if a == nil {
				if a, err = s.store.BeginApply(); err != nil {
					return progressed, err
				}
				applyStart = time.Now()
			}
			stamped = l.Time
			complete, err := a.Add(l)
			if errors.Is(err, ErrDiverged) {
				s.logger.Warn("the control endpoint's history is not the cache's; taking a snapshot", "err", err)
				return progressed, fmt.Errorf("%w: %w", errGone, err)
			}
			if err != nil {
				return progressed, err
			}
			if !complete || (lr.buffered() && a.Applied() < maxGroup) {
				continue // more parts, or more revisions already here: apply them in one transaction
			}
			if err := commit(); err != nil {
				return progressed, err
			}
			progressed = true
		case tenancy.LineHeartbeat:
			if a != nil && a.Partial() {
				return progressed, fmt.Errorf("changes: heartbeat inside revision %d", l.Revision)
			}
			if a != nil {
				if err := commit(); err != nil {
					return progressed, err
				}
			}
			progressed = true
			s.heard(l.Revision, l.Time)
		default:
			return progressed, fmt.Errorf("changes: unexpected %q line", l.Type)
		}
	}
}

// checkInBackground runs the cache file's consistency check, keeping the
// pages it reads out of the resident set. It ends early when ctx does
// (between the check's phases); Close does not wait for it.
func (s *Syncer) checkInBackground(ctx context.Context) {
	start := time.Now()
	// the check reads every page: keep them out of the resident set as it goes
	done := make(chan struct{})
	defer close(done)
	go s.trimEvery(done, 250*time.Millisecond, func() bool { return true })
	switch err := s.store.CheckFile(ctx); {
	case ctx.Err() != nil || errors.Is(err, ErrClosed):
		s.logger.Info("tenancy cache consistency check cancelled", "duration", time.Since(start))
		return
	case err != nil:
		s.logger.Error("tenancy cache failed its consistency check; rebuilding from a snapshot", "err", err)
	default:
		s.logger.Info("tenancy cache consistency check passed", "duration", time.Since(start))
	}
	s.trim() // the check read every page
}

// trimEvery trims the cache's resident pages every interval when cond
// holds, until done is closed.
func (s *Syncer) trimEvery(done <-chan struct{}, every time.Duration, cond func() bool) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if cond() {
				s.trim()
			}
		}
	}
}

func (s *Syncer) trim() {
	if err := s.store.TrimResident(); err != nil {
		s.logger.Debug("could not trim the cache's resident pages", "err", err)
	}
}

// knownAt is when data received now, stamped by the control endpoint at
// stamp (zero: no stamp), is known current: the stamp, never later than
// now (the two clocks may differ). A control clock behind the sidecar's
// only makes data look older: max_staleness fails closed.
func knownAt(now, stamp time.Time) time.Time {
	if stamp.IsZero() || stamp.After(now) {
		return now
	}
	return stamp
}

// heard records contact with a control endpoint at revision rev, sent at
// time sent (zero: unknown): the data is current up to then if the cache
// has caught up.
func (s *Syncer) heard(rev uint64, sent time.Time) {
	now := s.cfg.Now()
	local := s.store.State().Revision
	if rev > local {
		s.metrics.lag.Set(float64(rev - local))
		return
	}
	s.metrics.lag.Set(0)
	s.store.markSynced(knownAt(now, sent), "")
	if now.Sub(s.lastPersist) > 10*time.Second {
		if err := s.store.persistSyncedAt(now); err == nil {
			s.lastPersist = now
		}
	}
}
