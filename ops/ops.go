// Package ops serves a sidecar's operational endpoints: /healthz (alive),
// /readyz (ready to decide), /metrics (Prometheus) and /v1/status (JSON: the
// policy and tenancy revisions in use and their last errors). A Reporter
// posts the same state to the control endpoint (the fleet view).
//
// # Concurrency
//
// Handlers read the engine's state through its concurrency-safe accessors;
// a Server is safe for concurrent use.
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/netx"
)

// Config configures the ops listener.
type Config struct {
	// Addr is "host:port" or "unix:///path" ("" = disabled).
	Addr string
	// Pprof serves /debug/pprof/ on the ops listener.
	Pprof bool
	// Gatherer is scraped by /metrics.
	Gatherer prometheus.Gatherer
	// Registerer receives the state gauges (revisions, age).
	Registerer prometheus.Registerer
	// Now is a test hook; default time.Now.
	Now func() time.Time
}

// Server is the ops HTTP server.
type Server struct {
	cfg    Config
	engine *authz.Engine
	logger *slog.Logger
	srv    *http.Server
	lis    net.Listener
}

// New returns an ops server for engine.
func New(cfg Config, engine *authz.Engine, logger *slog.Logger) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, engine: engine, logger: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /v1/status", s.status)
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	}
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	if cfg.Registerer != nil {
		s.registerGauges(cfg.Registerer)
	}
	return s
}

func (s *Server) registerGauges(reg prometheus.Registerer) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_ready",
			Help: "1 when the sidecar can decide (policy compiled, tenancy data present).",
		}, func() float64 {
			if s.engine.Ready() == nil {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_tenancy_revision",
			Help: "Revision of the tenancy data decisions read.",
		}, func() float64 { return float64(s.engine.Tenancy().State().Revision) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_tenancy_age_seconds",
			Help: "Seconds since the tenancy data was last known to be current (0 without a control endpoint).",
		}, func() float64 { return s.tenancyAge(s.engine.Tenancy().State()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_policy_loaded_timestamp_seconds",
			Help: "Unix time the active policy set was loaded.",
		}, func() float64 {
			if ps := s.engine.Policy(); ps != nil {
				return float64(ps.LoadedAt().UnixNano()) / 1e9
			}
			return 0
		}),
	)
}

func (s *Server) tenancyAge(st authz.TenancyState) float64 {
	if st.SyncedAt.IsZero() {
		return 0
	}
	return s.cfg.Now().Sub(st.SyncedAt).Seconds()
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.engine.Ready(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Status is the /v1/status document.
type Status struct {
	Ready   bool                 `json:"ready"`
	Policy  authz.PolicyStatus   `json:"policy"`
	Tenancy TenancyStatus        `json:"tenancy"`
	Issuers []authz.IssuerStatus `json:"issuers,omitempty"`
}

// TenancyStatus is the tenancy part of Status.
type TenancyStatus struct {
	Revision   uint64     `json:"revision"`
	SyncedAt   *time.Time `json:"synced_at"`
	AgeSeconds float64    `json:"age_seconds"`
	LastError  string     `json:"last_error"`
}

// Snapshot returns the current status.
func (s *Server) Snapshot() Status {
	st := s.engine.Tenancy().State()
	out := Status{
		Ready:  s.engine.Ready() == nil,
		Policy: s.engine.PolicyStatus(),
		Tenancy: TenancyStatus{
			Revision:   st.Revision,
			AgeSeconds: s.tenancyAge(st),
			LastError:  st.LastError,
		},
	}
	if !st.SyncedAt.IsZero() {
		t := st.SyncedAt.UTC()
		out.Tenancy.SyncedAt = &t
	}
	if v := s.engine.Verifier(); v != nil {
		out.Issuers = v.Status()
	}
	return out
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s.Snapshot())
}

// Listen opens the listener.
func (s *Server) Listen() error {
	if s.cfg.Addr == "" {
		return nil
	}
	l, err := netx.Listen(s.cfg.Addr)
	if err != nil {
		return err
	}
	s.lis = l
	return nil
}

// Addr returns the bound address (after Listen), nil when disabled.
func (s *Server) Addr() net.Addr {
	if s.lis == nil {
		return nil
	}
	return s.lis.Addr()
}

// Serve serves until ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	if s.lis == nil {
		<-ctx.Done()
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.lis) }()
	s.logger.Info("ops listening", "addr", s.lis.Addr())
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
