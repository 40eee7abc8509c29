package token_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

var (
	ecKeyP384 = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P384()) })
	ecKeyP521 = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P521()) })
)

// withJWK returns jwk with the given members overridden (nil deletes).
func withJWK(jwk map[string]any, members map[string]any) map[string]any {
	out := make(map[string]any, len(jwk))
	for k, v := range jwk {
		out[k] = v
	}
	for k, v := range members {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// offCurve returns an EC JWK whose y coordinate was changed: a point that is
// not on the curve (the invalid-curve attack).
func offCurve(tb testing.TB, kid string, pub *ecdsa.PublicKey) map[string]any {
	tb.Helper()
	raw, err := pub.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	size := (len(raw) - 1) / 2
	y := append([]byte(nil), raw[1+size:]...)
	y[len(y)-1] ^= 1
	return withJWK(jwkOf(tb, kid, "", pub), map[string]any{"y": b64(y)})
}

func TestJWKSFileSkipsUnusableKeys(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	rsaPub := &rsaKeyA().PublicKey
	good := jwkOf(t, "good", "", rsaPub)
	junk := []map[string]any{
		{"kty": "oct", "kid": "hmac", "k": b64([]byte("secret"))},
		withJWK(good, map[string]any{"kid": "enc", "use": "enc"}),
		withJWK(good, map[string]any{"kid": "ops", "use": nil, "key_ops": []string{"encrypt"}}),
		withJWK(good, map[string]any{"kid": "oaep", "alg": "RSA-OAEP"}),
		withJWK(good, map[string]any{"kid": "hs", "alg": "HS256"}),
		withJWK(good, map[string]any{"kid": "mismatch", "alg": "ES256"}),
		withJWK(good, map[string]any{"kid": "badn", "n": "!!!"}),
		withJWK(good, map[string]any{"kid": "noe", "e": nil}),
		withJWK(good, map[string]any{"kid": "typ", "n": 5}),
		jwkOf(t, "small", "", &mustRSA(1024).PublicKey),
		offCurve(t, "offcurve", &ecKeyA().PublicKey),
		withJWK(jwkOf(t, "short", "", &ecKeyA().PublicKey), map[string]any{"x": b64([]byte{1, 2, 3})}),
		withJWK(jwkOf(t, "k1", "", &ecKeyA().PublicKey), map[string]any{"crv": "secp256k1"}),
		{"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": b64(make([]byte, 32))},
		{"kty": "XYZ", "kid": "xyz"},
	}
	keys := append(junk, good)
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{{
		Issuer: testIssuer, Algorithms: []string{"RS256", "ES256", "PS256"},
		JWKSFile: writeFile(t, t.TempDir(), "keys.json", jwksOf(t, keys...)),
	}}})
	if st := v.Status(); st[0].KeyCount != 1 {
		t.Fatalf("KeyCount = %d, want 1 (only the good key)", st[0].KeyCount)
	}
	tests := map[string]struct {
		raw  string
		want token.TokenError
	}{
		"good key":          {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "good", claims(clock, nil)), ""},
		"encryption key":    {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "enc", claims(clock, nil)), token.TokenUnknownKey},
		"alg mismatch key":  {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "mismatch", claims(clock, nil)), token.TokenUnknownKey},
		"off-curve EC key":  {testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "offcurve", claims(clock, nil)), token.TokenUnknownKey},
		"symmetric key":     {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "hmac", claims(clock, nil)), token.TokenUnknownKey},
		"no kid: good key":  {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, nil)), ""},
		"no kid: EC absent": {testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "", claims(clock, nil)), token.TokenUnsupportedAlgorithm},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			expectCode(t, v.Verify(t.Context(), tc.raw), tc.want)
		})
	}
}

func TestJWKSOnlyInvalidKeysIsAnError(t *testing.T) {
	t.Parallel()
	tests := map[string]map[string]any{
		"off curve": offCurve(t, "a", &ecKeyA().PublicKey),
		"small RSA": jwkOf(t, "a", "", &mustRSA(1024).PublicKey),
		"even exp":  withJWK(jwkOf(t, "a", "", &rsaKeyA().PublicKey), map[string]any{"e": b64([]byte{2})}),
		// jwkset keeps the low 64 bits of e: 2^64+65537 must not pass as 65537
		"exp over 64 bits":     withJWK(jwkOf(t, "a", "", &rsaKeyA().PublicKey), map[string]any{"e": b64([]byte{1, 0, 0, 0, 0, 0, 1, 0, 1})}),
		"even modulus":         withJWK(jwkOf(t, "a", "", &rsaKeyA().PublicKey), map[string]any{"n": b64(append(rsaKeyA().N.Bytes()[:255:255], 2))}),
		"X25519 only":          {"kty": "OKP", "crv": "X25519", "x": b64(make([]byte, 32))},
		"short OKP":            {"kty": "OKP", "crv": "Ed25519", "x": b64([]byte{1})},
		"P-256 point as P-384": withJWK(jwkOf(t, "a", "", &ecKeyA().PublicKey), map[string]any{"crv": "P-384"}),
	}
	for name, key := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := token.NewVerifier(token.VerifierConfig{Issuers: []token.IssuerConfig{{
				Issuer: testIssuer, JWKSFile: writeFile(t, t.TempDir(), "k.json", jwksOf(t, key)),
			}}}, nil)
			if !errors.Is(err, token.ErrKeySource) || !strings.Contains(err.Error(), "jwks_file") {
				t.Fatalf("NewVerifier error = %v, want ErrKeySource naming jwks_file", err)
			}
		})
	}
}

