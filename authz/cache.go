package authz

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
)

// The decision cache memoizes decisions of one policy set, soundly:
//
//   - Input: a decision can only depend on the input values the policy's
//     references reach. Compile collects every reference to input in every
//     module (its longest constant prefix: input.attributes.contextExtensions,
//     input.parsed_path[1], or input itself); the cache key is the values at
//     those paths. A request that differs only elsewhere (request id, the rest
//     of the path, other headers) gets the same decision.
//   - Data: static data belongs to the policy set. Tenancy reads are recorded
//     by the store during a miss (key and the stamp of what was read); a hit
//     is used only when every recorded read would still return the same
//     document in the current transaction. A store that cannot record makes
//     entries valid for their own data version only (revision and file
//     generation: equal revisions of replaced data are not the same data).
//   - Builtins: a policy set calling a nondeterministic or time-dependent
//     builtin anywhere (time.now_ns, http.send, io.jwt.decode_verify, ...) is
//     not cached at all.
//
// Tracing (explanations) and debug printing bypass the cache.

// timeDependent lists deterministic-looking builtins whose answer depends on
// the clock.
var timeDependent = map[string]bool{
	"time.now_ns":          true,
	"io.jwt.decode_verify": true,
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

// cachePlan is the result of analysing a policy set for caching.
type cachePlan struct {
	paths    []ast.Ref // input paths the decision may depend on (no path is a prefix of another)
	disabled string    // why the set cannot be cached, "" when it can
}

// planCache analyses every module of a compiled policy set.
func planCache(c *ast.Compiler) cachePlan {
	var refs []ast.Ref
	var disabled string
	for _, name := range sortedModuleNames(c) {
		// rules only: imports are resolved into the rules' references
		for _, rule := range c.Modules[name].Rules {
			ast.WalkRefs(rule, func(r ast.Ref) bool {
				if r.HasPrefix(ast.InputRootRef) {
					refs = append(refs, constantPrefix(r))
				}
				return false
			})
			ast.WalkExprs(rule, func(e *ast.Expr) bool {
				if !e.IsCall() || disabled != "" {
					return false
				}
				name := e.Operator().String()
				if b, ok := ast.BuiltinMap[name]; ok && (b.Nondeterministic || timeDependent[name]) && name != "opa.runtime" {
					disabled = fmt.Sprintf("the policy calls %s (%s), whose answer may change between identical requests", name, e.Location)
				}
				return false
			})
		}
	}
	// keep the shortest paths: a path below another is covered by it
	slices.SortFunc(refs, func(a, b ast.Ref) int { return a.Compare(b) })
	var paths []ast.Ref
	for _, r := range refs {
		if len(paths) > 0 && r.HasPrefix(paths[len(paths)-1]) {
			continue
		}
		paths = append(paths, r)
	}
	return cachePlan{paths: paths, disabled: disabled}
}

func sortedModuleNames(c *ast.Compiler) []string {
	names := make([]string, 0, len(c.Modules))
	for n := range c.Modules {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// constantPrefix cuts a reference before its first term that is not a
// string or number.
func constantPrefix(r ast.Ref) ast.Ref {
	for i := 1; i < len(r); i++ {
		switch r[i].Value.(type) {
		case ast.String, ast.Number:
		default:
			return r[:i].Copy()
		}
	}
	return r.Copy()
}

// maxKeyBytes bounds a cache key; a request whose relevant input is larger
// is evaluated uncached.
const maxKeyBytes = 8 << 10

// key appends the cache key of an input to b: the values at every planned
// path, each as its String() text, separated by 0 bytes (1: undefined).
// ok is false when the key would be longer than maxKeyBytes.
func (p *cachePlan) key(input ast.Object, b []byte) (_ []byte, ok bool) {
	for i, path := range p.paths {
		if i > 0 {
			b = append(b, 0)
		}
		var v ast.Value = input
		for _, t := range path[1:] {
			v = child(v, t)
			if v == nil {
				break
			}
		}
		if v == nil {
			b = append(b, 1) // undefined
		} else {
			if atLeast(v, maxKeyBytes-len(b)) {
				return b, false // not rendered: it could be megabytes
			}
			b = appendText(b, v)
		}
		if len(b) > maxKeyBytes {
			return b, false
		}
	}
	return b, true
}

// appendText appends v.String() to b, without building the string when v
// can append itself (every value type of this OPA version can).
func appendText(b []byte, v ast.Value) []byte {
	if a, ok := v.(interface {
		AppendText([]byte) ([]byte, error)
	}); ok {
		if out, err := a.AppendText(b); err == nil {
			return out
		}
	}
	return append(b, v.String()...)
}

// atLeast reports whether the strings in v alone (keys, values, numbers)
// add up to more than n bytes; it stops counting there.
func atLeast(v ast.Value, n int) bool {
	switch x := v.(type) { // the usual key values, without a walk
	case ast.String:
		return len(x) > n
	case ast.Number:
		return len(x) > n
	case ast.Boolean, ast.Null:
		return false
	}
	return remaining(v, n) < 0
}

// remaining is rest minus the bytes of v's strings, counted until it is
// negative.
func remaining(v ast.Value, rest int) int {
	switch x := v.(type) {
	case ast.String:
		return rest - len(x)
	case ast.Number:
		return rest - len(x)
	case *ast.Array:
		for i := 0; i < x.Len() && rest >= 0; i++ {
			rest = remaining(x.Elem(i).Value, rest)
		}
	case ast.Object:
		r := rest // captured: only this branch allocates
		x.Until(func(k, e *ast.Term) bool {
			r = remaining(e.Value, remaining(k.Value, r))
			return r < 0
		})
		return r
	case ast.Set:
		r := rest
		x.Until(func(e *ast.Term) bool {
			r = remaining(e.Value, r)
			return r < 0
		})
		return r
	}
	return rest
}

func child(v ast.Value, k *ast.Term) ast.Value {
	switch x := v.(type) {
	case ast.Object:
		if t := x.Get(k); t != nil {
			return t.Value
		}
	case *ast.Array:
		if n, ok := k.Value.(ast.Number); ok {
			if i, ok := n.Int(); ok && i >= 0 && i < x.Len() {
				return x.Elem(i).Value
			}
		}
	case ast.Set:
		if x.Contains(k) {
			return k.Value
		}
	}
	return nil
}

// Dependencies are what an evaluation read from a tenancy store, as the
// store records them.
type Dependencies any

// DependencyTracker is an optional capability of a Tenancy store: recording
// the reads of an evaluation and telling later whether they still hold.
type DependencyTracker interface {
	// Record starts recording the reads made through txn.
	Record(txn storage.Transaction)
	// Recorded returns the reads made through txn since Record; ok is false
	// when some read cannot be checked later (e.g. a scan).
	Recorded(txn storage.Transaction) (deps Dependencies, ok bool)
	// Unchanged reports whether every recorded read would return the same
	// document in txn.
	Unchanged(txn storage.Transaction, deps Dependencies) bool
}

// DataVersion identifies the tenancy data a transaction reads: its
// revision, and the generation of the store's file holding it. A store's
// data can be replaced without a new revision (a new snapshot swapped in,
// at any revision, from a control endpoint that lost its data or another
// history); the generation changes then. Two transactions with the same
// version read the same data.
type DataVersion struct {
	Generation uint64
	Revision   uint64
}

// Generations is an optional capability of a Tenancy store whose data can
// be replaced without a new revision: the generation of the data a
// transaction reads (see DataVersion).
type Generations interface {
	TxnGeneration(txn storage.Transaction) uint64
}

// dataVersion returns the version of the data txn reads.
func dataVersion(t Tenancy, txn storage.Transaction) DataVersion {
	v := DataVersion{Revision: t.TxnRevision(txn)}
	if g, ok := t.(Generations); ok {
		v.Generation = g.TxnGeneration(txn)
	}
	return v
}

// cacheKey is the SHA-256 of a cache key (plan.key's bytes): entries cost
// the same whatever the size of the input they stand for, and a client
// string of up to maxKeyBytes is not kept once per entry.
type cacheKey [sha256.Size]byte

// keyOf hashes a key built by plan.key.
func keyOf(k []byte) cacheKey { return sha256.Sum256(k) }

// decisionCache holds decisions of one policy set, bounded in entries and
// in bytes (the accounted size of every entry: key, decision, recorded
// reads).
//
// Each of its shards approximates an LRU with two generations: entries go
// into cur; when cur would exceed its share of the entry or byte budget it
// becomes prev (dropping the old prev) and a new cur starts; a hit in prev
// moves the entry into cur. So at most the budget is held: per shard, two
// generations of at most budget/(2×shards) each. An entry larger than one
// generation's share is not cached.
//
// Admission: until a shard holds half a generation's worth of entries or
// bytes, every decision is stored. From then on a decision is stored only
// when its key was asked before and not stored then: seen remembers the
// fingerprints of such keys (direct-mapped: a newer key takes the slot).
// A workload of mostly first-seen questions (many users, each asking
// once) then neither evicts the decisions that are asked again nor pays
// for recording the reads and storing decisions never used, and the cache
// holds a quarter of its budget instead of all of it; a question asked
// twice is cached from its second answer on.
type decisionCache struct {
	plan     cachePlan
	shards   [32]cacheShard
	max      int   // entries per shard generation
	maxBytes int64 // bytes per shard generation
	seen     []atomic.Uint64
}

type cacheShard struct {
	mu                  sync.Mutex
	cur                 map[cacheKey]*cacheEntry
	prev                map[cacheKey]*cacheEntry
	curBytes, prevBytes int64
}

type cacheEntry struct {
	d       Decision
	deps    Dependencies
	tracked bool
	version DataVersion // of the data the decision was made on
	size    int64       // accounted bytes, set by put
}

// newDecisionCache returns a cache of at most entries entries and bytes
// bytes, or nil (no caching) when either is negative or zero or the plan
// disables caching.
func newDecisionCache(plan cachePlan, entries int, bytes int64) *decisionCache {
	if entries <= 0 || bytes <= 0 || plan.disabled != "" {
		return nil
	}
	c := &decisionCache{plan: plan}
	c.max = max(entries/len(c.shards)/2, 1)
	c.maxBytes = max(bytes/int64(len(c.shards))/2, 1)
	c.seen = make([]atomic.Uint64, seenSlots(entries))
	return c
}

// seenSlots is the size of the admission table of a cache of entries
// entries: a power of two, about twice as many, within [1024, 1<<20]
// (8 bytes each).
func seenSlots(entries int) int {
	n := 1024
	for n < 2*entries && n < 1<<20 {
		n *= 2
	}
	return n
}

// admit reports whether the decision for key, not in the cache, is to be
// stored (and its reads recorded for that): see decisionCache.
func (c *decisionCache) admit(key cacheKey) bool {
	sh := c.shard(key)
	sh.mu.Lock()
	roomy := 2*(len(sh.cur)+len(sh.prev)) < c.max && 2*(sh.curBytes+sh.prevBytes) < c.maxBytes
	sh.mu.Unlock()
	if roomy {
		return true
	}
	// The key is a SHA-256: any 8 of its bytes are as good as random.
	slot := &c.seen[binary.LittleEndian.Uint64(key[8:16])&uint64(len(c.seen)-1)]
	fp := binary.LittleEndian.Uint64(key[16:24]) | 1 // never 0, an empty slot
	if slot.Load() == fp {
		slot.Store(0)
		return true
	}
	slot.Store(fp)
	return false
}

func (c *decisionCache) shard(key cacheKey) *cacheShard {
	return &c.shards[key[0]%byte(len(c.shards))]
}

// lookup is get on a cache that may be nil (nil: no entry).
func (c *decisionCache) lookup(key cacheKey) *cacheEntry {
	if c == nil {
		return nil
	}
	return c.get(key)
}

func (c *decisionCache) get(key cacheKey) *cacheEntry {
	sh := c.shard(key)
	sh.mu.Lock()
	e, ok := sh.cur[key]
	if !ok {
		if e, ok = sh.prev[key]; ok {
			c.putLocked(sh, key, e) // promote
		}
	}
	sh.mu.Unlock()
	return e
}

func (c *decisionCache) put(key cacheKey, e *cacheEntry) {
	e.size = entryBytes(e)
	if e.size > c.maxBytes {
		return
	}
	sh := c.shard(key)
	sh.mu.Lock()
	c.putLocked(sh, key, e)
	sh.mu.Unlock()
}

// putLocked makes e the entry of key in cur, replacing any entry of key.
func (c *decisionCache) putLocked(sh *cacheShard, key cacheKey, e *cacheEntry) {
	if old, ok := sh.cur[key]; ok {
		delete(sh.cur, key)
		sh.curBytes -= old.size
	}
	if old, ok := sh.prev[key]; ok {
		delete(sh.prev, key)
		sh.prevBytes -= old.size
	}
	if sh.cur == nil {
		sh.cur = make(map[cacheKey]*cacheEntry)
	}
	if len(sh.cur) >= c.max || sh.curBytes+e.size > c.maxBytes {
		sh.prev, sh.prevBytes = sh.cur, sh.curBytes
		sh.cur, sh.curBytes = make(map[cacheKey]*cacheEntry), 0
	}
	sh.cur[key] = e
	sh.curBytes += e.size
}

// bytes returns the accounted size of the entries held.
func (c *decisionCache) bytes() int64 {
	if c == nil {
		return 0
	}
	var n int64
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		n += sh.curBytes + sh.prevBytes
		sh.mu.Unlock()
	}
	return n
}

// DependencySizer is an optional capability of the Dependencies a
// DependencyTracker records: the bytes they hold, for the decision cache's
// byte budget. Dependencies without it are counted as
// defaultDependencyBytes.
type DependencySizer interface {
	Bytes() int
}

// Accounted sizes of cache entries: rough upper bounds of what the Go
// runtime allocates beyond the strings' bytes.
const (
	// cacheEntryOverhead: the key, the map slot, the entry and its Decision.
	cacheEntryOverhead = 1024
	// defaultDependencyBytes: recorded reads that cannot tell their size.
	defaultDependencyBytes = 1 << 10
)

// entryBytes is the accounted size of a cache entry.
func entryBytes(e *cacheEntry) int64 {
	n := cacheEntryOverhead + decisionBytes(&e.d)
	switch d := e.deps.(type) {
	case nil:
	case DependencySizer:
		n += d.Bytes()
	default:
		n += defaultDependencyBytes
	}
	return int64(n)
}

// decisionBytes is the accounted size of what d references.
func decisionBytes(d *Decision) int {
	n := len(d.ID) + len(d.PolicyRevision) + len(d.Reason) + len(d.Body) + len(d.Subject) + len(d.TokenError)
	for _, hs := range [...][]Header{d.Headers, d.ResponseHeadersToAdd, d.QueryParametersToSet} {
		for _, h := range hs {
			n += 32 + len(h.Key) + len(h.Value)
		}
	}
	for _, ss := range [...][]string{d.RequestHeadersToRemove, d.QueryParametersToRemove} {
		for _, s := range ss {
			n += 16 + len(s)
		}
	}
	if d.DynamicMetadata != nil {
		n += jsonBytes(map[string]any(d.DynamicMetadata))
	}
	return n
}

// jsonBytes is the accounted size of a decoded JSON value (maps, slices,
// strings, json.Number, bools, float64s, nil): its strings plus a
// per-value overhead.
func jsonBytes(v any) int {
	const word = 16 // an interface value
	switch x := v.(type) {
	case string:
		return word + 16 + len(x)
	case json.Number:
		return word + 16 + len(x)
	case map[string]any:
		n := word + 48
		for k, e := range x {
			n += 16 + len(k) + jsonBytes(e) + 16 // key, value, bucket share
		}
		return n
	case []any:
		n := word + 24
		for _, e := range x {
			n += jsonBytes(e)
		}
		return n
	}
	return word + 8
}
