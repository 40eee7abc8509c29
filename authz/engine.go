// engine.go is long (about 630 lines) on purpose: it is the Engine and
// Decide in its named steps (fresh, verify, input, lookup, evaluate,
// shape, fill), which share the active policy set, its cache and one read
// transaction; splitting the steps over files would hide their order.

package authz

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/open-policy-agent/opa/v1/topdown/print"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/internal/promx"
	"github.com/gatehouse-dev/gatehouse/token"
)

// Config configures an Engine.
type Config struct {
	// MaxStaleness: tenancy data not known to be current for longer than
	// this makes Decide answer "cannot decide". 0 = serve however old.
	MaxStaleness time.Duration
	// MinRevisionWait bounds how long a request carrying a minimum revision
	// waits for that revision (default 1s).
	MinRevisionWait time.Duration
	// Now is a test hook; default time.Now.
	Now func() time.Time
	// Registerer receives the engine's metrics (nil: none).
	Registerer prometheus.Registerer
	// DecisionCacheEntries bounds the decision cache (default 10000; <0
	// disables it). See cache.go for when a cached decision is used.
	DecisionCacheEntries int
	// DecisionCacheBytes bounds the accounted size of the decision cache
	// (default 16 MiB, DefaultDecisionCacheBytes; <0 disables it): keys are fixed-size hashes; the
	// decisions (deny bodies, headers, metadata) and recorded reads count.
	DecisionCacheBytes int64
	// Builtins are the Gatehouse built-ins policy sets are compiled with
	// (Engine.Compile), e.g. replica.Builtins().
	Builtins []Builtin
}

// DefaultDecisionCacheBytes is Config.DecisionCacheBytes when unset.
// `make bench`'s hot set of 2,000 shipped-policy decisions accounts 6.1 MB
// (~3 KB each): at 8 MiB, split over 32 shards of two generations, the
// cache answered only 63% of it (99.8% at 16 MiB), and the hot row fell to
// 6,452 checks/s from 10,510 in the run before.
const DefaultDecisionCacheBytes = 16 << 20

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.MinRevisionWait == 0 {
		c.MinRevisionWait = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DecisionCacheEntries == 0 {
		c.DecisionCacheEntries = 10000
	}
	if c.DecisionCacheBytes == 0 {
		c.DecisionCacheBytes = DefaultDecisionCacheBytes
	}
}

// Validate reports every problem of the configuration, joined, each a
// *FieldError naming its Config field (a configuration file's loader maps
// fields to its keys).
func (c Config) Validate() error {
	var errs []error
	if c.MaxStaleness < 0 {
		errs = append(errs, &FieldError{Field: "MaxStaleness", Err: fmt.Errorf("%v is negative", c.MaxStaleness)})
	}
	if c.MinRevisionWait < 0 {
		errs = append(errs, &FieldError{Field: "MinRevisionWait", Err: fmt.Errorf("%v is negative", c.MinRevisionWait)})
	}
	return errors.Join(errs...)
}

// Request is one decision request.
type Request struct {
	// Input is the input document built by the transport adapter. Decide
	// adds "token" and "tenancy_revision" to it.
	Input ast.Object
	// Authorization is the request's Authorization header value.
	Authorization string
	// Token, when set, is the bearer token already verified by the caller
	// (Verifier().VerifyHeader); Authorization is then not looked at.
	Token *token.Token
	// MinRevision asks for tenancy data at this revision or newer (0 = any).
	MinRevision uint64
	// Tracer, when set, receives the evaluation trace (for explanations).
	Tracer topdown.QueryTracer
	// Build, when Input is nil, builds the input; it is given what the
	// policy set that will decide can read (NeedAll when tracing).
	Build func(need *Need) (ast.Object, error)
}

