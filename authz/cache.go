package authz

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"

	"github.com/gatehouse-dev/gatehouse/internal/gencache"
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
// reads): a gencache.Cache of 32 shards (two generations each, a hit in
// the older one promoted; an entry larger than one generation's share is
// not cached), with admission on top.
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
	plan    cachePlan
	entries *gencache.Cache[cacheKey, *cacheEntry]
	seen    []atomic.Uint64
}

// decisionCacheShards is the number of independently locked parts.
const decisionCacheShards = 32

type cacheEntry struct {
	d       Decision
	deps    Dependencies
	tracked bool
	version DataVersion // of the data the decision was made on
}

// newDecisionCache returns a cache of at most entries entries and bytes
// bytes, or nil (no caching) when either is negative or zero or the plan
// disables caching.
func newDecisionCache(plan cachePlan, entries int, bytes int64) *decisionCache {
	if entries <= 0 || bytes <= 0 || plan.disabled != "" {
		return nil
	}
	return &decisionCache{
		plan: plan,
		entries: gencache.New(gencache.Config[cacheKey, *cacheEntry]{
			Entries: entries,
			Bytes:   bytes,
			Shards:  decisionCacheShards,
			ShardOf: func(k cacheKey) uint64 { return uint64(k[0]) },
			Size:    entryBytes,
		}),
		seen: make([]atomic.Uint64, seenSlots(entries)),
	}
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
	use, limits := c.entries.ShardUse(key), c.entries.Limits()
	if 2*use.Entries < limits.Entries && 2*use.Bytes < limits.Bytes {
		return true // roomy
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

// lookup is get on a cache that may be nil (nil: no entry).
func (c *decisionCache) lookup(key cacheKey) *cacheEntry {
	if c == nil {
		return nil
	}
	return c.get(key)
}

func (c *decisionCache) get(key cacheKey) *cacheEntry {
	e, _ := c.entries.Get(key)
	return e
}

// put stores e under key unless it is larger than a generation's share.
func (c *decisionCache) put(key cacheKey, e *cacheEntry) { c.entries.Put(key, e) }

// bytes returns the accounted size of the entries held.
func (c *decisionCache) bytes() int64 {
	if c == nil {
		return 0
	}
	return c.entries.Bytes()
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
	for _, hs := range [...][]Pair{d.Headers, d.ResponseHeadersToAdd, d.QueryParametersToSet} {
		for _, h := range hs {
			n += 32 + len(h.Key) + len(h.Value)
		}
	}
	for _, ss := range [...][]string{d.RequestHeadersToRemove, d.QueryParametersToRemove} {
		for _, s := range ss {
			n += 16 + len(s)
		}
	}
	n += metadataBytes(d.DynamicMetadata)
	return n
}
