package token_test

import (
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// BenchmarkVerify measures Verify on the hot path (a cached token) and on a
// cache miss (a full RS256 / ES256 verification).
func BenchmarkVerify(b *testing.B) {
	clock := newTestClock()
	dir := b.TempDir()
	issuers := []token.IssuerConfig{
		{Issuer: testIssuer, Audiences: []string{"api"},
			JWKSFile: writeFile(b, dir, "k.json", jwksOf(b, jwkOf(b, "rsa", "", &rsaKeyA().PublicKey), jwkOf(b, "ec", "", &ecKeyA().PublicKey)))},
	}
	rs := testutil.MintJWT(b, jwt.SigningMethodRS256, rsaKeyA(), "rsa", claims(clock, nil))
	es := testutil.MintJWT(b, jwt.SigningMethodES256, ecKeyA(), "ec", claims(clock, nil))
	cached := newVerifier(b, token.VerifierConfig{Now: clock.Now, Issuers: issuers})
	uncached := newVerifier(b, token.VerifierConfig{Now: clock.Now, Issuers: issuers, CacheSize: -1})
	run := func(name string, v *token.Verifier, raw string) {
		b.Run(name, func(b *testing.B) {
			ctx := b.Context()
			if tok := v.Verify(ctx, raw); !tok.Valid {
				b.Fatalf("token invalid: %s", tok.Error)
			}
			b.ReportAllocs()
			for b.Loop() {
				v.Verify(ctx, raw)
			}
		})
	}
	run("cache_hit", cached, rs)
	run("cache_miss_RS256", uncached, rs)
	run("cache_miss_ES256", uncached, es)
	b.Run("cache_hit_parallel", func(b *testing.B) {
		ctx := b.Context()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				cached.Verify(ctx, rs)
			}
		})
	})
}
