package authzen

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/netx"
)

// Paths of the API (SPEC §10).
const (
	PathEvaluation     = "/access/v1/evaluation"
	PathEvaluations    = "/access/v1/evaluations"
	PathSearchSubject  = "/access/v1/search/subject"
	PathSearchResource = "/access/v1/search/resource"
	PathSearchAction   = "/access/v1/search/action"
	PathMetadata       = "/.well-known/authzen-configuration"
)

// Search rules, in the package of the decision rule.
const (
	RuleSearchSubjects  = "search_subjects"
	RuleSearchResources = "search_resources"
	RuleSearchActions   = "search_actions"
)

// Config is the `authzen:` section of the serve configuration (the
// listener is listen.authzen, the decision rule policies.authzen_decision).
type Config struct {
	// TokenFile holds the bearer token PEPs authenticate with. With
	// ClientCerts as well, a request needs both.
	TokenFile string `yaml:"token_file"`
	// BaseURL is the policy_decision_point the metadata advertises ("":
	// the scheme and host the request reached).
	BaseURL string `yaml:"base_url"`
	// MaxBodyBytes bounds a request body (default 1 MiB).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxEvaluations bounds the evaluations of one batch (default 1000).
	MaxEvaluations int `yaml:"max_evaluations"`
	// MaxPageSize is the largest page of search results, and the page
	// size when the request names none (default 1000).
	MaxPageSize int `yaml:"max_page_size"`

	// Decision is the decision rule (policies.authzen_decision), e.g.
	// authzen/allow; the search rules are its siblings.
	Decision string `yaml:"-"`
	// ClientCerts: the listener verifies client certificates (mTLS); a
	// request must have come with one.
	ClientCerts bool `yaml:"-"`
	// Registerer receives the metrics (nil: none).
	Registerer prometheus.Registerer `yaml:"-"`
	// Observer receives every answer as a decision-log entry (nil:
	// none): a decisionlog.Logger. Observe must not block.
	Observer Observer `yaml:"-"`

	offline bool // NewOffline: answers through Answer only
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Decision == "" {
		c.Decision = authz.DefaultAuthZENDecision
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxEvaluations == 0 {
		c.MaxEvaluations = 1000
	}
	if c.MaxPageSize == 0 {
		c.MaxPageSize = 1000
	}
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.TokenFile == "" && !c.ClientCerts && !c.offline {
		errs = append(errs, errors.New("authzen: listen.authzen needs PEP authentication: authzen.token_file and/or listen.tls.client_ca_file"))
	}
	if c.MaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("authzen.max_body_bytes: %d is negative", c.MaxBodyBytes))
	}
	if c.MaxEvaluations < 0 {
		errs = append(errs, fmt.Errorf("authzen.max_evaluations: %d is negative", c.MaxEvaluations))
	}
	if c.MaxPageSize < 0 {
		errs = append(errs, fmt.Errorf("authzen.max_page_size: %d is negative", c.MaxPageSize))
	}
	if c.BaseURL != "" && !strings.HasPrefix(c.BaseURL, "https://") && !strings.HasPrefix(c.BaseURL, "http://") {
		errs = append(errs, fmt.Errorf("authzen.base_url: %q is not an http(s) URL", c.BaseURL))
	}
	if c.Decision != "" {
		if _, err := authz.DecisionRef(c.Decision); err != nil {
			errs = append(errs, fmt.Errorf("policies.authzen_decision: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ValidateIfServed validates the configuration when the API is served on
// addr ("" = off: nothing to check), and the address itself.
func (c Config) ValidateIfServed(addr string) error {
	if addr == "" {
		return nil
	}
	return errors.Join(netx.ValidateAddr("listen.authzen", addr), c.Validate())
}

// Observer receives the answers (decision logs, SPEC §10 "Decisions are
// logged").
type Observer interface {
	Observe(authz.Answer)
}

// Engine answers evaluations: *authz.Engine.
type Engine interface {
	Session(ctx context.Context, minRev uint64) (*authz.Session, error)
}

// Server serves the AuthZEN API.
type Server struct {
	cfg      Config
	engine   Engine
	logger   *slog.Logger
	tokenSum *[sha256.Size]byte // nil: no bearer token configured
	decision ast.Ref
	searches map[string]ast.Ref // by path
	mux      *http.ServeMux

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New returns a server answering with engine. The token file is read once.
func New(cfg Config, engine Engine, logger *slog.Logger) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, engine: engine, logger: logger}
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("authzen.token_file: %w", err)
		}
		tok := bytes.TrimSpace(b)
		if len(tok) == 0 {
			return nil, fmt.Errorf("authzen.token_file %q: empty", cfg.TokenFile)
		}
		sum := sha256.Sum256(tok)
		s.tokenSum = &sum
	}
	ref, _ := authz.DecisionRef(cfg.Decision)
	s.decision = ref
	pkg := ref[:len(ref)-1]
	sibling := func(name string) ast.Ref { return append(pkg.Copy(), ast.StringTerm(name)) }
	s.searches = map[string]ast.Ref{
		PathSearchSubject:  sibling(RuleSearchSubjects),
		PathSearchResource: sibling(RuleSearchResources),
		PathSearchAction:   sibling(RuleSearchActions),
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_authzen_requests_total",
		Help: "AuthZEN API requests by endpoint and HTTP status.",
	}, []string{"endpoint", "code"})
	s.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gatehouse_authzen_request_duration_seconds",
		Help:    "AuthZEN API request duration by endpoint.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
	}, []string{"endpoint"})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.requests, s.duration)
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc(PathEvaluation, s.post(s.evaluation))
	s.mux.HandleFunc(PathEvaluations, s.post(s.evaluations))
	for path := range s.searches {
		s.mux.HandleFunc(path, s.post(s.search))
	}
	s.mux.HandleFunc(PathMetadata, s.metadata)
	return s, nil
}

