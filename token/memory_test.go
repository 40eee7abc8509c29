package token_test

import (
	"crypto/ecdsa"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// TestTokenCacheMemoryBounded: 1,000 valid ES256 tokens carrying 24 KB of
// claims each, default configuration. The verified-token cache was bounded
// by entries only (10,000): the heap grew by about 110 MiB. Now it stays
// within the default byte budget (16 MiB). Not parallel: it measures the
// heap.
func TestTokenCacheMemoryBounded(t *testing.T) {
	key, v := ecVerifier(t, "tokens-memory")
	tokens := make([]string, 1000)
	for i := range tokens {
		roles := make([]string, 1000)
		for j := range roles {
			roles[j] = fmt.Sprintf("role-%08d-%04d", i, j)
		}
		tokens[i] = testutil.MintJWT(t, jwt.SigningMethodES256, key, "", testutil.Claims("https://idp.example.com/", fmt.Sprint("user-", i), map[string]any{"roles": roles}))
	}
	base := testutil.HeapInUse()
	for i, raw := range tokens {
		if tok := v.Verify(t.Context(), raw); !tok.Valid {
			t.Fatalf("token %d: %s", i, tok.Error)
		}
	}
	grown := (testutil.HeapInUse() - base) >> 20
	runtime.KeepAlive(v)
	runtime.KeepAlive(tokens)
	t.Logf("heap grew by %d MiB (%d bytes of tokens)", grown, len(tokens)*len(tokens[0]))
	if grown > 48 {
		t.Errorf("heap grew by %d MiB after 1,000 large tokens, want at most 48 (the default budget, 16 MiB, and slack)", grown)
	}
	if !strings.HasPrefix(tokens[0], "ey") {
		t.Fatal("not a JWT")
	}
}

// TestTokenCacheAccountsSmallTokens: the cache's byte budget bounds the heap
// only if an entry's accounted size is at least what it really holds. The
// common case is a small token (iss, sub, aud, iat, exp, as `make bench`
// mints them): 3,000 of them are verified and cached, and the heap they
// hold, per entry, must not exceed the accounted size the cache reports
// for one. Not parallel: it measures the heap.
func TestTokenCacheAccountsSmallTokens(t *testing.T) {
	const n = 3000
	key, v := ecVerifier(t, "tokens-small")
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = testutil.MintJWT(t, jwt.SigningMethodES256, key, "", testutil.Claims("https://idp.example.com/", fmt.Sprintf("u%07d", i), nil))
	}
	base := testutil.HeapInUse()
	for i, raw := range tokens {
		if tok := v.Verify(t.Context(), raw); !tok.Valid {
			t.Fatalf("token %d: %s", i, tok.Error)
		}
	}
	held := float64(testutil.HeapInUse()-base) / n
	entries, accounted := v.CacheUsage()
	runtime.KeepAlive(v)
	runtime.KeepAlive(tokens)
	if entries != n {
		t.Fatalf("the cache holds %d entries, want %d", entries, n)
	}
	per := float64(accounted) / float64(entries)
	t.Logf("a cached small token holds %.0f bytes of heap, accounted %.0f", held, per)
	if held > per {
		t.Errorf("a cached small token holds %.0f bytes of heap but is accounted %.0f: the byte budget does not bound the heap", held, per)
	}
}

// ecVerifier is a Verifier with the default cache for an ES256 issuer
// (https://idp.example.com/, audience api) whose key is named name.
func ecVerifier(t *testing.T, name string) (*ecdsa.PrivateKey, *token.Verifier) {
	t.Helper()
	key := testutil.ECKey(t, name)
	dir := testutil.PolicyDir(t, map[string]string{"ec.pem": string(testutil.PublicKeyPEM(t, &key.PublicKey))})
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: []token.IssuerConfig{
		{Issuer: "https://idp.example.com/", Audiences: []string{"api"}, PublicKeyFile: dir + "/ec.pem"},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return key, v
}
