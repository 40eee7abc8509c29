package replica

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"

	"github.com/gatehouse-dev/gatehouse/internal/gencache"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// docCache keeps decoded documents keyed by document (an index of
// tenancy.Docs) and key, each tagged with the file generation it was read
// from and the stamp of its stored value (the revision that wrote it and
// its checksum). Within one file a stored value's revision never changes
// without its content changing, so a hit whose generation and stamp match
// is exactly the document in the transaction being read, whatever its
// revision: no invalidation is needed. A swapped-in file (a new
// generation) never matches an entry of another; the cache is also
// cleared then, to free memory.
//
// The tenancy.Reader verifies every stored value against its checksum on
// every read, hit or miss, before it reaches the cache.
//
// It is a gencache.Cache of 64 shards bounded in entries only (two
// generations each, a hit in the older one promoted).
type docCache struct {
	c *gencache.Cache[string, docEntry] // nil: disabled
}

type docEntry struct {
	gen uint64
	st  tenancy.Stamp
	val ast.Value
}

func newDocCache(entries int) *docCache {
	if entries <= 0 {
		return &docCache{}
	}
	seed := maphash.MakeSeed()
	return &docCache{c: gencache.New(gencache.Config[string, docEntry]{
		Entries: entries,
		Shards:  64,
		ShardOf: func(k string) uint64 { return maphash.String(seed, k) },
	})}
}

// clear drops every entry (after a file swap).
func (c *docCache) clear() {
	if c.c != nil {
		c.c.Invalidate()
	}
}

// cacheKey is the document number followed by the length-prefixed key
// parts: unambiguous whatever the parts hold.
func cacheKey(doc int, keys []string) string {
	n := 1
	for _, k := range keys {
		n += len(k) + binary.MaxVarintLen32
	}
	b := make([]byte, 1, n)
	b[0] = byte(doc)
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
	}
	return string(b)
}

// decode returns the value of a verified JSON document read from the file
// of generation gen at keys of tenancy.Docs[doc], with its stamp.
func (c *docCache) decode(gen uint64, doc int, keys []string, val []byte, st tenancy.Stamp) (ast.Value, error) {
	if c.c == nil || st == (tenancy.Stamp{}) {
		return decodeJSON(val)
	}
	ck := cacheKey(doc, keys)
	if e, ok := c.c.Get(ck); ok && e.gen == gen && e.st == st {
		return e.val, nil
	}
	v, err := decodeJSON(val)
	if err != nil {
		return nil, err
	}
	c.c.Put(ck, docEntry{gen: gen, st: st, val: v})
	return v, nil
}

func decodeJSON(doc []byte) (ast.Value, error) {
	v, err := ast.ValueFromReader(bytes.NewReader(doc))
	if err != nil {
		return nil, &storage.Error{Code: storage.InternalErr, Message: "tenancy cache: undecodable document: " + err.Error()}
	}
	return v, nil
}
