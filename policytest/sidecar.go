package policytest

import (
	"context"
	"io"
	"log/slog"
	"sync"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/token"
)

// Sidecar is an offline sidecar: the decision engine of `serve` with a
// compiled policy set, a token verifier and a tenancy store, without
// listeners. Check follows serve's path for one CheckRequest:
// envoy.Decide (input, authz.Engine.Decide) → envoy.Response.
type Sidecar struct {
	engine *authz.Engine
	store  *replica.Store // nil: empty tenancy
	reads  *readRecorder
}

// SidecarConfig configures a Sidecar.
type SidecarConfig struct {
	// Policy is the compiled policy set (authz.Compile).
	Policy *authz.PolicySet
	// Verifier verifies bearer tokens; nil trusts no issuer.
	Verifier *token.Verifier
	// Store serves data.tenancy; nil means no tenancy data (revision 0), as
	// serve without a control endpoint.
	Store *replica.Store
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger
}

// NewSidecar returns a sidecar ready to decide.
func NewSidecar(cfg SidecarConfig) *Sidecar {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var ten authz.Tenancy = authz.EmptyTenancy()
	if cfg.Store != nil {
		ten = cfg.Store
	}
	rec := &readRecorder{Tenancy: ten}
	if cfg.Store != nil {
		// the built-ins read the cache directly: their reads are observed too
		cfg.Store.ObserveReads(rec.record)
	}
	e := authz.New(authz.Config{Builtins: replica.Builtins()}, cfg.Verifier, rec, logger)
	e.SetPolicy(cfg.Policy)
	return &Sidecar{engine: e, store: cfg.Store, reads: rec}
}

// Engine returns the decision engine.
func (s *Sidecar) Engine() *authz.Engine { return s.engine }

// Tenancy returns the tenancy store the engine reads (authz.EmptyTenancy
// when there is no data).
func (s *Sidecar) Tenancy() authz.Tenancy { return s.reads.Tenancy }

// Answer is the answer to one check.
type Answer struct {
	// Decision is the engine's decision.
	Decision *authz.Decision
	// Response is the CheckResponse serve would send.
	Response *authv3.CheckResponse
	// Reads are the data.tenancy paths the evaluation read, in order
	// (only when Check was given a tracer).
	Reads []storage.Path
}

// Check answers req as serve would. A request whose body does not parse
// is denied with 400 without evaluating, as serve does. An error is
// "cannot decide" (serve answers it with a gRPC error status). With a
// tracer, the evaluation is traced and the tenancy reads recorded.
func (s *Sidecar) Check(ctx context.Context, req *authv3.CheckRequest, tracer topdown.QueryTracer) (*Answer, error) {
	if tracer != nil {
		s.reads.start()
	}
	d, headers, err := envoy.Decide(ctx, s.engine, req, tracer)
	var reads []storage.Path
	if tracer != nil {
		reads = s.reads.stop()
	}
	if err != nil {
		return nil, err
	}
	return &Answer{Decision: d, Response: envoy.Response(d, headers), Reads: reads}, nil
}

// readRecorder wraps the tenancy store to record the paths an evaluation
// reads (for explanations). Recording is on between start and stop only;
// the sidecar serializes traced checks.
type readRecorder struct {
	authz.Tenancy
	traced sync.Mutex // held by a traced check
	mu     sync.Mutex
	on     bool
	reads  []storage.Path
}

func (r *readRecorder) start() {
	r.traced.Lock()
	r.mu.Lock()
	r.on, r.reads = true, nil
	r.mu.Unlock()
}

func (r *readRecorder) stop() []storage.Path {
	r.mu.Lock()
	out := r.reads
	r.on, r.reads = false, nil
	r.mu.Unlock()
	r.traced.Unlock()
	return out
}

// Read records path and reads through.
func (r *readRecorder) Read(ctx context.Context, txn storage.Transaction, path storage.Path) (any, error) {
	r.record(path)
	return r.Tenancy.Read(ctx, txn, path)
}

// record records a path read while recording is on.
func (r *readRecorder) record(path storage.Path) {
	r.mu.Lock()
	if r.on {
		r.reads = append(r.reads, append(storage.Path(nil), path...))
	}
	r.mu.Unlock()
}