// NewOffline returns a server for offline tools (gatehouse eval, request
// fixtures): it answers through Answer, with no PEP to authenticate; its
// Handler refuses every request (401).
func NewOffline(cfg Config, engine Engine, logger *slog.Logger) (*Server, error) {
	cfg.TokenFile, cfg.ClientCerts, cfg.offline = "", false, true
	return New(cfg, engine, logger)
}

// Answer answers one request of an authenticated PEP as the listener
// would (path: one of the Path* constants, body: the JSON request): the
// HTTP status and the JSON body.
func (s *Server) Answer(ctx context.Context, method, path string, body []byte) (int, []byte) {
	r, err := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(body))
	if err != nil {
		return http.StatusBadRequest, []byte(`{"error":"bad_request","message":"bad path"}`)
	}
	r.Header.Set("Content-Type", "application/json")
	r.Host = "gatehouse.offline"
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	s.mux.ServeHTTP(rec, r)
	return rec.code, rec.body.Bytes()
}

// recorder is the ResponseWriter of Answer.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(code int)        { r.code = code }

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

// serve authenticates, echoes X-Request-ID, and routes.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	if id := r.Header.Get("X-Request-ID"); id != "" {
		w.Header().Set("X-Request-ID", id)
	}
	endpoint := r.URL.Path
	switch endpoint {
	case PathEvaluation, PathEvaluations, PathSearchSubject, PathSearchResource, PathSearchAction, PathMetadata:
	default:
		endpoint = "other"
	}
	defer func() {
		s.requests.WithLabelValues(endpoint, strconv.Itoa(rec.code)).Inc()
		s.duration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	}()
	if !s.authenticated(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="gatehouse-authzen"`)
		writeError(rec, http.StatusUnauthorized, "unauthorized", "the PEP is not authenticated (bearer token and/or client certificate)")
		return
	}
	if endpoint == "other" {
		writeError(rec, http.StatusNotFound, "not_found", "no such endpoint: "+r.URL.Path)
		return
	}
	s.mux.ServeHTTP(rec, r)
}

// authenticated: the configured bearer token (constant-time compare of
// hashes, so its length leaks nothing either) and/or a verified client
// certificate. With neither configured, nothing is authenticated.
func (s *Server) authenticated(r *http.Request) bool {
	if s.tokenSum == nil && !s.cfg.ClientCerts {
		return false
	}
	if s.tokenSum != nil {
		scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "bearer") || len(r.Header.Values("Authorization")) != 1 {
			return false
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
			return false
		}
	}
	if s.cfg.ClientCerts && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return false
	}
	return true
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// apiError is an answer other than 200, with its status.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "bad_request", message: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]any{"error": code, "message": message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal","message":"response not encodable"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// post wraps a handler of a POST endpoint: method, content type, body.
func (s *Server) post(h func(ctx context.Context, r *http.Request, body map[string]any) (any, *apiError)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed: use POST")
			return
		}
		body, aerr := s.readBody(w, r)
		if aerr == nil {
			var out any
			if out, aerr = h(r.Context(), r, body); aerr == nil {
				writeJSON(w, http.StatusOK, out)
				return
			}
		}
		if aerr.status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		if aerr.status >= 500 {
			s.logger.Error("authzen: cannot decide", "path", r.URL.Path, "err", aerr.message)
		}
		writeError(w, aerr.status, aerr.code, aerr.message)
	}
}

// readBody reads a JSON object body of at most MaxBodyBytes.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) (map[string]any, *apiError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return nil, badRequest("Content-Type must be application/json")
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &apiError{status: http.StatusRequestEntityTooLarge, code: "request_too_large", message: fmt.Sprintf("the body exceeds %d bytes", s.cfg.MaxBodyBytes)}
		}
		return nil, badRequest("read body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, badRequest("empty body: a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, badRequest("malformed JSON: %v", err)
	}
	if dec.More() {
		return nil, badRequest("malformed JSON: data after the object")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, badRequest("the body must be a JSON object")
	}
	return obj, nil
}

// minRevision reads x-gatehouse-min-revision (read your own writes, as a
// Check does).
func minRevision(r *http.Request) (uint64, *apiError) {
	vals := r.Header.Values("X-Gatehouse-Min-Revision")
	if len(vals) > 1 {
		return 0, badRequest("x-gatehouse-min-revision: several values")
	}
	if len(vals) == 0 {
		return 0, nil
	}
	rev, err := authz.ParseRevision(vals[0])
	if err != nil {
		return 0, badRequest("x-gatehouse-min-revision: %v", err)
	}
	return rev, nil
}

// session opens the engine's read for one answer.
func (s *Server) session(ctx context.Context, r *http.Request) (*authz.Session, *apiError) {
	minRev, aerr := minRevision(r)
	if aerr != nil {
		return nil, aerr
	}
	sess, err := s.engine.Session(ctx, minRev)
	if err != nil {
		return nil, engineError(err)
	}
	return sess, nil
}

// engineError maps "cannot decide" to a status: a minimum revision not
// reached is the client's (429), the rest the sidecar's own (503/500).
func engineError(err error) *apiError {
	if errors.Is(err, authz.ErrRevisionNotReached) {
		return &apiError{status: http.StatusTooManyRequests, code: "stale", message: err.Error()}
	}
	var de *authz.DecideError
	if errors.As(err, &de) && de.Code == authz.CodeUnavailable {
		return &apiError{status: http.StatusServiceUnavailable, code: "unavailable", message: err.Error()}
	}
	return &apiError{status: http.StatusInternalServerError, code: "internal", message: err.Error()}
}

// metadata answers the PDP metadata (AuthZEN 1.0 §PDP Metadata): every
// endpoint this server serves.
func (s *Server) metadata(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed: use GET")
		return
	}
	base := strings.TrimSuffix(s.cfg.BaseURL, "/")
	if base == "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		base = scheme + "://" + r.Host
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"policy_decision_point":       base,
		"access_evaluation_endpoint":  base + PathEvaluation,
		"access_evaluations_endpoint": base + PathEvaluations,
		"search_subject_endpoint":     base + PathSearchSubject,
		"search_resource_endpoint":    base + PathSearchResource,
		"search_action_endpoint":      base + PathSearchAction,
	})
}