func TestJWKSCurvesAndAlgorithms(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{{
		Issuer:     testIssuer,
		Algorithms: []string{"ES256", "ES384", "ES512", "RS256", "RS512", "PS384"},
		JWKSFile: writeFile(t, t.TempDir(), "k.json", jwksOf(t,
			jwkOf(t, "p256", "", &ecKeyA().PublicKey),
			jwkOf(t, "p384", "ES384", &ecKeyP384().PublicKey),
			jwkOf(t, "p521", "", &ecKeyP521().PublicKey),
			// padded base64 is tolerated
			withJWK(jwkOf(t, "rsa", "", &rsaKeyA().PublicKey), map[string]any{"e": "AQAB"}),
			// two keys under one kid: both are tried
			jwkOf(t, "dup", "", &rsaKeyA().PublicKey),
			jwkOf(t, "dup", "", &rsaKeyB().PublicKey),
		)),
	}}})
	tests := map[string]struct {
		method jwt.SigningMethod
		key    crypto.PrivateKey
		kid    string
		want   token.TokenError
	}{
		"ES256 P-256":          {jwt.SigningMethodES256, ecKeyA(), "p256", ""},
		"ES384 P-384":          {jwt.SigningMethodES384, ecKeyP384(), "p384", ""},
		"ES512 P-521":          {jwt.SigningMethodES512, ecKeyP521(), "p521", ""},
		"ES384 on a P-256 key": {jwt.SigningMethodES384, ecKeyP384(), "p256", token.TokenUnsupportedAlgorithm},
		"ES256 on a P-521 key": {jwt.SigningMethodES256, ecKeyA(), "p521", token.TokenUnsupportedAlgorithm},
		"RS512":                {jwt.SigningMethodRS512, rsaKeyA(), "rsa", ""},
		"PS384":                {jwt.SigningMethodPS384, rsaKeyA(), "rsa", ""},
		"RS256 on an EC key":   {jwt.SigningMethodRS256, rsaKeyA(), "p256", token.TokenUnsupportedAlgorithm},
		"duplicate kid, 1st":   {jwt.SigningMethodRS256, rsaKeyA(), "dup", ""},
		"duplicate kid, 2nd":   {jwt.SigningMethodRS256, rsaKeyB(), "dup", ""},
		"duplicate kid, other": {jwt.SigningMethodRS256, mustRSA(2048), "dup", token.TokenBadSignature},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			expectCode(t, v.Verify(t.Context(), testutil.MintJWT(t, tc.method, tc.key, tc.kid, claims(clock, nil))), tc.want)
		})
	}
}

func TestVerifyPEMBlockTypes(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	dir := t.TempDir()
	rsaB := &rsaKeyB().PublicKey
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "idp"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(-time.Minute)} // expired: only the key matters
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ecKeyA().PublicKey, ecKeyA())
	if err != nil {
		t.Fatal(err)
	}
	var bundle []byte
	bundle = append(bundle, pemOf(t, &rsaKeyA().PublicKey)...)
	bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(rsaB)})...)
	bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})...)
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{{
		Issuer: testIssuer, PublicKeyFile: writeFile(t, dir, "keys.pem", bundle),
	}}})
	if n := v.Status()[0].KeyCount; n != 3 {
		t.Fatalf("KeyCount = %d, want 3", n)
	}
	tests := map[string]struct {
		method jwt.SigningMethod
		key    crypto.PrivateKey
		kid    string
		want   token.TokenError
	}{
		"PUBLIC KEY":              {jwt.SigningMethodRS256, rsaKeyA(), "", ""},
		"RSA PUBLIC KEY":          {jwt.SigningMethodRS256, rsaKeyB(), "", ""},
		"CERTIFICATE (EC)":        {jwt.SigningMethodES256, ecKeyA(), "", ""},
		"kid ignored for PEM":     {jwt.SigningMethodRS256, rsaKeyB(), "some-kid", ""},
		"no matching key":         {jwt.SigningMethodRS256, mustRSA(2048), "", token.TokenBadSignature},
		"EdDSA not allowed":       {jwt.SigningMethodEdDSA, edKeyA(), "", token.TokenUnsupportedAlgorithm},
		"ES256 by another EC key": {jwt.SigningMethodES256, mustEC(elliptic.P256()), "", token.TokenBadSignature},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			expectCode(t, v.Verify(t.Context(), testutil.MintJWT(t, tc.method, tc.key, tc.kid, claims(clock, nil))), tc.want)
		})
	}
}

func TestJWKSURLIgnoresBrokenKeysButKeepsGoodOnes(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	srv := newJWKSServer(t, jwksOf(t, offCurve(t, "bad", &ecKeyA().PublicKey), jwkOf(t, "good", "", &ecKeyA().PublicKey)))
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{{
		Issuer: testIssuer, JWKSURL: srv.URL,
	}}})
	expectCode(t, v.Verify(t.Context(), testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "good", claims(clock, nil))), "")
	expectCode(t, v.Verify(t.Context(), testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "bad", claims(clock, nil))), token.TokenUnknownKey)
	if st := v.Status(); st[0].KeyCount != 1 || st[0].LastError != "" {
		t.Fatalf("Status = %+v", st)
	}
}
