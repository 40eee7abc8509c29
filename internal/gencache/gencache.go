package gencache

import (
	"iter"
	"sync"
	"sync/atomic"
)

// Config sets a Cache's bounds.
type Config[K comparable, V any] struct {
	// Entries bounds the entries held, in all shards and both generations
	// (at least one per shard generation).
	Entries int
	// Bytes bounds the accounted bytes held (Size of every value), in all
	// shards and both generations; 0 means no byte bound.
	Bytes int64
	// Shards is the number of independently locked parts (default 1).
	Shards int
	// ShardOf spreads keys over the shards; required when Shards > 1.
	ShardOf func(K) uint64
	// Size is the accounted bytes of a value; nil counts every value as 0.
	// It is called once per Put, outside any lock.
	Size func(V) int64
}

// Limits are what one generation of one shard may hold.
type Limits struct {
	Entries int
	Bytes   int64
}

// Cache is a sharded, two-generation bounded map (see the package doc).
type Cache[K comparable, V any] struct {
	epoch   atomic.Uint64
	shards  []shard[K, V]
	shardOf func(K) uint64
	size    func(V) int64
	limits  Limits
}

type shard[K comparable, V any] struct {
	mu                  sync.RWMutex
	cur, prev           map[K]entry[V]
	curBytes, prevBytes int64
}

type entry[V any] struct {
	v    V
	size int64
}

// New returns an empty cache with cfg's bounds.
func New[K comparable, V any](cfg Config[K, V]) *Cache[K, V] {
	n := max(cfg.Shards, 1)
	c := &Cache[K, V]{shards: make([]shard[K, V], n), shardOf: cfg.ShardOf, size: cfg.Size}
	if n > 1 && c.shardOf == nil {
		panic("gencache: Shards > 1 without ShardOf")
	}
	c.limits.Entries = max(cfg.Entries/n/2, 1)
	c.limits.Bytes = int64(^uint64(0) >> 1) // no byte bound
	if cfg.Bytes > 0 {
		c.limits.Bytes = max(cfg.Bytes/int64(n)/2, 1)
	}
	return c
}

// Limits returns what one generation of one shard may hold; a value whose
// size exceeds Limits().Bytes is never stored.
func (c *Cache[K, V]) Limits() Limits { return c.limits }

func (c *Cache[K, V]) shard(k K) *shard[K, V] {
	if len(c.shards) == 1 {
		return &c.shards[0]
	}
	return &c.shards[c.shardOf(k)%uint64(len(c.shards))]
}

// Get returns the value of k. A hit in the previous generation moves the
// entry into the current one.
func (c *Cache[K, V]) Get(k K) (v V, ok bool) {
	sh := c.shard(k)
	sh.mu.RLock()
	e, ok := sh.cur[k]
	inPrev := false
	if !ok {
		e, ok = sh.prev[k]
		inPrev = ok
	}
	sh.mu.RUnlock()
	if inPrev {
		sh.mu.Lock()
		// Re-check under the write lock: a Put, a swap or an Invalidate
		// may have run meanwhile.
		if pe, still := sh.prev[k]; still {
			delete(sh.prev, k)
			sh.prevBytes -= pe.size
			c.insertLocked(sh, k, pe)
		}
		sh.mu.Unlock()
	}
	return e.v, ok
}

// Put stores v under k, replacing any value of k. It reports whether v was
// stored: false when v is larger than one generation's share.
func (c *Cache[K, V]) Put(k K, v V) bool {
	return c.put(k, v, false, 0)
}

// Epoch returns the current epoch; pass it to PutAt.
func (c *Cache[K, V]) Epoch() uint64 { return c.epoch.Load() }

// PutAt is Put for a value computed from state read at epoch: when an
// Invalidate has run since, v is dropped (false).
func (c *Cache[K, V]) PutAt(epoch uint64, k K, v V) bool {
	return c.put(k, v, true, epoch)
}

func (c *Cache[K, V]) put(k K, v V, checkEpoch bool, epoch uint64) bool {
	var size int64
	if c.size != nil {
		size = c.size(v)
	}
	if size > c.limits.Bytes {
		return false
	}
	sh := c.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Checked under the shard's lock: Invalidate bumps the epoch before it
	// clears the shards, so a value that passes here is cleared by it.
	if checkEpoch && epoch != c.epoch.Load() {
		return false
	}
	c.insertLocked(sh, k, entry[V]{v: v, size: size})
	return true
}

// insertLocked makes e the entry of k in cur, swapping generations when
// cur is full.
func (c *Cache[K, V]) insertLocked(sh *shard[K, V], k K, e entry[V]) {
	if old, ok := sh.cur[k]; ok {
		delete(sh.cur, k)
		sh.curBytes -= old.size
	}
	if old, ok := sh.prev[k]; ok {
		delete(sh.prev, k)
		sh.prevBytes -= old.size
	}
	if sh.cur == nil {
		sh.cur = make(map[K]entry[V])
	}
	if len(sh.cur) >= c.limits.Entries || sh.curBytes+e.size > c.limits.Bytes {
		sh.prev, sh.prevBytes = sh.cur, sh.curBytes
		sh.cur, sh.curBytes = make(map[K]entry[V]), 0
	}
	sh.cur[k] = e
	sh.curBytes += e.size
}

// Invalidate drops every entry and starts a new epoch.
func (c *Cache[K, V]) Invalidate() {
	c.epoch.Add(1)
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		sh.cur, sh.prev = nil, nil
		sh.curBytes, sh.prevBytes = 0, 0
		sh.mu.Unlock()
	}
}

// Len returns the number of entries held.
func (c *Cache[K, V]) Len() int {
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		n += len(sh.cur) + len(sh.prev)
		sh.mu.RUnlock()
	}
	return n
}

// Bytes returns the accounted bytes held.
func (c *Cache[K, V]) Bytes() int64 {
	var n int64
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		n += sh.curBytes + sh.prevBytes
		sh.mu.RUnlock()
	}
	return n
}

// ShardUse returns what the shard of k holds, in both generations: compare
// with Limits (an admission policy may store less while a shard is full).
func (c *Cache[K, V]) ShardUse(k K) Limits {
	sh := c.shard(k)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return Limits{Entries: len(sh.cur) + len(sh.prev), Bytes: sh.curBytes + sh.prevBytes}
}

// All yields every entry held (each shard under its read lock: yield must
// not call the Cache).
func (c *Cache[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for i := range c.shards {
			sh := &c.shards[i]
			sh.mu.RLock()
			for _, m := range [2]map[K]entry[V]{sh.cur, sh.prev} {
				for k, e := range m {
					if !yield(k, e.v) {
						sh.mu.RUnlock()
						return
					}
				}
			}
			sh.mu.RUnlock()
		}
	}
}