// Engine evaluates the active policy set. See the package documentation.
type Engine struct {
	cfg      Config
	logger   *slog.Logger
	verifier *token.Verifier
	tenancy  Tenancy

	active atomic.Pointer[activeSet]

	loads  *prometheus.CounterVec
	cached *prometheus.CounterVec
	// children of cached, resolved once (the hot path must not hash labels)
	cacheHit, cacheMiss, cacheStale, cacheBypass prometheus.Counter
	tracker                                      DependencyTracker // nil when the tenancy store cannot record reads

	revTerm atomic.Pointer[revisionTerm] // the last tenancy_revision term built
	queries atomic.Pointer[querySet]     // queries of the active set other than the decision (query.go)
	keyBufs sync.Pool                    // *[]byte: buffers for decision cache keys

	policyChanged atomic.Pointer[chan struct{}] // closed at every SetPolicy and PolicyFailed

	mu        sync.Mutex // guards lastErr, lastErrAt
	lastErr   string
	lastErrAt time.Time
}

// activeSet is a policy set bound to the engine's data store.
type activeSet struct {
	ps    *PolicySet
	store *dataStore
	cache *decisionCache // nil: not cached
}

// New returns an engine with no policy set; Decide answers "not ready" until
// SetPolicy is called. A nil tenancy means EmptyTenancy; a nil verifier
// trusts no issuer; a nil logger discards.
func New(cfg Config, verifier *token.Verifier, tenancy Tenancy, logger *slog.Logger) *Engine {
	cfg.SetDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if tenancy == nil {
		tenancy = EmptyTenancy()
	}
	if verifier == nil {
		verifier, _ = token.NewVerifier(token.VerifierConfig{}, logger) // no issuers: cannot fail
	}
	e := &Engine{cfg: cfg, logger: logger, verifier: verifier, tenancy: tenancy}
	e.keyBufs.New = func() any { b := make([]byte, 0, 512); return &b }
	e.signalPolicy()
	e.loads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_policy_loads_total",
		Help: "Policy set loads, by result (success, error). An error leaves the last good policy serving.",
	}, []string{"result"})
	e.cached = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_decision_cache_total",
		Help: "Decisions by cache result: hit, miss (evaluated and stored), stale (evaluated: data changed), bypass (not cacheable).",
	}, []string{"result"})
	cacheBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gatehouse_decision_cache_bytes",
		Help: "Accounted size of the decision cache (bounded by its byte budget).",
	}, func() float64 { return float64(e.DecisionCacheBytes()) })
	if reg := cfg.Registerer; reg != nil {
		// A second engine on the registry shares the first one's metrics
		// (the cache size gauge stays the first engine's) instead of
		// panicking.
		var errs [3]error
		e.loads, errs[0] = promx.Register(reg, e.loads)
		e.cached, errs[1] = promx.Register(reg, e.cached)
		_, errs[2] = promx.Register(reg, prometheus.Collector(cacheBytes))
		if err := errors.Join(errs[:]...); err != nil {
			logger.Warn("engine metrics not registered", "err", err)
		}
	}
	e.cacheHit, e.cacheMiss = e.cached.WithLabelValues("hit"), e.cached.WithLabelValues("miss")
	e.cacheStale, e.cacheBypass = e.cached.WithLabelValues("stale"), e.cached.WithLabelValues("bypass")
	e.tracker, _ = tenancy.(DependencyTracker)
	return e
}

// SetPolicy makes ps the active policy set. Checks in flight finish on the
// set they started with.
func (e *Engine) SetPolicy(ps *PolicySet) {
	prev := e.active.Swap(&activeSet{ps: ps, store: &dataStore{static: ps.static, tenancy: e.tenancy}, cache: newDecisionCache(ps.cache, e.cfg.DecisionCacheEntries, e.cfg.DecisionCacheBytes)})
	if ps.cache.disabled != "" {
		e.logger.Info("decisions of this policy are not cached", "policy_revision", ps.revision, "why", ps.cache.disabled)
	}
	e.mu.Lock()
	e.lastErr = ""
	e.mu.Unlock()
	e.signalPolicy()
	e.loads.WithLabelValues("success").Inc()
	from := ""
	if prev != nil {
		from = prev.ps.revision
	}
	e.logger.Info("policy loaded", "policy_revision", ps.revision, "previous_revision", from, "origin", ps.origin, "modules", ps.files)
}

