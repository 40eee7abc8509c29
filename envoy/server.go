package envoy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/netx"
)

// AuthorizationService is the gRPC service name Envoy calls.
const AuthorizationService = "envoy.service.auth.v3.Authorization"

// Config configures the ext_authz listeners.
type Config struct {
	// GRPCAddr is the ext_authz gRPC address ("" = disabled).
	GRPCAddr string
	// HTTPAddr is the ext_authz HTTP service address ("" = disabled).
	HTTPAddr string
	// TLS applies to both listeners.
	TLS netx.TLSConfig
	// HTTPPathPrefix is stripped from HTTP service paths (Envoy's
	// http_service.path_prefix).
	HTTPPathPrefix string
	// MaxBodyBytes bounds the body read in HTTP service mode (default 1 MiB);
	// a longer body is passed on as truncated.
	MaxBodyBytes int64
	// ShutdownTimeout bounds graceful draining (default 5s).
	ShutdownTimeout time.Duration
	// Registerer receives the check metrics (nil: none).
	Registerer prometheus.Registerer
	// Reflection registers gRPC server reflection (for grpcurl).
	Reflection bool
}

// Server answers Envoy's ext_authz checks over gRPC and HTTP.
type Server struct {
	authv3.UnimplementedAuthorizationServer

	cfg     Config
	engine  *authz.Engine
	logger  *slog.Logger
	metrics *Metrics
	health  *health.Server
	tls     *tls.Config

	grpcSrv *grpc.Server
	httpSrv *http.Server

	mu        sync.Mutex
	grpcLis   net.Listener
	httpLis   net.Listener
	lastReady bool
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// New returns a server; call Listen, then Serve.
func New(cfg Config, engine *authz.Engine, logger *slog.Logger) (*Server, error) {
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	tlsCfg, err := cfg.TLS.Load()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		engine:  engine,
		logger:  logger,
		metrics: NewMetrics(cfg.Registerer),
		health:  health.NewServer(),
		tls:     tlsCfg,
	}
	opts := []grpc.ServerOption{
		// Reuse goroutines: their stacks have already grown to what policy
		// evaluation needs, instead of growing a fresh stack per call.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	s.grpcSrv = grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(s.grpcSrv, s)
	healthpb.RegisterHealthServer(s.grpcSrv, s.health)
	if cfg.Reflection {
		reflection.Register(s.grpcSrv)
	}
	s.setServing(false)

	// The server itself is the handler: a ServeMux would answer paths it
	// cleans (//, dot segments) with a redirect instead of a decision.
	s.httpSrv = &http.Server{
		Handler: s, ReadHeaderTimeout: 10 * time.Second, TLSConfig: tlsCfg,
		// Connection errors (e.g. refused TLS handshakes) go to the injected
		// logger, not to the standard library's global log on stderr.
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Listen opens the configured listeners, so address errors surface before
// anything is served.
func (s *Server) Listen() error {
	var err error
	if s.cfg.GRPCAddr != "" {
		if s.grpcLis, err = netx.Listen(s.cfg.GRPCAddr); err != nil {
			return fmt.Errorf("grpc: %w", err)
		}
	}
	if s.cfg.HTTPAddr != "" {
		if s.httpLis, err = netx.Listen(s.cfg.HTTPAddr); err != nil {
			if s.grpcLis != nil {
				s.grpcLis.Close()
			}
			return fmt.Errorf("http: %w", err)
		}
		if s.tls != nil {
			s.httpLis = tls.NewListener(s.httpLis, s.tls)
		}
	}
	return nil
}

// GRPCAddr returns the bound gRPC address (after Listen).
func (s *Server) GRPCAddr() net.Addr { return addrOf(s.grpcLis) }

// HTTPAddr returns the bound HTTP address (after Listen).
func (s *Server) HTTPAddr() net.Addr { return addrOf(s.httpLis) }

func addrOf(l net.Listener) net.Addr {
	if l == nil {
		return nil
	}
	return l.Addr()
}

// Serve serves until ctx is done, then shuts down gracefully: health
// NOT_SERVING, drain in-flight checks (bounded by ShutdownTimeout), stop.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 2)
	if s.grpcLis != nil {
		go func() { errc <- s.grpcSrv.Serve(s.grpcLis) }()
	}
	if s.httpLis != nil {
		go func() {
			if err := s.httpSrv.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
				return
			}
			errc <- nil
		}()
	}
	s.logger.Info("ext_authz listening", "grpc", addrOf(s.grpcLis), "http", addrOf(s.httpLis), "tls", s.tls != nil)

	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	s.syncHealth()
	var serveErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			s.syncHealth()
		case err := <-errc:
			if err != nil {
				serveErr = err
				break loop
			}
		}
	}
	s.shutdown()
	return serveErr
}

