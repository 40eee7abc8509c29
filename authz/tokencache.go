package authz

import (
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Cache bounds of the verified-token cache.
const (
	// defaultTokenCacheSize is VerifierConfig.CacheSize when it is 0.
	defaultTokenCacheSize = 10000
	// maxTokenCacheAge bounds how long a verification result is reused,
	// whatever the token's exp says.
	maxTokenCacheAge = 10 * time.Minute
)

// tokenCacheKey is the SHA-256 of a raw token. The token text itself is never
// kept as a key, so a heap dump of the cache does not hand out bearer tokens.
type tokenCacheKey [sha256.Size]byte

// tokenCacheKeyOf hashes raw without copying it.
func tokenCacheKeyOf(raw string) tokenCacheKey {
	// sha256.Sum256 only reads its argument, so viewing the string's bytes
	// in place is safe and keeps the cache hit free of allocations.
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
}

// tokenCacheEntry is one cached successful verification.
type tokenCacheEntry struct {
	tok *Token
	// until is the instant (Unix nanoseconds) from which the entry must no
	// longer be used: min(token exp, insertion + maxTokenCacheAge).
	until int64
}

// tokenCache caches successful verifications by the hash of the raw token.
//
// It approximates an LRU with two generations: entries are inserted into cur;
// when cur holds limit entries it becomes prev and a new cur starts, so at
// most 2*limit entries are kept. A hit in prev is promoted into cur, so a token
// in steady use survives the swaps.
//
// Any change of any issuer's key set calls invalidate, which drops every entry
// and bumps the generation; a verification that started before the change
// (and so may have used a removed key) is not inserted (see put).
//
// # Concurrency
//
// All methods are safe for concurrent use. Lookups take a read lock only.
type tokenCache struct {
	gen   atomic.Uint64
	limit int // entries per generation

	mu   sync.RWMutex
	cur  map[tokenCacheKey]tokenCacheEntry
	prev map[tokenCacheKey]tokenCacheEntry
}

// newTokenCache returns a cache holding at most size entries, or nil (no
// caching) when size is negative. size 0 means defaultTokenCacheSize.
func newTokenCache(size int) *tokenCache {
	switch {
	case size < 0:
		return nil
	case size == 0:
		size = defaultTokenCacheSize
	}
	limit := max(size/2, 1)
	return &tokenCache{
		limit: limit,
		cur:   make(map[tokenCacheKey]tokenCacheEntry, limit),
	}
}

// generation returns the current generation; pass it to put.
func (c *tokenCache) generation() uint64 { return c.gen.Load() }

// get returns the cached token for key if it may still be used at now, or nil.
func (c *tokenCache) get(key tokenCacheKey, now time.Time) *Token {
	c.mu.RLock()
	e, ok := c.cur[key]
	inPrev := false
	if !ok {
		e, ok = c.prev[key]
		inPrev = ok
	}
	c.mu.RUnlock()
	if !ok || now.UnixNano() >= e.until {
		return nil
	}
	if inPrev {
		c.promote(key, e)
	}
	return e.tok
}

// promote moves an entry found in prev into cur.
func (c *tokenCache) promote(key tokenCacheKey, e tokenCacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Re-check under the write lock: an invalidation may have run meanwhile.
	if pe, ok := c.prev[key]; ok && pe.tok == e.tok {
		delete(c.prev, key)
		c.insertLocked(key, e)
	}
}

// put caches tok under key. gen is the generation read before the
// verification started: if the key sets changed since, the result is dropped.
func (c *tokenCache) put(gen uint64, key tokenCacheKey, tok *Token, now time.Time) {
	until := now.Add(maxTokenCacheAge)
	if tok.ExpiresAt.Before(until) {
		until = tok.ExpiresAt
	}
	if !until.After(now) {
		return // already at/after exp (accepted within leeway): never cache
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen.Load() {
		return
	}
	c.insertLocked(key, tokenCacheEntry{tok: tok, until: until.UnixNano()})
}

// insertLocked adds e to cur, swapping generations when cur is full.
func (c *tokenCache) insertLocked(key tokenCacheKey, e tokenCacheEntry) {
	if _, ok := c.cur[key]; !ok && len(c.cur) >= c.limit {
		c.prev = c.cur
		c.cur = make(map[tokenCacheKey]tokenCacheEntry, c.limit)
	}
	c.cur[key] = e
}

// invalidate drops every entry and starts a new generation.
func (c *tokenCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	c.cur = make(map[tokenCacheKey]tokenCacheEntry, c.limit)
	c.prev = nil
}

// size returns the number of entries held (including ones past their use).
func (c *tokenCache) size() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.cur) + len(c.prev)
}
