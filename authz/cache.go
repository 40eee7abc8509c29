package authz

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"

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

// key builds the cache key of an input: the values at every planned path.
func (p *cachePlan) key(input ast.Object, b *strings.Builder) bool {
	for i, path := range p.paths {
		if i > 0 {
			b.WriteByte(0)
		}
		var v ast.Value = input
		for _, t := range path[1:] {
			v = child(v, t)
			if v == nil {
				break
			}
		}
		if v == nil {
			b.WriteByte(1) // undefined
		} else {
			b.WriteString(v.String())
		}
		if b.Len() > maxKeyBytes {
			return false
		}
	}
	return true
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

// decisionCache holds decisions of one policy set.
type decisionCache struct {
	plan   cachePlan
	seed   maphash.Seed
	shards [32]cacheShard
	max    int // entries per shard generation
}

type cacheShard struct {
	mu   sync.Mutex
	cur  map[string]*cacheEntry
	prev map[string]*cacheEntry
}

type cacheEntry struct {
	d       Decision
	deps    Dependencies
	tracked bool
	version DataVersion // of the data the decision was made on
}

func newDecisionCache(plan cachePlan, entries int) *decisionCache {
	if entries <= 0 || plan.disabled != "" {
		return nil
	}
	c := &decisionCache{plan: plan, seed: maphash.MakeSeed()}
	c.max = max(entries/len(c.shards)/2, 1)
	return c
}

func (c *decisionCache) shard(key string) *cacheShard {
	return &c.shards[maphash.String(c.seed, key)%uint64(len(c.shards))]
}

// lookup is get on a cache that may be nil (nil: no entry).
func (c *decisionCache) lookup(key string) *cacheEntry {
	if c == nil {
		return nil
	}
	return c.get(key)
}

func (c *decisionCache) get(key string) *cacheEntry {
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

func (c *decisionCache) put(key string, e *cacheEntry) {
	sh := c.shard(key)
	sh.mu.Lock()
	c.putLocked(sh, key, e)
	sh.mu.Unlock()
}

func (c *decisionCache) putLocked(sh *cacheShard, key string, e *cacheEntry) {
	if sh.cur == nil {
		sh.cur = make(map[string]*cacheEntry, c.max)
	}
	if len(sh.cur) >= c.max {
		sh.prev, sh.cur = sh.cur, make(map[string]*cacheEntry, c.max)
	}
	sh.cur[key] = e
}