func (s *Server) shutdown() {
	s.health.Shutdown() // NOT_SERVING for every service
	done := make(chan struct{})
	go func() {
		s.grpcSrv.GracefulStop()
		close(done)
	}()
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	_ = s.httpSrv.Shutdown(sctx)
	select {
	case <-done:
	case <-sctx.Done():
		s.logger.Warn("drain timed out; closing open ext_authz streams")
		s.grpcSrv.Stop()
	}
	s.logger.Info("ext_authz stopped")
}

// syncHealth mirrors the engine's readiness into grpc.health.v1.
func (s *Server) syncHealth() {
	ready := s.engine.Ready() == nil
	s.mu.Lock()
	changed := ready != s.lastReady
	s.lastReady = ready
	s.mu.Unlock()
	if changed {
		s.setServing(ready)
	}
}

func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(AuthorizationService, st)
}

// Check answers one ext_authz gRPC check.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	d, headers, err := s.decide(ctx, req)
	if err != nil {
		s.metrics.observe(transportGRPC, outcomeError, time.Since(start).Seconds())
		return nil, grpcError(err)
	}
	resp := Response(d, headers)
	s.record(transportGRPC, d, start)
	return resp, nil
}

// decide answers a check for the server.
func (s *Server) decide(ctx context.Context, req *authv3.CheckRequest) (*authz.Decision, map[string]string, error) {
	return Evaluate(ctx, s.engine, req, nil)
}

// Evaluate is one Check as every Gatehouse front end answers it (the gRPC
// and HTTP servers, test fixtures, offline eval): it validates the
// request, asks the engine to decide on the parts of the input the deciding
// policy can read (all of it when tracing), and returns the decision with
// the request headers (for spoofed-header stripping). A body that does not
// parse is denied with 400 without evaluating, as opa-envoy-plugin does; an
// error means "cannot decide" (ErrMalformedRequest, or an *authz.DecideError).
func Evaluate(ctx context.Context, engine *authz.Engine, req *authv3.CheckRequest, tracer topdown.QueryTracer) (*authz.Decision, map[string]string, error) {
	prep, err := Prepare(req)
	if err != nil {
		headers := RequestHeaders(req.GetAttributes().GetRequest().GetHttp())
		var be *BodyError
		if errors.As(err, &be) {
			return badRequest(engine, be), headers, nil
		}
		return nil, headers, err
	}
	headers := prep.Headers()
	minRev, err := minRevision(headers[HeaderMinRevision], req.GetAttributes().GetContextExtensions()["min_revision"])
	if err != nil {
		return nil, headers, fmt.Errorf("%w: %v", ErrMalformedRequest, err)
	}
	d, err := engine.Decide(ctx, &authz.Request{
		Build:         func(need *authz.Need) (ast.Object, error) { return prep.Input(need), nil },
		Authorization: headers["authorization"],
		MinRevision:   minRev,
		Tracer:        tracer,
	})
	return d, headers, err
}

func minRevision(header, ext string) (uint64, error) {
	a, err := authz.ParseRevision(strings.TrimSpace(header))
	if err != nil {
		return 0, err
	}
	b, err := authz.ParseRevision(strings.TrimSpace(ext))
	if err != nil {
		return 0, err
	}
	return max(a, b), nil
}

// badRequest is the answer to a request that cannot be turned into an input
// (a body or path that does not parse): a 400 deny.
func badRequest(engine *authz.Engine, err error) *authz.Decision {
	d := &authz.Decision{
		ID:         authz.NewDecisionID(),
		Defined:    true,
		Object:     true,
		HTTPStatus: 400,
		Reason:     "bad_request",
		Headers:    []authz.Header{{Key: "content-type", Value: "application/json"}},
		Body:       errorBody(err.Error(), "bad_request"),
	}
	if ps := engine.Policy(); ps != nil {
		d.PolicyRevision = ps.Revision()
	}
	d.TenancyRevision = engine.Tenancy().State().Revision
	return d
}

func errorBody(msg, reason string) string {
	return fmt.Sprintf(`{"error":%q,"reason":%q}`, msg, reason)
}

func (s *Server) record(t transport, d *authz.Decision, start time.Time) {
	o := outcomeDeny
	if d.Allowed {
		o = outcomeAllow
	}
	s.metrics.observe(t, o, time.Since(start).Seconds())
	if s.logger.Enabled(context.Background(), slog.LevelDebug) {
		s.logger.Debug("decision",
			"decision_id", d.ID,
			"transport", t.String(),
			"allowed", d.Allowed,
			"status", d.Status(),
			"reason", d.Reason,
			"subject", d.Subject,
			"token_error", string(d.TokenError),
			"policy_revision", d.PolicyRevision,
			"tenancy_revision", d.TenancyRevision,
			"duration", time.Since(start),
		)
	}
}

// grpcError maps "cannot decide" to the gRPC status Envoy sees as a
// failure (so its failure_mode_allow / status_on_error applies).
func grpcError(err error) error {
	var de *authz.DecideError
	switch {
	case errors.Is(err, ErrMalformedRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.As(err, &de) && de.Code == authz.CodeUnavailable:
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
