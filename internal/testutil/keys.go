package testutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Keys are generated once per name and test binary: RSA key generation is
// slow under -race, and tests that need distinct keys ask for distinct names.
var (
	keyMu   sync.Mutex
	rsaKeys = map[string]*rsa.PrivateKey{}
	ecKeys  = map[string]*ecdsa.PrivateKey{}
)

// RSAKey returns the 2048-bit RSA key called name, generated on first use.
func RSAKey(tb testing.TB, name string) *rsa.PrivateKey {
	tb.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	if k, ok := rsaKeys[name]; ok {
		return k
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatalf("generate RSA key: %v", err)
	}
	rsaKeys[name] = k
	return k
}

// ECKey returns the P-256 key called name, generated on first use.
func ECKey(tb testing.TB, name string) *ecdsa.PrivateKey {
	tb.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	if k, ok := ecKeys[name]; ok {
		return k
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("generate EC key: %v", err)
	}
	ecKeys[name] = k
	return k
}

// Claims returns a valid claim set of issuer for subject: audience "api",
// expiring in an hour, issued a minute ago. extra is merged in; a nil value
// deletes the claim.
func Claims(issuer, subject string, extra map[string]any) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"iss": issuer,
		"sub": subject,
		"aud": "api",
		"iat": now.Add(-time.Minute).Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// MintJWT signs claims with key using method; kid, when not empty, goes into
// the header.
func MintJWT(tb testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.Claims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatalf("sign JWT: %v", err)
	}
	return s
}

// CraftJWT assembles a token from a raw header and payload (JSON-encoded)
// and a signature, for attacks no honest signer produces (alg none, tampered
// payloads).
func CraftJWT(tb testing.TB, header, payload any, sig []byte) string {
	tb.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			tb.Fatalf("craft JWT: %v", err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(payload) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// PublicKeyPEM encodes pub as a PKIX "PUBLIC KEY" PEM block.
func PublicKeyPEM(tb testing.TB, pub crypto.PublicKey) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatalf("marshal public key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// JWK returns the JSON Web Key of pub (RSA or EC P-256) with kid and alg.
func JWK(tb testing.TB, kid, alg string, pub crypto.PublicKey) map[string]any {
	tb.Helper()
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
			"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		ecdh, err := k.ECDH()
		if err != nil {
			tb.Fatalf("EC key: %v", err)
		}
		raw := ecdh.Bytes() // 0x04 || X || Y
		n := (len(raw) - 1) / 2
		return map[string]any{"kty": "EC", "kid": kid, "alg": alg, "use": "sig", "crv": "P-256",
			"x": b64(raw[1 : 1+n]), "y": b64(raw[1+n:])}
	}
	tb.Fatalf("JWK: unsupported key type %T", pub)
	return nil
}

// JWKS encodes keys as a JWK Set document.
func JWKS(tb testing.TB, keys ...map[string]any) []byte {
	tb.Helper()
	if keys == nil {
		keys = []map[string]any{}
	}
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		tb.Fatalf("marshal JWKS: %v", err)
	}
	return b
}
