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
	defaultTokenCacheSize = 5000
	// DefaultTokenCacheBytes is VerifierConfig.CacheBytes when it is 0.
	DefaultTokenCacheBytes = 16 << 20
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
	// size is the entry's accounted bytes (tokenBytes).
	size int64
}

// tokenCache caches successful verifications by the hash of the raw token.
//
// It approximates an LRU with two generations: entries are inserted into cur;
// when cur holds limit entries, or limitBytes accounted bytes, it becomes
// prev and a new cur starts, so at most 2*limit entries and 2*limitBytes
// bytes are kept. A hit in prev is promoted into cur, so a token in steady
// use survives the swaps. A token larger than limitBytes is not cached.
//
// Any change of any issuer's key set calls invalidate, which drops every entry
// and bumps the generation; a verification that started before the change
// (and so may have used a removed key) is not inserted (see put).
//
// # Concurrency
//
// All methods are safe for concurrent use. Lookups take a read lock only.
type tokenCache struct {
	gen        atomic.Uint64
	limit      int   // entries per generation
	limitBytes int64 // accounted bytes per generation

	mu                  sync.RWMutex
	cur                 map[tokenCacheKey]tokenCacheEntry
	prev                map[tokenCacheKey]tokenCacheEntry
	curBytes, prevBytes int64
}

// newTokenCache returns a cache holding at most size entries and bytes
// accounted bytes, or nil (no caching) when either is negative. 0 means
// defaultTokenCacheSize, DefaultTokenCacheBytes.
func newTokenCache(size int, bytes int64) *tokenCache {
	switch {
	case size < 0 || bytes < 0:
		return nil
	case size == 0:
		size = defaultTokenCacheSize
	}
	if bytes == 0 {
		bytes = DefaultTokenCacheBytes
	}
	return &tokenCache{
		limit:      max(size/2, 1),
		limitBytes: max(bytes/2, 1),
		cur:        make(map[tokenCacheKey]tokenCacheEntry),
	}
}

// tokenBytes is the accounted size of a cached token: its strings, its
// claims twice (as Go values and as the OPA value of input.token) and the
// overhead of the entry, the Token and the map slot.
func tokenBytes(t *Token) int64 {
	const overhead = 512
	n := overhead + len(t.Issuer) + len(t.Subject) + len(t.TenantBinding) +
		tokenValueFactor*jsonBytes(map[string]any(t.Claims))
	return int64(n)
}

// tokenValueFactor: the claims are held as decoded JSON and, larger, as the
// OPA value built once at verification.
const tokenValueFactor = 4

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
		c.prevBytes -= pe.size
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
	size := tokenBytes(tok)
	if size > c.limitBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen.Load() {
		return
	}
	c.insertLocked(key, tokenCacheEntry{tok: tok, until: until.UnixNano(), size: size})
}

// insertLocked adds e to cur (replacing an entry of key), swapping
// generations when cur is full.
func (c *tokenCache) insertLocked(key tokenCacheKey, e tokenCacheEntry) {
	if old, ok := c.cur[key]; ok {
		delete(c.cur, key)
		c.curBytes -= old.size
	}
	if old, ok := c.prev[key]; ok {
		delete(c.prev, key)
		c.prevBytes -= old.size
	}
	if len(c.cur) >= c.limit || c.curBytes+e.size > c.limitBytes {
		c.prev, c.prevBytes = c.cur, c.curBytes
		c.cur, c.curBytes = make(map[tokenCacheKey]tokenCacheEntry), 0
	}
	c.cur[key] = e
	c.curBytes += e.size
}

// invalidate drops every entry and starts a new generation.
func (c *tokenCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	c.cur, c.curBytes = make(map[tokenCacheKey]tokenCacheEntry), 0
	c.prev, c.prevBytes = nil, 0
}

// size returns the number of entries held (including ones past their use).
func (c *tokenCache) size() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.cur) + len(c.prev)
}
