package token_test

import (
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
	key := testutil.ECKey(t, "tokens-memory")
	dir := testutil.PolicyDir(t, map[string]string{"ec.pem": string(testutil.PublicKeyPEM(t, &key.PublicKey))})
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: []token.IssuerConfig{
		{Issuer: "https://idp.example.com/", Audiences: []string{"api"}, PublicKeyFile: dir + "/ec.pem"},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
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
