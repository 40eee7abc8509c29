package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sync/semaphore"

	"github.com/gatehouse-dev/gatehouse/internal/netx"
	"github.com/gatehouse-dev/gatehouse/tenancy"
	"github.com/gatehouse-dev/gatehouse/token"
)

// Buckets of this package in the data file (tenancy owns the others).
var (
	bucketLog     = []byte("log")
	bucketBundles = []byte("bundles")
	// buckets of the audit trail (audit.go) and the decision store
	// (decisions.go)
	ownBuckets = [][]byte{
		bucketLog, bucketBundles, bucketAudit, bucketAuditTenants,
		bucketDecisions, bucketDecisionsTenants, bucketDecisionsIDs, bucketDecisionsMeta, bucketUsage,
	}
)

const (
	// openTimeout bounds waiting for the data file's lock: a second
	// process gets ErrInUse instead of hanging.
	openTimeout = time.Second
	// initialMmapSize keeps bbolt from re-mapping the file (which waits for
	// every read transaction, e.g. a snapshot being streamed) until the
	// file outgrows it. It is address space, not memory.
	initialMmapSize = 1 << 30
	// shutdownTimeout bounds the graceful shutdown of Serve.
	shutdownTimeout = 5 * time.Second
)

// Server is the control endpoint: the admin API, the sync feed and bundle
// hosting over one bbolt file.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	now      func() time.Time
	db       *bolt.DB
	epoch    string
	admin    [sha256.Size]byte  // sha256 of the admin token
	sync     *[sha256.Size]byte // sha256 of the sync token, nil without one
	verifier *token.Verifier    // nil without issuers
	metrics  *metrics
	gatherer prometheus.Gatherer // nil when the Registerer is not one
	handler  http.Handler
	feed     *notifier
	parts    *partCache    // encoded history parts shared by the change streams
	rev      atomic.Uint64 // the last committed revision
	store    store
	commits  commitQueue
	// bodies holds body_budget_bytes: request bodies reserve their size
	// before they are read.
	bodies  *semaphore.Weighted
	streams atomic.Int64 // sync streams open (bounded by cfg.MaxStreams)
	// usageTrimmed is when decision intake last removed expired usage
	// counters (Unix nanoseconds).
	usageTrimmed atomic.Int64
	// fleet holds the sidecars' status reports.
	fleet *fleet

	// ctx ends with Serve or Close: open streams watch it.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	lis    net.Listener
	closed bool
}

// New opens (or creates) <data_dir>/control.db, initialises the tenancy
// layout and, on a new file, a random epoch; it reads the token files and
// loads the issuers' keys. cfg is completed with SetDefaults and checked
// with Validate before anything is opened: New is where a Config is
// validated (gatehouse control does not validate it first), and a problem
// is an ErrConfig naming the key. logger may be nil.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, logger: logger, now: cfg.Now, bodies: semaphore.NewWeighted(cfg.BodyBudgetBytes)}
	if s.now == nil {
		s.now = time.Now
	}
	s.fleet = newFleet(cfg.SidecarTTL, s.now)
	admin, err := readToken("admin_token_file", cfg.AdminTokenFile)
	if err != nil {
		return nil, err
	}
	s.admin = sha256.Sum256(admin)
	if cfg.SyncTokenFile != "" {
		tok, err := readToken("sync_token_file", cfg.SyncTokenFile)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(tok)
		if sum == s.admin {
			return nil, fmt.Errorf("%w: sync_token_file: %q holds the admin token: the sync token must differ", ErrConfig, cfg.SyncTokenFile)
		}
		s.sync = &sum
	}

	var es *etcdStore
	epoch := ""
	if cfg.Store == StoreEtcd {
		cli, err := dialEtcd(cfg.Etcd)
		if err != nil {
			return nil, err
		}
		es = &etcdStore{s: s, cli: cli, prefix: cfg.Etcd.Prefix, retention: uint64(cfg.Etcd.LogRetention), url: cfg.Etcd.AdvertiseURL}
		if epoch, err = etcdIdentity(context.Background(), cli, es.prefix); err != nil {
			_ = cli.Close()
			return nil, err
		}
		es.epoch = epoch
		token := admin
		if cfg.SyncTokenFile != "" {
			token, _ = readToken("sync_token_file", cfg.SyncTokenFile) // read above
		}
		if err := es.bootstrap(context.Background(), cfg, token); err != nil {
			_ = cli.Close()
			return nil, err
		}
	}
	if err := s.open(epoch); err != nil {
		if es != nil {
			_ = es.cli.Close()
		}
		return nil, err
	}
	s.store = boltStore{s}
	if es != nil {
		s.store = es
	}
	if err := s.instrument(); err != nil {
		_ = s.store.close()
		_ = s.db.Close()
		return nil, err
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		s.metrics.decisionBytes.Set(float64(getU64(tx.Bucket(bucketDecisionsMeta), metaDecisionBytes)))
		return nil
	})
	if es != nil {
		if err := es.start(); err != nil {
			_ = es.close()
			_ = s.db.Close()
			return nil, err
		}
		s.logger.Info("control replica follows etcd", "endpoints", cfg.Etcd.Endpoints, "prefix", es.prefix, "revision", s.rev.Load())
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.handler = s.routes()
	return s, nil
}

