package envoy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
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
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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
	// MaxRequestBytes bounds a request Gatehouse evaluates (default 1 MiB):
	// the encoded CheckRequest over gRPC; request target, headers and body
	// in HTTP service mode (a body is truncated to what fits). A larger
	// request is denied 413 with reason request_too_large. The gRPC
	// transport refuses messages over max(16 MiB, 2×MaxRequestBytes) with
	// RESOURCE_EXHAUSTED before any handler runs.
	MaxRequestBytes int64
	// MaxInflight is the number of checks evaluated at once, each on a
	// long-lived goroutine (default 4×GOMAXPROCS, at least 4). Checks
	// beyond wait their turn.
	MaxInflight int
	// MaxInflightBytes bounds the summed size of the requests being
	// answered (default 16 MiB; at least MaxRequestBytes). A check that
	// finds no room, or no free evaluation goroutine, within its deadline
	// (at most 1s) is denied 429 with reason overloaded.
	MaxInflightBytes int64
	// ShutdownTimeout bounds graceful draining (default 5s).
	ShutdownTimeout time.Duration
	// Registerer receives the check metrics (nil: none).
	Registerer prometheus.Registerer
	// Reflection registers gRPC server reflection (for grpcurl).
	Reflection bool
	// Observer receives every answer (decision logs, shadow policies;
	// nil: none). See observe.go.
	Observer Observer
	// DryRun answers every check "allow"; the observer sees what was
	// decided (opa-envoy-plugin's dry-run).
	DryRun bool
	// Tracer, when set, records a span per Check, child of the request's
	// W3C traceparent (see observe.go).
	Tracer trace.Tracer
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
	admit   *admission
	pool    *workers
	memo    InputMemo

	mu        sync.Mutex
	grpcLis   net.Listener
	httpLis   net.Listener
	lastReady bool
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// Defaults of Config.
const (
	defaultMaxRequestBytes  = 1 << 20
	defaultMaxInflightBytes = 16 << 20
	// minGRPCMessageBytes is the least the gRPC transport accepts (its own
	// default is 4 MiB): messages between MaxRequestBytes and the transport
	// bound still reach Check, which denies them 413.
	minGRPCMessageBytes = 16 << 20
)

// SetDefaults fills unset (zero) fields.
func (c *Config) SetDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 5 * time.Second
	}
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = defaultMaxRequestBytes
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = max(4, 4*runtime.GOMAXPROCS(0))
	}
	if c.MaxInflightBytes <= 0 {
		c.MaxInflightBytes = defaultMaxInflightBytes
	}
	c.MaxInflightBytes = max(c.MaxInflightBytes, c.MaxRequestBytes)
}