// Compile compiles src for this engine: with the engine's built-ins.
func (e *Engine) Compile(src Source, decision string) (*PolicySet, error) {
	return Compile(src, decision, e.cfg.Builtins...)
}

// PolicyFailed records a policy set that did not load; the active set keeps
// serving.
func (e *Engine) PolicyFailed(err error) {
	e.mu.Lock()
	e.lastErr = err.Error()
	e.lastErrAt = e.cfg.Now()
	e.mu.Unlock()
	e.loads.WithLabelValues("error").Inc()
	e.logger.Error("policy not loaded; the last good policy keeps serving", "err", err)
	e.signalPolicy()
}

// signalPolicy tells readiness watchers that the policy state changed.
func (e *Engine) signalPolicy() {
	ch := make(chan struct{})
	if old := e.policyChanged.Swap(&ch); old != nil {
		close(*old)
	}
}

// ReadinessWatch holds the channels that close at the next event that may
// change Engine.Ready's answer. Take it before calling Ready, then wait on
// it: a change in between is not missed.
type ReadinessWatch struct {
	// Policy closes when a policy set is applied or refused.
	Policy <-chan struct{}
	// Tenancy closes when the tenancy data's revision or presence changes
	// (nil when the store never changes).
	Tenancy <-chan struct{}
}

// WatchReadiness returns the current readiness signals.
func (e *Engine) WatchReadiness() ReadinessWatch {
	return ReadinessWatch{Policy: *e.policyChanged.Load(), Tenancy: e.tenancy.Changed()}
}

