package authz

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
)

// Queries other than the Envoy decision rule: an application asking through
// the AuthZEN API (SPEC §10) evaluates rules such as data.authzen.allow or
// data.authzen.search_subjects of the same policy set, over the same data,
// with the same decision cache semantics and metrics as a Check. A Session
// reads one data revision for all of its evaluations (a batch of AuthZEN
// evaluations is answered at one revision).

// DefaultAuthZENDecision is the AuthZEN decision rule evaluated when none is
// configured (policies.authzen_decision).
const DefaultAuthZENDecision = "authzen/allow"

// CacheResult says how the decision cache answered one evaluation: "hit",
// "miss", "stale" or "bypass" (the labels of gatehouse_decision_cache_total).
type CacheResult string

// Session is a read of one tenancy revision by the active policy set, for
// any number of evaluations. It is not safe for concurrent use; Close it.
type Session struct {
	e     *Engine
	a     *activeSet
	qs    *querySet
	ctx   context.Context
	txn   storage.Transaction
	tt    storage.Transaction
	rev   uint64
	ver   DataVersion
	start time.Time
}

// querySet holds what the queries of one active policy set share: the
// compiled queries by rule, and their decision cache.
type querySet struct {
	a       *activeSet
	cache   *decisionCache
	mu      sync.Mutex
	queries map[string]ast.Body
}

// Session opens a read of the current tenancy data for the active policy
// set, after the same readiness and freshness checks as Decide (minRev: the
// request's minimum revision, 0 for any). Its errors are *DecideError.
func (e *Engine) Session(ctx context.Context, minRev uint64) (*Session, error) {
	start := e.cfg.Now()
	a := e.active.Load()
	if a == nil {
		return nil, unavailable(fmt.Errorf("%w: no policy has compiled yet", ErrNotReady))
	}
	if err := e.fresh(ctx, start, minRev); err != nil {
		return nil, err
	}
	qs := e.querySetOf(a)
	txn, err := a.store.NewTransaction(ctx)
	if err != nil {
		return nil, internal(fmt.Errorf("%w: open data transaction: %v", ErrEvaluation, err))
	}
	tt := txn.(*dataTxn).tenancy
	return &Session{
		e: e, a: a, qs: qs, ctx: ctx, txn: txn, tt: tt,
		rev: e.tenancy.TxnRevision(tt), ver: dataVersion(e.tenancy, tt), start: start,
	}, nil
}

// querySetOf returns the query set of a, creating it when the active set
// changed.
func (e *Engine) querySetOf(a *activeSet) *querySet {
	if qs := e.queries.Load(); qs != nil && qs.a == a {
		return qs
	}
	qs := &querySet{a: a, queries: map[string]ast.Body{},
		cache: newDecisionCache(a.ps.cache, e.cfg.DecisionCacheEntries, e.cfg.DecisionCacheBytes)}
	e.queries.Store(qs)
	return qs
}

// Close ends the session's read transaction.
func (s *Session) Close() { s.a.store.Abort(s.ctx, s.txn) }

// TenancyRevision is the revision the session reads.
func (s *Session) TenancyRevision() uint64 { return s.rev }

// PolicyRevision is the revision of the policy set the session evaluates.
func (s *Session) PolicyRevision() string { return s.a.ps.revision }

// Elapsed is the time since the session opened.
func (s *Session) Elapsed() time.Duration { return s.e.cfg.Now().Sub(s.start) }

// query returns the compiled query binding resultVar to rule.
func (qs *querySet) query(rule ast.Ref) (ast.Body, error) {
	k := rule.String()
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if q, ok := qs.queries[k]; ok {
		return q, nil
	}
	body := ast.NewBody(ast.Equality.Expr(ast.VarTerm(string(resultVar)), ast.NewTerm(rule)))
	q, err := qs.a.ps.compiler.QueryCompiler().Compile(body)
	if err != nil {
		return nil, fmt.Errorf("compile query %v: %w", rule, err)
	}
	qs.queries[k] = q
	return q, nil
}

// Eval evaluates rule (e.g. data.authzen.allow) for input in the session's
// transaction; Eval adds input.tenancy_revision. The value is nil when the
// rule is undefined. Answers are cached like Check decisions (keyed by the
// rule and the input values the policy set reads; valid while every
// tenancy read still finds the same document). An error is "cannot decide"
// (*DecideError).
func (s *Session) Eval(rule ast.Ref, input ast.Object) (ast.Value, CacheResult, error) {
	e, a := s.e, s.a
	if input == nil {
		input = ast.NewObject()
	}
	input.Insert(keyTenancyRevision, e.revisionTerm(s.rev))

	debug := e.logger.Enabled(s.ctx, slog.LevelDebug)
	cache, key := e.cacheFor(s.qs.cache, rule.String(), input, !debug)
	result := CacheResult("bypass")
	switch ent := cache.lookup(key); {
	case cache == nil:
		e.cacheBypass.Inc()
	case ent == nil:
		e.cacheMiss.Inc()
		result = "miss"
		if !cache.admit(key) {
			cache = nil // first seen while the cache is full: not stored
		}
	case e.valid(ent, s.tt, s.ver):
		if v, err := ast.ParseTerm(ent.d.Body); err == nil {
			e.cacheHit.Inc()
			if ent.d.Defined {
				return v.Value, "hit", nil
			}
			return nil, "hit", nil
		}
		e.cacheStale.Inc()
		result = "stale"
	default:
		e.cacheStale.Inc()
		result = "stale"
	}
	if cache != nil && e.tracker != nil {
		e.tracker.Record(s.tt)
	}
	body, err := s.qs.query(rule)
	if err != nil {
		return nil, result, internal(fmt.Errorf("%w: %v", ErrEvaluation, err))
	}
	value, err := e.evaluateBody(s.ctx, a, body, s.txn, input, nil, debug, s.start)
	if err != nil {
		return nil, result, err
	}
	if cache != nil {
		// the answer is cached in its Rego text form: accounted by the
		// cache's byte budget like a deny body
		d := Decision{Defined: value != nil, Body: "null"}
		if value != nil {
			d.Body = value.String()
		}
		e.fill(cache, key, &d, s.tt, s.ver)
	}
	return value, result, nil
}