// instrument builds the token verifier and registers the metrics (after
// the data file opened, so that a refused start leaves the Registerer as
// it was).
func (s *Server) instrument() error {
	reg := s.cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if g, ok := reg.(prometheus.Gatherer); ok {
		s.gatherer = g
	}
	if len(s.cfg.Issuers) > 0 {
		v, err := token.NewVerifier(token.VerifierConfig{Issuers: s.cfg.Issuers, Now: s.cfg.Now, Registerer: reg}, s.logger)
		if err != nil {
			return fmt.Errorf("%w: issuers: %w", ErrConfig, err)
		}
		s.verifier = v
	}
	m, err := newMetrics(reg, func() float64 { return float64(s.rev.Load()) })
	if err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	for _, c := range s.fleet.collectors(s.rev.Load) {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	s.metrics = m
	return nil
}

// open opens the data file and reads its revision and epoch. A non-empty
// epoch is the history's (the etcd store's): a new file takes it, and a
// file of another history is refused.
func (s *Server) open(epoch string) error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data_dir %q: %w", s.cfg.DataDir, err)
	}
	path := filepath.Join(s.cfg.DataDir, DBFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout, InitialMmapSize: initialMmapSize})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("open %s: %w (its lock was not released within %v)", path, ErrInUse, openTimeout)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	var rev uint64
	var created bool
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tenancy.Init(tx); err != nil {
			return err
		}
		for _, b := range ownBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		s.epoch = tenancy.Epoch(tx)
		if epoch != "" && s.epoch != epoch {
			if tenancy.Revision(tx) > 0 {
				return fmt.Errorf("the file holds revision %d of history %s, the etcd store holds history %s: move the file away to rebuild it from etcd", tenancy.Revision(tx), s.epoch, epoch)
			}
			s.epoch = ""
		}
		if s.epoch == "" && epoch != "" {
			s.epoch = epoch
			if err := tenancy.SetEpoch(tx, s.epoch); err != nil {
				return err
			}
		}
		if s.epoch == "" {
			var b [16]byte
			_, _ = rand.Read(b[:]) // never fails (crypto/rand)
			s.epoch = hex.EncodeToString(b[:])
			created = true
			if err := tenancy.SetEpoch(tx, s.epoch); err != nil {
				return err
			}
		}
		rev = tenancy.Revision(tx)
		return nil
	})
	if err != nil {
		_ = db.Close()
		return fmt.Errorf("initialise %s: %w", path, err)
	}
	s.db = db
	s.rev.Store(rev)
	s.feed = newNotifier(rev)
	s.parts = newPartCache(sharedPartsBytes)
	s.logger.Info("control data opened", "path", path, "revision", rev, "epoch", s.epoch, "new_epoch", created)
	return nil
}

// Epoch returns the identity of the data file's history (random, chosen
// when the file was created).
func (s *Server) Epoch() string { return s.epoch }

// Revision returns the last committed revision.
func (s *Server) Revision() uint64 { return s.rev.Load() }

// Handler returns the HTTP API, for tests in process and for embedding.
func (s *Server) Handler() http.Handler { return s.handler }

// Listen opens the listener of Config.Addr.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.lis != nil {
		return nil
	}
	l, err := netx.Listen(s.cfg.Addr)
	if err != nil {
		return err
	}
	s.lis = l
	return nil
}