// Wait returns once a signal of w fired, or with ctx's error.
func (w ReadinessWatch) Wait(ctx context.Context) error {
	select {
	case <-w.Policy:
	case <-w.Tenancy:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Policy returns the active policy set, nil before the first load.
func (e *Engine) Policy() *PolicySet {
	if a := e.active.Load(); a != nil {
		return a.ps
	}
	return nil
}

// DecisionCacheBytes returns the accounted size of the active policy set's
// decision cache (0 without one).
func (e *Engine) DecisionCacheBytes() int64 {
	if a := e.active.Load(); a != nil {
		return a.cache.bytes()
	}
	return 0
}

// Tenancy returns the tenancy store the engine reads.
func (e *Engine) Tenancy() Tenancy { return e.tenancy }

// Verifier returns the token verifier.
func (e *Engine) Verifier() *token.Verifier { return e.verifier }

// Ready returns nil when the engine can decide, or why not.
func (e *Engine) Ready() error {
	if e.active.Load() == nil {
		return fmt.Errorf("%w: no policy has compiled yet", ErrNotReady)
	}
	if !e.tenancy.State().Present {
		return fmt.Errorf("%w: no tenancy data yet", ErrNotReady)
	}
	return nil
}

// PolicyStatus describes the active policy set.
type PolicyStatus struct {
	Revision  string    `json:"revision"`
	LoadedAt  time.Time `json:"loaded_at"`
	LastError string    `json:"last_error"`
}

// PolicyStatus reports the active policy revision and the last load error.
func (e *Engine) PolicyStatus() PolicyStatus {
	var st PolicyStatus
	if ps := e.Policy(); ps != nil {
		st.Revision, st.LoadedAt = ps.revision, ps.loadedAt
	}
	e.mu.Lock()
	st.LastError = e.lastErr
	e.mu.Unlock()
	return st
}

var (
	keyToken           = ast.InternedTerm("token")
	keyTenancyRevision = ast.InternedTerm("tenancy_revision")
)

// Decide evaluates the decision rule for req, in named steps: freshness
// (fresh), the token (verify), the input (input), the decision cache
// (lookup), evaluation (evaluate), the Decision's shape (shape) and the
// cache fill (fill). Every error is a *DecideError (see errors.go).
func (e *Engine) Decide(ctx context.Context, req *Request) (*Decision, error) {
	start := e.cfg.Now()
	a := e.active.Load()
	if a == nil {
		return nil, unavailable(fmt.Errorf("%w: no policy has compiled yet", ErrNotReady))
	}
	if err := e.fresh(ctx, start, req.MinRevision); err != nil {
		return nil, err
	}
	tok := e.verify(ctx, req)

	txn, err := a.store.NewTransaction(ctx)
	if err != nil {
		return nil, internal(fmt.Errorf("%w: open data transaction: %v", ErrEvaluation, err))
	}
	defer a.store.Abort(ctx, txn)
	tt := txn.(*dataTxn).tenancy
	rev := e.tenancy.TxnRevision(tt)
	ver := dataVersion(e.tenancy, tt)

	input, err := e.input(a, req, tok, rev)
	if err != nil {
		return nil, err
	}
	debug := e.logger.Enabled(ctx, slog.LevelDebug)
	cache, key := e.cacheFor(a.cache, "", input, req.Tracer == nil && !debug)
	state := CacheBypass
	if cache != nil {
		state = CacheMiss
	}
	d, cache := e.lookup(cache, key, tt, ver)
	if d != nil {
		d.ID = NewDecisionID()
		d.TenancyRevision = rev
		d.Subject, d.TokenError = tok.Subject, tok.Error
		d.Token, d.Cache = tok, CacheHit
		d.Duration = e.cfg.Now().Sub(start)
		return d, nil
	}
	if cache != nil && e.tracker != nil {
		e.tracker.Record(tt)
	}
	result, err := e.evaluate(ctx, a, txn, input, req.Tracer, debug, start)
	if err != nil {
		return nil, err
	}
	d = &Decision{
		ID:              NewDecisionID(),
		PolicyRevision:  a.ps.revision,
		TenancyRevision: rev,
		Subject:         tok.Subject,
		TokenError:      tok.Error,
	}
	if err := d.shape(result); err != nil {
		return nil, internal(err)
	}
	e.fill(cache, key, d, tt, ver)
	d.Token, d.Cache = tok, state
	d.Duration = e.cfg.Now().Sub(start)
	return d, nil
}

// verify returns the request's token: the one the caller verified, or the
// Authorization header's, verified now.
func (e *Engine) verify(ctx context.Context, req *Request) *token.Token {
	if req.Token != nil {
		return req.Token
	}
	return e.verifier.VerifyHeader(ctx, req.Authorization)
}

// input completes the request's input document with input.token and
// input.tenancy_revision, building it first (req.Build) when not given.
// A Build error is wrapped as ErrInput.
func (e *Engine) input(a *activeSet, req *Request, tok *token.Token, rev uint64) (ast.Object, error) {
	input := req.Input
	if input == nil && req.Build != nil {
		need := a.ps.need
		if req.Tracer != nil {
			need = NeedAll
		}
		var err error
		if input, err = req.Build(need); err != nil {
			return nil, internal(fmt.Errorf("%w: %w", ErrInput, err))
		}
	}
	if input == nil {
		input = ast.NewObject()
	}
	input.Insert(keyToken, ast.NewTerm(tok.Value()))
	input.Insert(keyTenancyRevision, e.revisionTerm(rev))
	return input, nil
}

// cacheFor returns cache and the key of input (after prefix and a 0 byte,
// when prefix is not empty: the rule of an answer other than the
// decision's), or a nil cache when the answer is not cached (no cache, not
// allowed, or an input the key plan cannot key). The key is built in a
// pooled buffer.
func (e *Engine) cacheFor(cache *decisionCache, prefix string, input ast.Object, allowed bool) (*decisionCache, cacheKey) {
	if cache == nil || !allowed {
		return nil, cacheKey{}
	}
	buf := e.keyBufs.Get().(*[]byte)
	defer e.keyBufs.Put(buf)
	b := (*buf)[:0]
	if prefix != "" {
		b = append(append(b, prefix...), 0)
	}
	k, ok := cache.plan.key(input, b)
	if cap(k) <= maxKeyBytes+1024 { // a refused key's buffer may be larger
		*buf = k[:0]
	}
	if !ok {
		return nil, cacheKey{}
	}
	return cache, keyOf(k)
}

// lookup returns a copy of the cached decision for key when it still holds
// for the data the transaction tt reads, else nil; it counts the outcome.
// The cache it returns is the one to fill after evaluation: nil when a
// first-seen question is not admitted (cache.admit).
func (e *Engine) lookup(cache *decisionCache, key cacheKey, tt storage.Transaction, ver DataVersion) (*Decision, *decisionCache) {
	switch ent := cache.lookup(key); {
	case cache == nil:
		e.cacheBypass.Inc()
	case ent == nil:
		e.cacheMiss.Inc()
		if !cache.admit(key) {
			return nil, nil // first seen while the cache is full: not stored
		}
	case e.valid(ent, tt, ver):
		e.cacheHit.Inc()
		d := ent.d
		return &d, cache
	default:
		e.cacheStale.Inc()
	}
	return nil, cache
}

// evaluate runs the prepared query of a's policy set over txn and returns
// the decision rule's value (nil when undefined).
func (e *Engine) evaluate(ctx context.Context, a *activeSet, txn storage.Transaction, input ast.Object, tracer topdown.QueryTracer, debug bool, start time.Time) (ast.Value, error) {
	return e.evaluateBody(ctx, a, a.ps.query, txn, input, tracer, debug, start)
}

// evaluateBody runs the query body (binding resultVar) of a's policy set
// over txn and returns resultVar's value (nil when undefined): the decision
// rule's, or another rule's (Session.Eval).
func (e *Engine) evaluateBody(ctx context.Context, a *activeSet, body ast.Body, txn storage.Transaction, input ast.Object, tracer topdown.QueryTracer, debug bool, start time.Time) (ast.Value, error) {
	vc := getVirtualCache()
	defer putVirtualCache(vc)
	q := topdown.NewQuery(body).
		WithCompiler(a.ps.compiler).
		WithVirtualCache(vc).
		WithStore(a.store).
		WithTransaction(txn).
		WithInput(ast.NewTerm(input)).
		WithCancel(doneCancel{ctx.Done()}).
		WithMetrics(noMetrics).
		WithTime(start)
	if tracer != nil {
		q = q.WithQueryTracer(tracer)
	}
	if debug {
		q = q.WithPrintHook(printHook{e.logger})
	}
	evalCtx := ctx
	if a.ps.builtins != nil {
		q = q.WithBuiltins(a.ps.builtins)
		evalCtx = WithTenancyTxn(ctx, txn.(*dataTxn).tenancy) // the built-ins read this decision's transaction
	}
	var result ast.Value
	err := q.Iter(evalCtx, func(qr topdown.QueryResult) error {
		if t := qr[resultVar]; t != nil {
			result = t.Value
		}
		return nil
	})
	if err != nil {
		return nil, internal(fmt.Errorf("%w: %v", ErrEvaluation, err))
	}
	return result, nil
}

// fill caches d (before its Duration is set) with the reads recorded for
// it, when the decision is cached.
func (e *Engine) fill(cache *decisionCache, key cacheKey, d *Decision, tt storage.Transaction, ver DataVersion) {
	if cache == nil {
		return
	}
	ent := &cacheEntry{d: *d, version: ver}
	// The metadata may hold terms of this request's input (a route's
	// project, say), which are allocated in blocks with the rest of the
	// input: a cached copy of its own keeps those blocks from living as
	// long as the entry.
	ent.d.DynamicMetadata = d.DynamicMetadata.detached()
	if e.tracker != nil {
		ent.deps, ent.tracked = e.tracker.Recorded(tt)
	}
	cache.put(key, ent)
}

// doneCancel stops an evaluation once its context is done: topdown polls
// Cancelled between steps, here a non-blocking receive on the context's
// Done channel. Unlike topdown.NewCancel with context.AfterFunc, nothing is
// registered with the context and nothing allocated (the type is one
// pointer). Cancel does nothing: only the context cancels.
type doneCancel struct{ done <-chan struct{} }

func (doneCancel) Cancel() {}

func (c doneCancel) Cancelled() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// noMetrics: nothing reads topdown's per-query metrics, and building them
// costs allocations on every evaluation.
var noMetrics = metrics.NoOp()

// revisionTerm is the input.tenancy_revision term of one revision.
type revisionTerm struct {
	rev  uint64
	term *ast.Term
}

// revisionTerm returns the term for rev, shared by every evaluation at that
// revision (terms in the input are never modified).
func (e *Engine) revisionTerm(rev uint64) *ast.Term {
	if rt := e.revTerm.Load(); rt != nil && rt.rev == rev {
		return rt.term
	}
	rt := &revisionTerm{rev: rev, term: ast.UIntNumberTerm(rev)}
	e.revTerm.Store(rt)
	return rt.term
}

// valid reports whether a cached decision holds for the data txn reads.
func (e *Engine) valid(ent *cacheEntry, txn storage.Transaction, ver DataVersion) bool {
	if ent.version == ver {
		return true
	}
	if e.tracker == nil || !ent.tracked {
		return false
	}
	return e.tracker.Unchanged(txn, ent.deps)
}

// fresh enforces max_staleness and a request's minimum revision.
func (e *Engine) fresh(ctx context.Context, now time.Time, minRev uint64) error {
	st := e.tenancy.State()
	if !st.Present {
		return unavailable(fmt.Errorf("%w: no tenancy data yet", ErrNotReady))
	}
	if e.cfg.MaxStaleness > 0 && now.Sub(st.SyncedAt) > e.cfg.MaxStaleness {
		return unavailable(fmt.Errorf("%w: last synced %s ago (max_staleness %s)", ErrStale, now.Sub(st.SyncedAt).Round(time.Millisecond), e.cfg.MaxStaleness))
	}
	return e.AwaitRevision(ctx, minRev)
}

// AwaitRevision waits, at most min_revision_wait, until tenancy data at
// revision minRev or newer is readable. It returns at once when it is (or
// when there is no data yet: Decide then answers "not ready"), and an error
// wrapping ErrRevisionNotReached when the wait ends first. A request's
// minimum revision is client input: callers answer that error with a deny
// (SPEC §2: 429 stale), not with "cannot decide".
func (e *Engine) AwaitRevision(ctx context.Context, minRev uint64) error {
	st := e.tenancy.State()
	if !st.Present || minRev <= st.Revision {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, e.cfg.MinRevisionWait)
	defer cancel()
	if err := e.tenancy.WaitRevision(wctx, minRev); err != nil {
		return unavailable(fmt.Errorf("%w: want %d, have %d after %s", ErrRevisionNotReached, minRev, e.tenancy.State().Revision, e.cfg.MinRevisionWait))
	}
	return nil
}

// ParseRevision parses a minimum revision from a header or context
// extension; "" is 0.
func ParseRevision(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	r, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("min revision %q is not a non-negative integer", s)
	}
	return r, nil
}

// NewDecisionID returns a random version-4 UUID. It uses the runtime's
// per-thread ChaCha8 generator: unique and unpredictable enough for an id,
// without a system call per decision.
func NewDecisionID() string {
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i] = byte(hi >> (56 - 8*i))
		b[8+i] = byte(lo >> (56 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}

// printHook sends Rego print() output to the debug log.
type printHook struct{ logger *slog.Logger }

func (h printHook) Print(pctx print.Context, msg string) error {
	loc := ""
	if pctx.Location != nil {
		loc = pctx.Location.String()
	}
	h.logger.Debug("rego print", "location", loc, "msg", msg)
	return nil
}
