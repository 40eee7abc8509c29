package token

import (
	"crypto/sha256"
	"time"
	"unsafe"

	"github.com/gatehouse-dev/gatehouse/internal/gencache"
	"github.com/gatehouse-dev/gatehouse/internal/jsonsize"
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
}

// tokenCache caches successful verifications by the hash of the raw token:
// a gencache.Cache of one shard (see internal/gencache: two generations,
// bounded in entries and in accounted bytes, a hit in the older generation
// promoted), with the token's rules on top: an entry is used only before
// its until, and a token larger than a generation's share is not cached.
//
// Any change of any issuer's key set calls invalidate, which drops every entry
// and starts a new epoch; a verification that started before the change
// (and so may have used a removed key) is not inserted (see put).
//
// # Concurrency
//
// All methods are safe for concurrent use. Lookups take a read lock only.
type tokenCache struct {
	c *gencache.Cache[tokenCacheKey, tokenCacheEntry]
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
	return &tokenCache{c: gencache.New(gencache.Config[tokenCacheKey, tokenCacheEntry]{
		Entries: size,
		Bytes:   bytes,
		Size:    func(e tokenCacheEntry) int64 { return tokenBytes(e.tok) },
	})}
}

// tokenBytes is the accounted size of a cached token: its strings, its
// claims (as the OPA value of input.token) and the overhead of the entry,
// the Token and the map slot. TestTokenCacheAccountsSmallTokens and
// TestTokenCacheMemoryBounded check it against the heap.
func tokenBytes(t *Token) int64 {
	const overhead = 512
	n := overhead + len(t.Issuer) + len(t.Subject) + len(t.TenantBinding) +
		tokenValueFactor*t.claimsBytes()
	return int64(n)
}

// claimsBytes is the JSON size of t's claims.
func (t *Token) claimsBytes() int {
	if t.Claims == nil {
		return t.claimsSize
	}
	return jsonsize.Of(map[string]any(t.Claims))
}

// tokenValueFactor: the claims are held as the OPA value built once at
// verification, a few times their JSON size.
const tokenValueFactor = 4

// generation returns the current epoch; pass it to put.
func (c *tokenCache) generation() uint64 { return c.c.Epoch() }

// get returns the cached token for key if it may still be used at now, or nil.
func (c *tokenCache) get(key tokenCacheKey, now time.Time) *Token {
	e, ok := c.c.Get(key)
	if !ok || now.UnixNano() >= e.until {
		return nil
	}
	return e.tok
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
	c.c.PutAt(gen, key, tokenCacheEntry{tok: tok, until: until.UnixNano()})
}

// invalidate drops every entry and starts a new generation.
func (c *tokenCache) invalidate() { c.c.Invalidate() }

// size returns the number of entries held (including ones past their use).
func (c *tokenCache) size() int { return c.c.Len() }
