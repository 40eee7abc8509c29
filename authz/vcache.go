package authz

import (
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// virtualCache is topdown's cache of the values of virtual documents (and
// of function calls with ground arguments) for one evaluation, kept flat
// and reused from one evaluation to the next. topdown's own
// (topdown.NewVirtualCache) is a trie that allocates a node and a hash map
// per key term on every evaluation: about a tenth of an uncached check's
// allocations. Here a key's terms are copied into one slice kept between
// evaluations, entries are scanned newest first (a policy caches tens of
// values), and a hash index is built once a frame holds many.
//
// The semantics are the trie's: Get and Put see only the active frame (Push
// opens one for a `with`, Pop drops it with its entries); a key is only
// found by the exact reference it was put under; putting nil marks the key
// undefined, and it stays so even if a value is put later.
type virtualCache struct {
	terms   []*ast.Term // the keys' terms, back to back
	entries []vcEntry
	frames  []int // where in entries each pushed frame starts
	// index maps a key's hash to its entries, once the cache holds
	// vcIndexAt entries (nil below: a scan is cheaper).
	index map[int][]int32
}

// vcEntry is one cached reference: its key is terms[start:end].
type vcEntry struct {
	hash       int
	start, end int32
	value      *ast.Term
	undefined  bool
}

const (
	// vcIndexAt is the number of entries from which lookups go through
	// the hash index.
	vcIndexAt = 32
	// vcPoolMax bounds the entries of a cache returned to the pool: an
	// evaluation that cached more (a loop over a function with ground
	// arguments) does not pin its memory for the evaluations after it.
	vcPoolMax = 4096
)

var _ topdown.VirtualCache = (*virtualCache)(nil)

var vcPool = sync.Pool{New: func() any { return &virtualCache{} }}

// getVirtualCache returns an empty cache from the pool; give it back with
// putVirtualCache once the evaluation is over.
func getVirtualCache() *virtualCache { return vcPool.Get().(*virtualCache) }

// putVirtualCache empties c (dropping its references to values) and pools it.
func putVirtualCache(c *virtualCache) {
	if len(c.entries) > vcPoolMax {
		return
	}
	clear(c.terms)
	clear(c.entries)
	c.terms, c.entries, c.frames, c.index = c.terms[:0], c.entries[:0], c.frames[:0], nil
	vcPool.Put(c)
}

// Push opens a new, empty frame.
func (c *virtualCache) Push() { c.frames = append(c.frames, len(c.entries)) }

// Pop drops the active frame and its entries.
func (c *virtualCache) Pop() {
	if len(c.frames) == 0 {
		return
	}
	start := c.frames[len(c.frames)-1]
	c.frames = c.frames[:len(c.frames)-1]
	if start >= len(c.entries) {
		return
	}
	if c.index != nil {
		for i := len(c.entries) - 1; i >= start; i-- {
			h := c.entries[i].hash
			ids := c.index[h]
			ids = ids[:len(ids)-1] // entries are indexed in order: i is the last of its hash
			if len(ids) == 0 {
				delete(c.index, h)
			} else {
				c.index[h] = ids
			}
		}
	}
	first := int(c.entries[start].start)
	clear(c.terms[first:])
	c.terms = c.terms[:first]
	clear(c.entries[start:])
	c.entries = c.entries[:start]
}

// Get returns the value cached for ref in the active frame: (value, false)
// when defined, (nil, true) when cached as undefined, (nil, false) when
// not cached.
func (c *virtualCache) Get(ref ast.Ref) (*ast.Term, bool) {
	i := c.find(ref, ref.Hash())
	if i < 0 {
		return nil, false
	}
	e := &c.entries[i]
	if e.undefined {
		return nil, true
	}
	return e.value, false
}

// Put caches value for ref in the active frame; nil marks ref undefined.
func (c *virtualCache) Put(ref ast.Ref, value *ast.Term) {
	h := ref.Hash()
	i := c.find(ref, h)
	if i < 0 {
		start := len(c.terms)
		c.terms = append(c.terms, ref...)
		c.entries = append(c.entries, vcEntry{hash: h, start: int32(start), end: int32(len(c.terms))})
		i = len(c.entries) - 1
		switch {
		case c.index != nil:
			c.index[h] = append(c.index[h], int32(i))
		case len(c.entries) >= vcIndexAt:
			c.index = make(map[int][]int32, 2*len(c.entries))
			for j := range c.entries {
				c.index[c.entries[j].hash] = append(c.index[c.entries[j].hash], int32(j))
			}
		}
	}
	if value != nil {
		c.entries[i].value = value
	} else {
		c.entries[i].undefined = true
	}
}

// Keys returns the references with a value in the active frame.
func (c *virtualCache) Keys() []ast.Ref {
	var keys []ast.Ref
	for i := c.frameStart(); i < len(c.entries); i++ {
		if e := c.entries[i]; e.value != nil {
			keys = append(keys, append(ast.Ref(nil), c.terms[e.start:e.end]...))
		}
	}
	return keys
}

func (c *virtualCache) frameStart() int {
	if len(c.frames) == 0 {
		return 0
	}
	return c.frames[len(c.frames)-1]
}

// find returns the index of ref's entry (hash h) in the active frame, or -1.
func (c *virtualCache) find(ref ast.Ref, h int) int {
	lo := c.frameStart()
	if c.index != nil {
		ids := c.index[h]
		for k := len(ids) - 1; k >= 0 && int(ids[k]) >= lo; k-- {
			if c.keyIs(int(ids[k]), ref) {
				return int(ids[k])
			}
		}
		return -1
	}
	for i := len(c.entries) - 1; i >= lo; i-- {
		if c.entries[i].hash == h && c.keyIs(i, ref) {
			return i
		}
	}
	return -1
}

// keyIs reports whether entry i's key is ref.
func (c *virtualCache) keyIs(i int, ref ast.Ref) bool {
	e := &c.entries[i]
	key := c.terms[e.start:e.end]
	if len(key) != len(ref) {
		return false
	}
	for j := range key {
		if !key[j].Equal(ref[j]) {
			return false
		}
	}
	return true
}