// New returns a server; call Listen, then Serve.
func New(cfg Config, engine *authz.Engine, logger *slog.Logger) (*Server, error) {
	cfg.SetDefaults()
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
		admit:   newAdmission(cfg.MaxInflightBytes),
		pool:    newWorkers(cfg.MaxInflight),
	}
	opts := []grpc.ServerOption{
		// Requests are decoded by Check's codec, so that one that does not
		// decode is denied rather than answered INTERNAL.
		grpc.ForceServerCodecV2(newCodec(cfg.MaxRequestBytes)),
		grpc.MaxRecvMsgSize(int(min(max(minGRPCMessageBytes, 2*cfg.MaxRequestBytes), math.MaxInt32))),
		// Handlers (decoding, token verification, the answer) run on
		// goroutines that live on; evaluation runs on s.pool.
		grpc.NumStreamWorkers(uint32(cfg.MaxInflight)),
		grpc.InitialWindowSize(64 << 10), grpc.InitialConnWindowSize(1 << 20),
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	s.grpcSrv = grpc.NewServer(opts...)
	s.grpcSrv.RegisterService(&authorizationService, s)
	healthpb.RegisterHealthServer(s.grpcSrv, s.health)
	if cfg.Reflection {
		reflection.Register(s.grpcSrv)
	}
	s.setServing(false)

	s.httpSrv = &http.Server{
		// The server itself is the handler: every method and request-target
		// form (OPTIONS *, CONNECT host:port, absolute URIs) reaches a
		// decision; a ServeMux would redirect or refuse some of them.
		Handler: s, ReadHeaderTimeout: 10 * time.Second, TLSConfig: tlsCfg,
		// Go would answer OPTIONS * itself with 200: an allow without a
		// decision.
		DisableGeneralOptionsHandler: true,
		// Requests whose head is over MaxRequestBytes still reach
		// ServeHTTP (a 413 deny); Go answers 431 beyond this.
		MaxHeaderBytes: int(min(2*cfg.MaxRequestBytes+4096, math.MaxInt32)),
		// Connection errors (e.g. refused TLS handshakes) go to the injected
		// logger, not to the standard library's global log on stderr.
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// authorizationService is authv3.Authorization_ServiceDesc with Check
// decoding into a checkMessage (see codec).
var authorizationService = grpc.ServiceDesc{
	ServiceName: AuthorizationService,
	HandlerType: (*authv3.AuthorizationServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Check",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			return srv.(*Server).answer(ctx, dec)
		},
	}},
	Streams:  []grpc.StreamDesc{},
	Metadata: "envoy/service/auth/v3/external_auth.proto",
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

// Close closes the listeners of a Server that will not Serve (a later
// start-up step failed). Serve closes them itself.
func (s *Server) Close() error {
	var errs []error
	for _, l := range []net.Listener{s.grpcLis, s.httpLis} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	return errors.Join(errs...)
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
	s.pool.start()
	defer s.pool.stop()
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

	var serveErr error
loop:
	for {
		// health follows readiness as it changes (signalled, not polled)
		w := s.engine.WatchReadiness()
		s.syncHealth()
		select {
		case <-ctx.Done():
			break loop
		case <-w.Policy:
		case <-w.Tenancy:
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

// Check answers one ext_authz gRPC check (the gRPC server calls answer
// with the request still to decode; this is the same answer for a request
// at hand).
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return s.answer(ctx, func(v any) error {
		m := v.(*checkMessage)
		m.req, m.size = req, int64(proto.Size(req))
		m.tooLarge = m.size > s.cfg.MaxRequestBytes
		return nil
	})
}

// decodeReserve is what a check takes from the bytes in flight before its
// request is decoded (the rest of its size once it is known), so that a
// burst of checks is not all decoded at once.
const decodeReserve = 16 << 10

// answer is one gRPC Check: admission, decoding (dec fills a
// *checkMessage; its error is the transport's, returned as is), decide,
// the CheckResponse; an error is the gRPC status of "cannot decide".
func (s *Server) answer(ctx context.Context, dec func(any) error) (*authv3.CheckResponse, error) {
	start := time.Now()
	deadline := waitUntil(ctx, start, queueWait)
	m := &checkMessage{req: new(authv3.CheckRequest)}
	taken := s.admit.acquire(ctx, min(decodeReserve, s.cfg.MaxRequestBytes), deadline)
	m.skip = taken == 0 // read the message off the stream, do not decode it
	if err := dec(m); err != nil {
		s.admit.release(taken)
		return nil, err
	}
	var (
		d       *authz.Decision
		headers map[string]string
		err     error
	)
	if taken == 0 {
		d = overloaded(s.engine)
	} else if extra := m.size - taken; extra > 0 && !m.tooLarge {
		more := s.admit.acquire(ctx, extra, deadline)
		taken += more
		if more == 0 {
			d = overloaded(s.engine)
		}
	}
	if d == nil {
		d, headers, err = s.decideMessage(ctx, m, deadline)
	}
	s.admit.release(taken)
	d, err = s.observe(ctx, transportGRPC, m.req, m.prep, d, err, start)
	if err != nil {
		s.metrics.observe(transportGRPC, outcomeError, time.Since(start).Seconds())
		return nil, grpcError(err)
	}
	resp := Response(d, headers)
	s.record(transportGRPC, d, start)
	return resp, nil
}

// decideMessage decides an admitted check: the size limit, a request that
// did not decode, then Decide with the policy evaluation on a worker.
func (s *Server) decideMessage(ctx context.Context, m *checkMessage, deadline time.Time) (*authz.Decision, map[string]string, error) {
	switch {
	case m.tooLarge:
		return tooLarge(s.engine, m.size, s.cfg.MaxRequestBytes), nil, nil
	case m.err != nil:
		return badRequest(s.engine, m.err), nil, nil
	}
	return decide(ctx, s.engine, m.req, nil, s.pool, deadline, &s.memo, &m.prep)
}

// Decide is one Check as every Gatehouse front end decides it (the gRPC
// and HTTP servers, test fixtures, offline eval): it validates the
// request, waits for its minimum revision, verifies its token, asks the
// engine to decide on the parts of the input the deciding policy can read
// (all of it when tracing), and returns the decision with the request
// headers (for spoofed-header stripping).
//
// What the client controls never becomes "cannot decide" (SPEC §2): a
// request without HTTP attributes, or with a path, query, body, header or
// minimum revision that does not parse (or is not UTF-8), is denied 400
// (bad_request) without evaluating, as opa-envoy-plugin does for bodies; a
// minimum revision not reached within min_revision_wait is denied 429
// (stale, retry-after: 1). An error means "cannot decide" for the
// sidecar's own reasons: an *authz.DecideError (not ready, stale data,
// evaluation error, a decision of the wrong shape).
func Decide(ctx context.Context, engine *authz.Engine, req *authv3.CheckRequest, tracer topdown.QueryTracer) (*authz.Decision, map[string]string, error) {
	return decide(ctx, engine, req, tracer, nil, time.Time{}, nil, nil)
}

// decide is Decide with the policy evaluation on one of pool's workers
// (nil: on the caller's goroutine), denied 429 overloaded when none is free
// by deadline, and the input's peers kept in memo (nil: none). The
// validated request is stored in *prepOut (when not nil) for the
// observers: a decision record writes its input from it.
func decide(ctx context.Context, engine *authz.Engine, req *authv3.CheckRequest, tracer topdown.QueryTracer, pool *workers, deadline time.Time, memo *InputMemo, prepOut **Prepared) (*authz.Decision, map[string]string, error) {
	prep, err := prepare(req, memo)
	if err != nil {
		return badRequest(engine, err), RequestHeaders(req.GetAttributes().GetRequest().GetHttp()), nil
	}
	if prepOut != nil {
		*prepOut = prep
	}
	headers := prep.Headers()
	minRev, err := minRevision(headers[HeaderMinRevision], req.GetAttributes().GetContextExtensions()["min_revision"])
	if err != nil {
		return badRequest(engine, fmt.Errorf("%w: %v", ErrMalformedRequest, err)), headers, nil
	}
	if minRev > 0 {
		// Deny before the caller's deadline: a timeout would be a failure.
		wctx, cancel := context.WithDeadline(ctx, waitUntil(ctx, time.Now(), maxWait))
		err := engine.AwaitRevision(wctx, minRev)
		cancel()
		if err != nil {
			return stale(engine, err), headers, nil
		}
	}
	areq := &authz.Request{
		Build:       func(need *authz.Need) (ast.Object, error) { return prep.Input(need), nil },
		Token:       engine.Verifier().VerifyHeader(ctx, headers["authorization"]),
		MinRevision: minRev,
		Tracer:      tracer,
	}
	d, err, ok := pool.decide(ctx, deadline, engine, areq)
	if !ok {
		return overloaded(engine), headers, nil
	}
	if errors.Is(err, authz.ErrRevisionNotReached) {
		return stale(engine, err), headers, nil
	}
	return d, headers, err
}

// maxWait is longer than any wait engine.AwaitRevision makes on its own
// (min_revision_wait): only the caller's deadline shortens it.
const maxWait = 24 * time.Hour

// minRevision is the larger of the x-gatehouse-min-revision header and the
// route's min_revision context extension; each is empty or one decimal
// integer (several header values, joined by ",", are malformed).
func minRevision(header, ext string) (uint64, error) {
	a, err := authz.ParseRevision(strings.TrimSpace(header))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", HeaderMinRevision, err)
	}
	b, err := authz.ParseRevision(strings.TrimSpace(ext))
	if err != nil {
		return 0, fmt.Errorf("context extension min_revision: %w", err)
	}
	return max(a, b), nil
}

// Reasons of the denies Gatehouse answers without evaluating a policy.
const (
	// ReasonBadRequest: the request cannot be turned into an input (400).
	ReasonBadRequest = "bad_request"
	// ReasonTooLarge: the request is over Config.MaxRequestBytes (413).
	ReasonTooLarge = "request_too_large"
	// ReasonStale: the request's minimum revision was not reached within
	// min_revision_wait (429, retry-after: 1).
	ReasonStale = "stale"
	// ReasonOverloaded: no room in flight within the check's deadline
	// (429, retry-after: 1).
	ReasonOverloaded = "overloaded"
)

// badRequest is the answer to a request that cannot be turned into an input
// (a body or path that does not parse): a 400 deny.
func badRequest(engine *authz.Engine, err error) *authz.Decision {
	return deny(engine, http.StatusBadRequest, ReasonBadRequest, err.Error(), false)
}

func tooLarge(engine *authz.Engine, size, limit int64) *authz.Decision {
	return deny(engine, http.StatusRequestEntityTooLarge, ReasonTooLarge,
		fmt.Sprintf("request of %d bytes is over the limit of %d", size, limit), false)
}

func stale(engine *authz.Engine, err error) *authz.Decision {
	var de *authz.DecideError
	if errors.As(err, &de) {
		err = de.Err // not "cannot decide": this is a decision
	}
	return deny(engine, http.StatusTooManyRequests, ReasonStale, err.Error(), true)
}

func overloaded(engine *authz.Engine) *authz.Decision {
	return deny(engine, http.StatusTooManyRequests, ReasonOverloaded, "too many checks in flight", true)
}

// maxDenyMessage bounds the error message of a deny: it may quote client
// input.
const maxDenyMessage = 512

// deny is an answer Gatehouse makes without evaluating a policy: status,
// a JSON body {"error": msg, "reason": reason}, retry-after: 1 when asked.
func deny(engine *authz.Engine, status int, reason, msg string, retry bool) *authz.Decision {
	if len(msg) > maxDenyMessage {
		msg = strings.ToValidUTF8(msg[:maxDenyMessage], "") + "..."
	}
	d := &authz.Decision{
		ID:         authz.NewDecisionID(),
		Defined:    true,
		Object:     true,
		HTTPStatus: status,
		Reason:     reason,
		Headers:    []authz.Pair{{Key: "content-type", Value: "application/json"}},
		Body:       errorBody(msg, reason),
	}
	if retry {
		d.Headers = append(d.Headers, authz.Pair{Key: "retry-after", Value: "1"})
	}
	if ps := engine.Policy(); ps != nil {
		d.PolicyRevision = ps.Revision()
	}
	d.TenancyRevision = engine.Tenancy().State().Revision
	return d
}

// errorBody is {"error": msg, "reason": reason} in JSON (invalid UTF-8
// in msg becomes U+FFFD).
func errorBody(msg, reason string) string {
	b, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Reason string `json:"reason"`
	}{msg, reason})
	return string(b)
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
	if errors.As(err, &de) && de.Code == authz.CodeUnavailable {
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