// Addr returns the bound address after Listen, nil before.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lis == nil {
		return nil
	}
	return s.lis.Addr()
}

// Serve serves HTTP until ctx is done (opening the listener first when
// Listen was not called), then shuts down gracefully: the listener closes,
// open feed streams end, and in-flight requests get up to 5 seconds to
// finish. It also runs the issuers' key refresh. It returns nil after a
// shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	s.mu.Lock()
	lis := s.lis
	s.mu.Unlock()
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	vctx, vcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if s.verifier != nil {
		wg.Go(func() { _ = s.verifier.Run(vctx) })
	}
	defer func() {
		vcancel()
		wg.Wait()
	}()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	s.logger.Info("control listening", "addr", lis.Addr().String(), "revision", s.rev.Load(), "epoch", s.epoch)

	select {
	case err := <-errc:
		s.cancel()
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	s.cancel() // end the feed streams, so that Shutdown does not wait for them
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.logger.Warn("control shutdown: requests still running were cut", "err", err)
		_ = srv.Close()
	}
	<-errc
	s.logger.Info("control stopped")
	return nil
}

// Close ends the open streams, closes a listener Serve did not take over,
// and closes the data file (waiting for running transactions). Call it
// after Serve returned. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	lis := s.lis
	s.mu.Unlock()
	s.cancel()
	if lis != nil {
		_ = lis.Close() // already closed when Serve ran
	}
	serr := s.store.close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close data file: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("close store: %w", serr)
	}
	return nil
}

// routes builds the API's handler.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", s.metricsHandler())
	mux.HandleFunc("GET /v1/sync/snapshot", s.handleSnapshot)
	mux.HandleFunc("GET /v1/sync/changes", s.handleChanges)
	mux.HandleFunc("PUT /v1/bundles/{name}", s.handlePutBundle)
	mux.HandleFunc("GET /v1/bundles/{name}", s.handleGetBundle)
	mux.HandleFunc("POST /v1/batch", s.handleBatch)
	mux.HandleFunc("GET /v1/audit", s.handleAudit)
	mux.HandleFunc("POST /v1/logs", s.handleLogs)
	mux.HandleFunc("GET /v1/decisions", s.handleDecisions)
	mux.HandleFunc("GET /v1/usage", s.handleUsage)
	mux.HandleFunc("POST /v1/sidecars/{id}/status", s.handleSidecarStatus)
	mux.HandleFunc("GET /v1/sidecars", s.handleSidecars)
	mux.HandleFunc("GET /v1/revisions/{rev}", s.handleRevision)
	mux.HandleFunc("GET /v1/{collection}", s.handleList)
	mux.HandleFunc("GET /v1/{collection}/{id}", s.handleGet)
	mux.HandleFunc("PUT /v1/{collection}/{id}", s.handlePut)
	mux.HandleFunc("DELETE /v1/{collection}/{id}", s.handleDelete)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, notFound("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.recoverer(mux)
}

// recoverer answers 500 for a panicking handler instead of dropping the
// connection, and logs it.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.logger.Error("control handler panicked", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				writeJSON(w, http.StatusInternalServerError, errorBody{Error: "internal error", Code: CodeInternal})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// errorBody is the JSON of every error answer.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// writeJSON writes v as the JSON answer.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encode answer: " + err.Error(), Code: CodeInternal})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeError answers err: an apiError or tenancy.Error with its status and
// code, anything else as 500 (logged, not shown).
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ae *apiError
		te *tenancy.Error
	)
	body := errorBody{Error: err.Error()}
	status := http.StatusInternalServerError
	switch {
	case errors.As(err, &ae):
		status, body.Code = ae.status, ae.code
	case errors.As(err, &te) && te.Status >= 400 && te.Status < 500:
		status, body.Code = te.Status, te.Code
	default:
		s.logger.Error("control request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		body = errorBody{Error: "internal error (logged by the control endpoint)", Code: CodeInternal}
	}
	switch status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="gatehouse-control"`)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	}
	if status >= 400 && status < 500 {
		s.logger.Debug("control request refused", "method", r.Method, "path", r.URL.Path, "status", status, "code", body.Code, "err", body.Error)
	}
	writeJSON(w, status, body)
}
