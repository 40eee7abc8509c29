package token

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestTokenCacheInternals(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tok := func() *Token { return &Token{Valid: true, ExpiresAt: now.Add(time.Hour)} }
	key := func(i int) tokenCacheKey { return tokenCacheKeyOf(fmt.Sprint("token-", i)) }

	t.Run("bounded by size", func(t *testing.T) {
		t.Parallel()
		c := newTokenCache(10, 0)
		for i := range 1000 {
			c.put(c.generation(), key(i), tok(), now)
			if n := c.size(); n > 10 {
				t.Fatalf("after %d puts the cache holds %d entries, limit 10", i+1, n)
			}
		}
		if c.get(key(999), now) == nil || c.get(key(0), now) != nil {
			t.Fatal("the newest entry must stay, the oldest must go")
		}
	})
	t.Run("hits survive generation swaps", func(t *testing.T) {
		t.Parallel()
		c := newTokenCache(4, 0) // 2 per generation
		hot := tok()
		c.put(c.generation(), key(-1), hot, now)
		for i := range 100 {
			c.put(c.generation(), key(i), tok(), now)
			if c.get(key(-1), now) != hot {
				t.Fatalf("hot entry evicted after %d inserts", i+1)
			}
		}
	})
	t.Run("put after invalidation is dropped", func(t *testing.T) {
		t.Parallel()
		c := newTokenCache(10, 0)
		gen := c.generation()
		c.invalidate()
		c.put(gen, key(1), tok(), now)
		if c.get(key(1), now) != nil {
			t.Fatal("a result verified before a key change was cached")
		}
	})
	t.Run("invalidate drops everything", func(t *testing.T) {
		t.Parallel()
		c := newTokenCache(4, 0)
		for i := range 4 {
			c.put(c.generation(), key(i), tok(), now)
		}
		c.invalidate()
		if c.size() != 0 {
			t.Fatalf("size after invalidate = %d", c.size())
		}
	})
	t.Run("expiry", func(t *testing.T) {
		t.Parallel()
		c := newTokenCache(4, 0)
		short := &Token{Valid: true, ExpiresAt: now.Add(time.Minute)}
		c.put(c.generation(), key(1), short, now)
		if c.get(key(1), now.Add(time.Minute-time.Nanosecond)) != short {
			t.Fatal("entry unusable before exp")
		}
		if c.get(key(1), now.Add(time.Minute)) != nil {
			t.Fatal("entry used at exp")
		}
		c.put(c.generation(), key(2), tok(), now)
		if c.get(key(2), now.Add(maxTokenCacheAge)) != nil {
			t.Fatal("entry used after the maximum age")
		}
		c.put(c.generation(), key(3), &Token{Valid: true, ExpiresAt: now}, now)
		if c.size() != 2 {
			t.Fatal("a token at its exp was cached")
		}
	})
	t.Run("disabled", func(t *testing.T) {
		t.Parallel()
		if newTokenCache(-1, 0) != nil {
			t.Fatal("negative size must disable the cache")
		}
	})
}

func TestJWKSKeySetFingerprint(t *testing.T) {
	t.Parallel()
	a := &verifyKey{kid: "a", der: []byte{1, 2}}
	b := &verifyKey{kid: "b", der: []byte{3}}
	b2 := &verifyKey{kid: "b", alg: "RS256", der: []byte{3}}
	if newKeySet([]*verifyKey{a, b}).fingerprint != newKeySet([]*verifyKey{b, a}).fingerprint {
		t.Error("fingerprint depends on key order")
	}
	if newKeySet([]*verifyKey{a, b}).fingerprint == newKeySet([]*verifyKey{a}).fingerprint {
		t.Error("removing a key keeps the fingerprint")
	}
	if newKeySet([]*verifyKey{a, b}).fingerprint == newKeySet([]*verifyKey{a, b2}).fingerprint {
		t.Error("changing a key's alg keeps the fingerprint")
	}
}

func TestJWKSRedirectPolicy(t *testing.T) {
	t.Parallel()
	req := func(u string) *http.Request { return &http.Request{URL: &url.URL{Scheme: u, Host: "h"}} }
	tests := map[string]struct {
		from, to string
		hops     int
		ok       bool
	}{
		"https to https": {"https", "https", 1, true},
		"http to https":  {"http", "https", 1, true},
		"http to http":   {"http", "http", 1, true},
		"https to http":  {"https", "http", 1, false},
		"too many hops":  {"https", "https", 5, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			via := []*http.Request{req(tc.from)}
			for len(via) < tc.hops {
				via = append(via, req(tc.to))
			}
			if err := refuseSchemeDowngrade(req(tc.to), via); (err == nil) != tc.ok {
				t.Fatalf("refuseSchemeDowngrade = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestTokenCacheByteBudget: tokens with large claims are cached within the
// byte budget (accounted as their claims, twice over, plus overhead); a
// token larger than a generation's share is not cached at all.
func TestTokenCacheByteBudget(t *testing.T) {
	t.Parallel()
	now := time.Now()
	const budget = 512 << 10
	c := newTokenCache(10000, budget)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		roles := make([]any, r.IntN(400))
		for j := range roles {
			roles[j] = fmt.Sprintf("role-%d-%d", i, j)
		}
		tok := &Token{Valid: true, Issuer: "i", Subject: fmt.Sprint(i), ExpiresAt: now.Add(time.Hour),
			Claims: map[string]any{"sub": fmt.Sprint(i), "roles": roles}}
		c.put(c.generation(), tokenCacheKeyOf(fmt.Sprint(i)), tok, now)
		size := tokenBytes(tok)
		limit := c.c.Limits().Bytes
		if got := c.get(tokenCacheKeyOf(fmt.Sprint(i)), now); (got != nil) != (size <= limit) {
			t.Fatalf("token %d of %d accounted bytes: cached=%v (a generation holds %d)", i, size, got != nil, limit)
		}
		var held int64
		for _, e := range c.c.All() {
			held += tokenBytes(e.tok)
		}
		if accounted := c.c.Bytes(); held != accounted || held > budget {
			t.Fatalf("token %d: entries hold %d bytes, accounted %d, budget %d", i, held, accounted, budget)
		}
	}
	if newTokenCache(10, -1) != nil {
		t.Error("a negative byte budget must disable the cache")
	}
}
