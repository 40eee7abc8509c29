package bundle

import (
	"bytes"
	"hash/maphash"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// docCache keeps decoded documents keyed by bucket and key, each tagged with
// the file generation it was read from and the stamp of its stored value
// (the revision that wrote it and its checksum). Within one file a stored
// value's revision never changes without its content changing, so a hit
// whose generation and stamp match is exactly the document in the
// transaction being read, whatever its revision: no invalidation is
// needed. A swapped-in file (a new generation) never matches an entry of
// another; the cache is also cleared then, to free memory.
//
// Every stored value is verified against its checksum on every read, hit
// or miss: damage is found as soon as a damaged value is read.
type docCache struct {
	seed   maphash.Seed
	shards [64]docShard
	max    int // per shard; 0 = disabled
}

type docShard struct {
	mu   sync.RWMutex
	cur  map[string]docEntry
	prev map[string]docEntry
}

type docEntry struct {
	gen uint64
	rev uint64
	sum uint32
	val ast.Value
}

func newDocCache(entries int) *docCache {
	c := &docCache{seed: maphash.MakeSeed()}
	if entries > 0 {
		c.max = max(entries/len(c.shards)/2, 1)
	}
	return c
}

// clear drops every entry (after a file swap).
func (c *docCache) clear() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		sh.cur, sh.prev = nil, nil
		sh.mu.Unlock()
	}
}

// decode returns the document of a stored value read from the file of
// generation gen; a damaged value is an error wrapping tenancy.ErrDamaged.
func (c *docCache) decode(gen uint64, bucket string, key, raw []byte) (ast.Value, error) {
	rev, sum, doc, err := tenancy.OpenValue(key, raw)
	if err != nil {
		return nil, err
	}
	if c.max == 0 {
		return decodeJSON(doc)
	}
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.WriteString(bucket)
	h.WriteByte(0)
	h.Write(key)
	sh := &c.shards[h.Sum64()%uint64(len(c.shards))]
	ck := bucket + "\x00" + string(key)
	sh.mu.RLock()
	e, ok := sh.cur[ck]
	if !ok {
		e, ok = sh.prev[ck]
	}
	sh.mu.RUnlock()
	if ok && e.gen == gen && e.rev == rev && e.sum == sum {
		return e.val, nil
	}
	val, err := decodeJSON(doc)
	if err != nil {
		return nil, err
	}
	sh.mu.Lock()
	if sh.cur == nil {
		sh.cur = make(map[string]docEntry, c.max)
	}
	if len(sh.cur) >= c.max {
		sh.prev, sh.cur = sh.cur, make(map[string]docEntry, c.max)
	}
	sh.cur[ck] = docEntry{gen: gen, rev: rev, sum: sum, val: val}
	sh.mu.Unlock()
	return val, nil
}

func decodeJSON(doc []byte) (ast.Value, error) {
	v, err := ast.ValueFromReader(bytes.NewReader(doc))
	if err != nil {
		return nil, &storage.Error{Code: storage.InternalErr, Message: "tenancy cache: undecodable document: " + err.Error()}
	}
	return v, nil
}
