package token_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// --- fixtures: real keys, generated once per test binary ---

var (
	rsaKeyA = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
	rsaKeyB = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
	ecKeyA  = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P256()) })
	edKeyA  = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func mustRSA(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func mustEC(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// testClock is a settable clock for VerifierConfig.Now.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *testClock) Now() time.Time            { return time.Unix(0, c.ns.Load()) }
func (c *testClock) Advance(d time.Duration)   { c.ns.Add(int64(d)) }
func (c *testClock) In(d time.Duration) int64  { return c.Now().Add(d).Unix() }
func (c *testClock) Ago(d time.Duration) int64 { return c.Now().Add(-d).Unix() }

const testIssuer = "https://idp.example.com/"

// claims returns a valid claim set for testIssuer at clock's now, with extra
// merged in (a nil value deletes the claim).
func claims(clock *testClock, extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{
		"iss":   testIssuer,
		"sub":   "u1",
		"aud":   "api",
		"exp":   clock.In(time.Hour),
		"iat":   clock.Ago(time.Minute),
		"scope": "read write",
		"n":     42,
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// craft builds a token from raw header and claims JSON and a signature.
func craft(header, payload string, sig []byte) string {
	return b64([]byte(header)) + "." + b64([]byte(payload)) + "." + b64(sig)
}

// pemOf encodes pub as a PUBLIC KEY block.
func pemOf(tb testing.TB, pub crypto.PublicKey) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// writeFile writes data into a new file of t.TempDir().
func writeFile(tb testing.TB, dir, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// jwkOf returns the public JWK of pub with kid (and alg when non-empty).
func jwkOf(tb testing.TB, kid, alg string, pub crypto.PublicKey) map[string]any {
	tb.Helper()
	m := map[string]any{"use": "sig"}
	if kid != "" {
		m["kid"] = kid
	}
	if alg != "" {
		m["alg"] = alg
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		m["kty"] = "RSA"
		m["n"] = b64(p.N.Bytes())
		m["e"] = b64(big.NewInt(int64(p.E)).Bytes())
	case *ecdsa.PublicKey:
		raw, err := p.Bytes()
		if err != nil {
			tb.Fatal(err)
		}
		size := (len(raw) - 1) / 2
		m["kty"] = "EC"
		m["crv"] = p.Curve.Params().Name
		m["x"] = b64(raw[1 : 1+size])
		m["y"] = b64(raw[1+size:])
	case ed25519.PublicKey:
		m["kty"] = "OKP"
		m["crv"] = "Ed25519"
		m["x"] = b64(p)
	default:
		tb.Fatalf("jwkOf: %T", pub)
	}
	return m
}

// jwksOf encodes a JWK Set.
func jwksOf(tb testing.TB, keys ...map[string]any) []byte {
	tb.Helper()
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// jwksServer is a real JWKS endpoint on 127.0.0.1 whose document and
// failure mode tests change at will; it counts the requests it gets.
type jwksServer struct {
	*httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	body []byte
	code int
}

func newJWKSServer(tb testing.TB, body []byte) *jwksServer {
	tb.Helper()
	s := &jwksServer{body: body, code: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		body, code := s.body, s.code
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(code)
		_, _ = w.Write(body)
	}))
	tb.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(body []byte, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.code = body, code
}

// newVerifier builds a verifier or fails the test.
func newVerifier(tb testing.TB, cfg token.VerifierConfig) *token.Verifier {
	tb.Helper()
	v, err := token.NewVerifier(cfg, nil)
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// counter reads a counter of reg; labels select the series.
func counter(tb testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func expectCode(tb testing.TB, tok *token.Token, want token.TokenError) {
	tb.Helper()
	if tok == nil {
		tb.Fatal("nil token")
	}
	switch {
	case want == "" && !tok.Valid:
		tb.Fatalf("token invalid (%s), want valid", tok.Error)
	case want != "" && tok.Valid:
		tb.Fatalf("token valid, want %s", want)
	case want != "" && tok.Error != want:
		tb.Fatalf("error %q, want %q", tok.Error, want)
	}
}

// --- BearerToken ---

func TestBearerToken(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		header string
		token  string
		ok     bool
	}{
		"bearer":               {"Bearer abc.def.ghi", "abc.def.ghi", true},
		"lower case scheme":    {"bearer abc", "abc", true},
		"mixed case scheme":    {"BeArEr abc", "abc", true},
		"several spaces":       {"Bearer    abc", "abc", true},
		"surrounding spaces":   {"  Bearer abc  ", "abc", true},
		"empty":                {"", "", false},
		"blank":                {"   ", "", false},
		"bearer alone":         {"Bearer", "", false},
		"bearer and space":     {"Bearer ", "", false},
		"bearer and spaces":    {"Bearer    ", "", false},
		"basic":                {"Basic dXNlcjpwYXNz", "", false},
		"two tokens":           {"Bearer abc def", "", false},
		"tab inside token":     {"Bearer abc\tdef", "", false},
		"no separator":         {"Bearerabc", "", false},
		"tab separator":        {"Bearer\tabc", "", false},
		"prefix of scheme":     {"Bear abc", "", false},
		"other scheme bearer2": {"Bearer2 abc", "", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, ok := token.BearerToken(tc.header)
			if got != tc.token || ok != tc.ok {
				t.Fatalf("BearerToken(%q) = %q, %v; want %q, %v", tc.header, got, ok, tc.token, tc.ok)
			}
		})
	}
}

// --- IssuerConfig ---

func TestVerifierIssuerConfigValidate(t *testing.T) {
	t.Parallel()
	valid := token.IssuerConfig{Issuer: testIssuer, PublicKeyFile: "/k.pem"}
	tests := map[string]struct {
		mutate func(c *token.IssuerConfig)
		want   []string // substrings of the error; none = valid
	}{
		"valid":          {func(c *token.IssuerConfig) {}, nil},
		"valid jwks_url": {func(c *token.IssuerConfig) { c.PublicKeyFile, c.JWKSURL = "", "https://idp/jwks" }, nil},
		"valid all algorithms": {func(c *token.IssuerConfig) {
			c.Algorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
		}, nil},
		"none":                 {func(c *token.IssuerConfig) { c.Algorithms = []string{"RS256", "none"} }, []string{`"none"`, "public keys only", testIssuer}},
		"HS256":                {func(c *token.IssuerConfig) { c.Algorithms = []string{"HS256"} }, []string{`"HS256"`, "public keys only"}},
		"HS512":                {func(c *token.IssuerConfig) { c.Algorithms = []string{"HS512"} }, []string{`"HS512"`, "public keys only"}},
		"unknown algorithm":    {func(c *token.IssuerConfig) { c.Algorithms = []string{"rs256"} }, []string{`"rs256"`, "unsupported"}},
		"no key source":        {func(c *token.IssuerConfig) { c.PublicKeyFile = "" }, []string{"no key source"}},
		"two key sources":      {func(c *token.IssuerConfig) { c.JWKSFile = "/k.json" }, []string{"more than one key source", "jwks_file", "public_key_file"}},
		"three key sources":    {func(c *token.IssuerConfig) { c.JWKSFile, c.JWKSURL = "/k.json", "https://idp/jwks" }, []string{"more than one key source"}},
		"empty issuer":         {func(c *token.IssuerConfig) { c.Issuer = "" }, []string{"issuer must not be empty"}},
		"negative leeway":      {func(c *token.IssuerConfig) { c.Leeway = -time.Second }, []string{"leeway -1s"}},
		"negative refresh":     {func(c *token.IssuerConfig) { c.JWKSRefreshInterval = -time.Second }, []string{"jwks_refresh_interval"}},
		"negative min refresh": {func(c *token.IssuerConfig) { c.JWKSMinRefreshInterval = -time.Second }, []string{"jwks_min_refresh_interval"}},
		"bad url scheme":       {func(c *token.IssuerConfig) { c.PublicKeyFile, c.JWKSURL = "", "ftp://idp/jwks" }, []string{"scheme"}},
		"bad tenant":           {func(c *token.IssuerConfig) { c.Tenant = "a b" }, []string{`tenant "a b"`}},
		"empty audience":       {func(c *token.IssuerConfig) { c.Audiences = []string{""} }, []string{"empty audience"}},
		"several problems":     {func(c *token.IssuerConfig) { c.PublicKeyFile, c.Algorithms = "", []string{"none"} }, []string{"no key source", `"none"`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := valid
			tc.mutate(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			if !errors.Is(err, token.ErrIssuerConfig) {
				t.Errorf("error does not wrap ErrIssuerConfig: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestVerifierIssuerConfigSetDefaults(t *testing.T) {
	t.Parallel()
	c := token.IssuerConfig{Issuer: testIssuer}
	c.SetDefaults()
	if strings.Join(c.Algorithms, ",") != "RS256,ES256" || c.Leeway != 30*time.Second ||
		c.JWKSRefreshInterval != 5*time.Minute || c.JWKSMinRefreshInterval != 5*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	c = token.IssuerConfig{Algorithms: []string{"EdDSA"}, Leeway: time.Second}
	c.SetDefaults()
	if strings.Join(c.Algorithms, ",") != "EdDSA" || c.Leeway != time.Second {
		t.Fatalf("SetDefaults overwrote set fields: %+v", c)
	}
}

func TestNewVerifierErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	priv, err := x509.MarshalPKCS8PrivateKey(rsaKeyA())
	if err != nil {
		t.Fatal(err)
	}
	good := writeFile(t, dir, "good.pem", pemOf(t, &rsaKeyA().PublicKey))
	tests := map[string]struct {
		issuers []token.IssuerConfig
		want    error
	}{
		"invalid config":   {[]token.IssuerConfig{{Issuer: testIssuer, Algorithms: []string{"HS256"}, PublicKeyFile: good}}, token.ErrIssuerConfig},
		"duplicate issuer": {[]token.IssuerConfig{{Issuer: testIssuer, PublicKeyFile: good}, {Issuer: testIssuer, PublicKeyFile: good}}, token.ErrIssuerConfig},
		"missing file":     {[]token.IssuerConfig{{Issuer: testIssuer, PublicKeyFile: filepath.Join(dir, "nope.pem")}}, token.ErrKeySource},
		"not PEM":          {[]token.IssuerConfig{{Issuer: testIssuer, PublicKeyFile: writeFile(t, dir, "x.pem", []byte("hello"))}}, token.ErrKeySource},
		"private key PEM": {[]token.IssuerConfig{{Issuer: testIssuer, PublicKeyFile: writeFile(t, dir, "p.pem",
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}))}}, token.ErrKeySource},
		"small RSA PEM":       {[]token.IssuerConfig{{Issuer: testIssuer, PublicKeyFile: writeFile(t, dir, "s.pem", pemOf(t, &mustRSA(1024).PublicKey))}}, token.ErrKeySource},
		"JWKS not JSON":       {[]token.IssuerConfig{{Issuer: testIssuer, JWKSFile: writeFile(t, dir, "x.json", []byte("{"))}}, token.ErrKeySource},
		"JWKS without keys":   {[]token.IssuerConfig{{Issuer: testIssuer, JWKSFile: writeFile(t, dir, "e.json", []byte(`{"keys":[]}`))}}, token.ErrKeySource},
		"JWKS only oct":       {[]token.IssuerConfig{{Issuer: testIssuer, JWKSFile: writeFile(t, dir, "o.json", []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`))}}, token.ErrKeySource},
		"JWKS no keys member": {[]token.IssuerConfig{{Issuer: testIssuer, JWKSFile: writeFile(t, dir, "n.json", []byte(`{}`))}}, token.ErrKeySource},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := token.NewVerifier(token.VerifierConfig{Issuers: tc.issuers}, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewVerifier error = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), testIssuer) {
				t.Errorf("error %q does not name the issuer", err)
			}
		})
	}
}

// --- valid tokens from every key source ---

func TestVerifyValidTokens(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rsaPub, ecPub, edPub := &rsaKeyA().PublicKey, &ecKeyA().PublicKey, edKeyA().Public()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "rsa-1", "", rsaPub), jwkOf(t, "ec-1", "", ecPub)))
	allAlgs := []string{"RS256", "PS256", "ES256", "EdDSA"}
	tests := map[string]struct {
		issuer token.IssuerConfig
		method jwt.SigningMethod
		key    crypto.PrivateKey
		kid    string
	}{
		"RS256 PEM":                         {token.IssuerConfig{PublicKeyFile: writeFile(t, dir, "rsa.pem", pemOf(t, rsaPub))}, jwt.SigningMethodRS256, rsaKeyA(), ""},
		"RS256 PEM any kid":                 {token.IssuerConfig{PublicKeyFile: writeFile(t, dir, "rsa2.pem", pemOf(t, rsaPub))}, jwt.SigningMethodRS256, rsaKeyA(), "whatever"},
		"RS256 JWKS file":                   {token.IssuerConfig{JWKSFile: writeFile(t, dir, "rsa.json", jwksOf(t, jwkOf(t, "rsa-1", "RS256", rsaPub)))}, jwt.SigningMethodRS256, rsaKeyA(), "rsa-1"},
		"RS256 JWKS URL":                    {token.IssuerConfig{JWKSURL: srv.URL}, jwt.SigningMethodRS256, rsaKeyA(), "rsa-1"},
		"PS256 JWKS URL":                    {token.IssuerConfig{JWKSURL: srv.URL, Algorithms: allAlgs}, jwt.SigningMethodPS256, rsaKeyA(), "rsa-1"},
		"ES256 PEM":                         {token.IssuerConfig{PublicKeyFile: writeFile(t, dir, "ec.pem", pemOf(t, ecPub))}, jwt.SigningMethodES256, ecKeyA(), ""},
		"ES256 JWKS URL":                    {token.IssuerConfig{JWKSURL: srv.URL}, jwt.SigningMethodES256, ecKeyA(), "ec-1"},
		"EdDSA JWKS file":                   {token.IssuerConfig{Algorithms: allAlgs, JWKSFile: writeFile(t, dir, "ed.json", jwksOf(t, jwkOf(t, "ed-1", "EdDSA", edPub)))}, jwt.SigningMethodEdDSA, edKeyA(), "ed-1"},
		"EdDSA PEM":                         {token.IssuerConfig{Algorithms: []string{"EdDSA"}, PublicKeyFile: writeFile(t, dir, "ed.pem", pemOf(t, edPub))}, jwt.SigningMethodEdDSA, edKeyA(), ""},
		"token without kid, JWKS with kids": {token.IssuerConfig{JWKSFile: writeFile(t, dir, "rsa3.json", jwksOf(t, jwkOf(t, "rsa-1", "", rsaPub)))}, jwt.SigningMethodRS256, rsaKeyA(), ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clock := newTestClock()
			ic := tc.issuer
			ic.Issuer, ic.Audiences, ic.Tenant, ic.TrustTokenRoles = testIssuer, []string{"other", "api"}, "acme", true
			v := newVerifier(t, token.VerifierConfig{Issuers: []token.IssuerConfig{ic}, Now: clock.Now})
			raw := testutil.MintJWT(t, tc.method, tc.key, tc.kid, claims(clock, nil))
			tok := v.Verify(t.Context(), raw)
			expectCode(t, tok, "")
			if tok.Issuer != testIssuer || tok.Subject != "u1" || tok.TenantBinding != "acme" || !tok.TrustTokenRoles {
				t.Errorf("token fields: %+v", tok)
			}
			if n, ok := tok.ClaimsMap()["n"].(json.Number); !ok || n != "42" {
				t.Errorf("claim n = %#v, want json.Number 42", tok.ClaimsMap()["n"])
			}
			if want := time.Unix(clock.In(time.Hour), 0); !tok.ExpiresAt.Equal(want) {
				t.Errorf("ExpiresAt = %v, want %v", tok.ExpiresAt, want)
			}
			want := ast.MustParseTerm(`{"valid": true, "issuer": "https://idp.example.com/", "subject": "u1",
				"tenant_binding": "acme", "trust_token_roles": true}`).Value.(ast.Object)
			got, ok := tok.Value().(ast.Object)
			if !ok {
				t.Fatalf("Value() is %T", tok.Value())
			}
			for _, k := range want.Keys() {
				if !got.Get(k).Equal(want.Get(k)) {
					t.Errorf("value[%v] = %v, want %v", k, got.Get(k), want.Get(k))
				}
			}
			if c := got.Get(ast.StringTerm("claims")); c == nil || !c.Get(ast.StringTerm("n")).Equal(ast.IntNumberTerm(42)) {
				t.Errorf("value.claims = %v", c)
			}
			if tok.Value() != tok.Value() {
				t.Error("Value() is rebuilt per call")
			}
		})
	}
}

// --- attacks and every error code ---

func TestVerifyAttacks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := newTestClock()
	rsaPub := &rsaKeyA().PublicKey
	rsaPEM := pemOf(t, rsaPub)
	jwksFile := writeFile(t, dir, "keys.json", jwksOf(t,
		jwkOf(t, "a", "", rsaPub),
		jwkOf(t, "ec", "", &ecKeyA().PublicKey),
		jwkOf(t, "rs-only", "RS256", &rsaKeyB().PublicKey),
	))
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, Audiences: []string{"api"}, PublicKeyFile: writeFile(t, dir, "a.pem", rsaPEM),
			Algorithms: []string{"RS256", "ES256"}},
		{Issuer: "strict", Algorithms: []string{"RS256"}, JWKSFile: jwksFile},
		{Issuer: "jwks", Algorithms: []string{"RS256", "PS256", "ES256"}, JWKSFile: jwksFile},
	}})
	rs256 := func(c jwt.MapClaims) string { return testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", c) }
	valid := rs256(claims(clock, nil))
	parts := strings.Split(valid, ".")
	header, _ := base64.RawURLEncoding.DecodeString(parts[0])
	payloadJSON := func(c jwt.MapClaims) string {
		b, _ := json.Marshal(c)
		return string(b)
	}
	hmacWithPublicKey := func() string {
		return testutil.MintJWT(t, jwt.SigningMethodHS256, rsaPEM, "", claims(clock, nil))
	}
	tampered := func() string {
		c := claims(clock, nil)
		c["sub"] = "admin"
		return parts[0] + "." + b64([]byte(payloadJSON(c))) + "." + parts[2]
	}
	tests := map[string]struct {
		raw  string
		want token.TokenError
	}{
		"valid":                        {valid, ""},
		"alg none":                     {craft(`{"alg":"none","typ":"JWT"}`, payloadJSON(claims(clock, nil)), nil), token.TokenUnsupportedAlgorithm},
		"alg none with a signature":    {craft(`{"alg":"none"}`, payloadJSON(claims(clock, nil)), []byte("x")), token.TokenUnsupportedAlgorithm},
		"alg None":                     {craft(`{"alg":"None"}`, payloadJSON(claims(clock, nil)), nil), token.TokenUnsupportedAlgorithm},
		"HS256 with public key secret": {hmacWithPublicKey(), token.TokenUnsupportedAlgorithm},
		"RS384 off the allow-list":     {testutil.MintJWT(t, jwt.SigningMethodRS384, rsaKeyA(), "a", claims(clock, map[string]any{"iss": "strict"})), token.TokenUnsupportedAlgorithm},
		"unknown alg name":             {craft(`{"alg":"XS999"}`, payloadJSON(claims(clock, nil)), []byte("x")), token.TokenUnsupportedAlgorithm},
		"ES256 against an RSA key":     {testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "a", claims(clock, map[string]any{"iss": "jwks"})), token.TokenUnsupportedAlgorithm},
		"ES256 against PEM RSA only":   {testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "", claims(clock, nil)), token.TokenUnsupportedAlgorithm},
		"PS256 against JWK alg RS256":  {testutil.MintJWT(t, jwt.SigningMethodPS256, rsaKeyB(), "rs-only", claims(clock, map[string]any{"iss": "jwks"})), token.TokenUnsupportedAlgorithm},
		"unknown issuer":               {rs256(claims(clock, map[string]any{"iss": "https://evil.example/"})), token.TokenUnknownIssuer},
		"missing iss":                  {rs256(claims(clock, map[string]any{"iss": nil})), token.TokenUnknownIssuer},
		"iss not a string":             {rs256(claims(clock, map[string]any{"iss": 7})), token.TokenUnknownIssuer},
		"unknown issuer and alg none":  {craft(`{"alg":"none"}`, payloadJSON(claims(clock, map[string]any{"iss": "x"})), nil), token.TokenUnknownIssuer},
		"unknown issuer and odd alg":   {craft(`{"alg":"XS999"}`, payloadJSON(claims(clock, map[string]any{"iss": "x"})), nil), token.TokenUnknownIssuer},
		"wrong audience":               {rs256(claims(clock, map[string]any{"aud": "other"})), token.TokenBadAudience},
		"audience array with match":    {rs256(claims(clock, map[string]any{"aud": []string{"x", "api"}})), ""},
		"audience array without match": {rs256(claims(clock, map[string]any{"aud": []string{"x", "y"}})), token.TokenBadAudience},
		"no audience":                  {rs256(claims(clock, map[string]any{"aud": nil})), token.TokenBadAudience},
		"audience a number":            {rs256(claims(clock, map[string]any{"aud": 5})), token.TokenBadAudience},
		"audience array of numbers":    {rs256(claims(clock, map[string]any{"aud": []int{5}})), token.TokenMalformed},
		"expired":                      {rs256(claims(clock, map[string]any{"exp": clock.Ago(time.Hour)})), token.TokenExpired},
		"missing exp":                  {rs256(claims(clock, map[string]any{"exp": nil})), token.TokenExpired},
		"exp not a number":             {rs256(claims(clock, map[string]any{"exp": "tomorrow"})), token.TokenMalformed},
		"expired within leeway":        {rs256(claims(clock, map[string]any{"exp": clock.Ago(20 * time.Second)})), ""},
		"expired beyond leeway":        {rs256(claims(clock, map[string]any{"exp": clock.Ago(40 * time.Second)})), token.TokenExpired},
		"not yet valid":                {rs256(claims(clock, map[string]any{"nbf": clock.In(time.Hour)})), token.TokenNotYetValid},
		"nbf within leeway":            {rs256(claims(clock, map[string]any{"nbf": clock.In(20 * time.Second)})), ""},
		"nbf beyond leeway":            {rs256(claims(clock, map[string]any{"nbf": clock.In(40 * time.Second)})), token.TokenNotYetValid},
		"expired and wrong audience":   {rs256(claims(clock, map[string]any{"exp": clock.Ago(time.Hour), "aud": "x"})), token.TokenExpired},
		"tampered payload":             {tampered(), token.TokenBadSignature},
		"tampered header":              {b64(append(header[:len(header)-1], []byte(`,"x":1}`)...)) + "." + parts[1] + "." + parts[2], token.TokenBadSignature},
		"signature stripped":           {parts[0] + "." + parts[1] + ".", token.TokenBadSignature},
		"other key, same kid":          {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "a", claims(clock, map[string]any{"iss": "jwks"})), token.TokenBadSignature},
		"other key, PEM":               {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "", claims(clock, nil)), token.TokenBadSignature},
		"unknown kid":                  {testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "nope", claims(clock, map[string]any{"iss": "jwks"})), token.TokenUnknownKey},
		"kid not a string":             {craft(`{"alg":"RS256","kid":5}`, payloadJSON(claims(clock, nil)), []byte("x")), token.TokenMalformed},
		"crit header":                  {craft(`{"alg":"RS256","crit":["exp"]}`, payloadJSON(claims(clock, nil)), []byte("x")), token.TokenMalformed},
		"one segment":                  {"abc", token.TokenMalformed},
		"two segments":                 {"abc.def", token.TokenMalformed},
		"four segments":                {valid + ".x", token.TokenMalformed},
		"JWE":                          {"a.b.c.d.e", token.TokenMalformed},
		"bad base64 header":            {"!!!." + parts[1] + "." + parts[2], token.TokenMalformed},
		"bad base64 signature":         {parts[0] + "." + parts[1] + ".!!!", token.TokenMalformed},
		"header not JSON":              {b64([]byte("nope")) + "." + parts[1] + "." + parts[2], token.TokenMalformed},
		"payload not JSON":             {parts[0] + "." + b64([]byte("nope")) + "." + parts[2], token.TokenMalformed},
		"payload an array":             {parts[0] + "." + b64([]byte("[1]")) + "." + parts[2], token.TokenMalformed},
		"no alg":                       {craft(`{"typ":"JWT"}`, payloadJSON(claims(clock, nil)), []byte("x")), token.TokenMalformed},
		"sub not a string":             {rs256(claims(clock, map[string]any{"sub": 1})), token.TokenMalformed},
		"huge":                         {strings.Repeat("a", 70<<10) + ".b.c", token.TokenMalformed},
		"empty":                        {"", token.TokenMissing},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tok := v.Verify(t.Context(), tc.raw)
			expectCode(t, tok, tc.want)
			if !tok.Valid {
				if tok.Claims != nil || tok.Subject != "" || tok.Issuer != "" {
					t.Errorf("invalid token carries data: %+v", tok)
				}
				want := ast.MustParseTerm(fmt.Sprintf(`{"valid": false, "error": %q}`, string(tc.want))).Value
				if tok.Value().Compare(want) != 0 {
					t.Errorf("Value() = %v, want %v", tok.Value(), want)
				}
			}
		})
	}
}

func TestVerifyHeader(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, PublicKeyFile: writeFile(t, t.TempDir(), "a.pem", pemOf(t, &rsaKeyA().PublicKey))},
	}})
	raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, nil))
	tests := map[string]struct {
		header string
		want   token.TokenError
	}{
		"bearer":       {"Bearer " + raw, ""},
		"lower case":   {"bearer " + raw, ""},
		"no header":    {"", token.TokenMissing},
		"basic":        {"Basic dXNlcjpwYXNz", token.TokenMissing},
		"bearer alone": {"Bearer", token.TokenMissing},
		"two tokens":   {"Bearer " + raw + " " + raw, token.TokenMissing},
		"garbage":      {"Bearer garbage", token.TokenMalformed},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			expectCode(t, v.VerifyHeader(t.Context(), tc.header), tc.want)
		})
	}
}

func TestVerifierWithoutIssuers(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now})
	raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, nil))
	expectCode(t, v.Verify(t.Context(), raw), token.TokenUnknownIssuer)
	expectCode(t, v.VerifyHeader(t.Context(), ""), token.TokenMissing)
	if len(v.Status()) != 0 {
		t.Fatalf("Status = %v", v.Status())
	}
	if err := v.Run(canceledContext(t)); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func canceledContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestTokenValueOfHandBuiltTokens(t *testing.T) {
	t.Parallel()
	var nilToken *token.Token
	tests := map[string]struct {
		tok  *token.Token
		want string
	}{
		"nil":     {nilToken, `{"valid": false, "error": "missing"}`},
		"invalid": {&token.Token{Error: token.TokenExpired}, `{"valid": false, "error": "expired"}`},
		"valid": {&token.Token{Valid: true, Issuer: "i", Subject: "s", Claims: map[string]any{"a": json.Number("1")}},
			`{"valid": true, "issuer": "i", "subject": "s", "claims": {"a": 1}, "tenant_binding": "", "trust_token_roles": false}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got, want := tc.tok.Value(), ast.MustParseTerm(tc.want).Value; got.Compare(want) != 0 {
				t.Fatalf("Value() = %v, want %v", got, want)
			}
		})
	}
}

// --- cache ---

func TestVerifyCache(t *testing.T) {
	t.Parallel()
	pemFile := writeFile(t, t.TempDir(), "a.pem", pemOf(t, &rsaKeyA().PublicKey))
	setup := func(t *testing.T, leeway time.Duration, cacheSize int) (*token.Verifier, *testClock, *prometheus.Registry) {
		clock := newTestClock()
		reg := prometheus.NewPedanticRegistry()
		v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Registerer: reg, CacheSize: cacheSize,
			Issuers: []token.IssuerConfig{{Issuer: testIssuer, PublicKeyFile: pemFile, Leeway: leeway}}})
		return v, clock, reg
	}
	hits := func(tb testing.TB, reg *prometheus.Registry) float64 {
		tb.Helper()
		return counter(tb, reg, "gatehouse_token_cache_hits_total", nil)
	}

	t.Run("hit returns the same result without re-verifying", func(t *testing.T) {
		t.Parallel()
		v, clock, reg := setup(t, 0, 0)
		raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, nil))
		first := v.Verify(t.Context(), raw)
		expectCode(t, first, "")
		for range 5 {
			if again := v.Verify(t.Context(), raw); again != first {
				t.Fatal("cache hit returned another result")
			}
		}
		if got := hits(t, reg); got != 5 {
			t.Fatalf("cache hits = %v, want 5", got)
		}
		if got := counter(t, reg, "gatehouse_token_verifications_total", map[string]string{"result": "valid"}); got != 6 {
			t.Fatalf("valid verifications = %v, want 6", got)
		}
	})
	t.Run("never at or past exp", func(t *testing.T) {
		t.Parallel()
		v, clock, reg := setup(t, time.Nanosecond, 0)
		raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, map[string]any{"exp": clock.In(time.Minute)}))
		expectCode(t, v.Verify(t.Context(), raw), "")
		clock.Advance(59 * time.Second)
		expectCode(t, v.Verify(t.Context(), raw), "")
		if hits(t, reg) != 1 {
			t.Fatalf("cache hits = %v, want 1", hits(t, reg))
		}
		clock.Advance(time.Second) // now == exp: re-verified (valid for 1ns more), not from the cache
		expectCode(t, v.Verify(t.Context(), raw), "")
		if hits(t, reg) != 1 {
			t.Fatal("token served from the cache at its exp")
		}
		clock.Advance(time.Millisecond)
		expectCode(t, v.Verify(t.Context(), raw), token.TokenExpired)
		if hits(t, reg) != 1 {
			t.Fatal("expired token served from the cache")
		}
	})
	t.Run("leeway is not added for cache use", func(t *testing.T) {
		t.Parallel()
		v, clock, reg := setup(t, 30*time.Second, 0)
		raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, map[string]any{"exp": clock.In(time.Minute)}))
		expectCode(t, v.Verify(t.Context(), raw), "")
		clock.Advance(time.Minute + time.Second)
		expectCode(t, v.Verify(t.Context(), raw), "") // re-verified, within leeway
		expectCode(t, v.Verify(t.Context(), raw), "") // and not cached past exp either
		if hits(t, reg) != 0 {
			t.Fatalf("cache hits = %v, want 0", hits(t, reg))
		}
	})
	t.Run("at most ten minutes", func(t *testing.T) {
		t.Parallel()
		v, clock, reg := setup(t, 0, 0)
		raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, map[string]any{"exp": clock.In(time.Hour)}))
		expectCode(t, v.Verify(t.Context(), raw), "")
		clock.Advance(9 * time.Minute)
		expectCode(t, v.Verify(t.Context(), raw), "")
		clock.Advance(time.Minute)
		expectCode(t, v.Verify(t.Context(), raw), "")
		if hits(t, reg) != 1 {
			t.Fatalf("cache hits = %v, want 1 (entry used past 10 minutes?)", hits(t, reg))
		}
	})
	t.Run("failures are not cached", func(t *testing.T) {
		t.Parallel()
		v, clock, reg := setup(t, 0, 0)
		raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "", claims(clock, nil))
		for range 3 {
			expectCode(t, v.Verify(t.Context(), raw), token.TokenBadSignature)
		}
		if hits(t, reg) != 0 {
			t.Fatalf("cache hits = %v, want 0", hits(t, reg))
		}
		if got := counter(t, reg, "gatehouse_token_verifications_total", map[string]string{"result": "bad_signature"}); got != 3 {
			t.Fatalf("bad_signature count = %v, want 3", got)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		t.Parallel()
		v, clock, reg := setup(t, 0, -1)
		raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, nil))
		a, b := v.Verify(t.Context(), raw), v.Verify(t.Context(), raw)
		expectCode(t, a, "")
		expectCode(t, b, "")
		if a == b || hits(t, reg) != 0 {
			t.Fatal("disabled cache was used")
		}
	})
	t.Run("bounded", func(t *testing.T) {
		t.Parallel()
		v, clock, reg := setup(t, 0, 4)
		var raws []string
		for i := range 10 {
			raws = append(raws, testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, map[string]any{"sub": fmt.Sprint(i)})))
		}
		for _, raw := range raws {
			expectCode(t, v.Verify(t.Context(), raw), "")
		}
		for _, raw := range raws {
			expectCode(t, v.Verify(t.Context(), raw), "")
		}
		if got := hits(t, reg); got > 4 {
			t.Fatalf("cache hits = %v with CacheSize 4", got)
		}
	})
}

// TestVerifyCacheHitDoesNotAllocate is not parallel: AllocsPerRun needs that.
func TestVerifyCacheHitDoesNotAllocate(t *testing.T) {
	clock := newTestClock()
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, PublicKeyFile: writeFile(t, t.TempDir(), "a.pem", pemOf(t, &rsaKeyA().PublicKey))}}})
	raw := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", claims(clock, nil))
	expectCode(t, v.Verify(t.Context(), raw), "")
	ctx := t.Context()
	if n := testing.AllocsPerRun(100, func() { v.Verify(ctx, raw) }); n != 0 {
		t.Fatalf("cache hit allocates %v times", n)
	}
}

// --- JWKS URL: rotation, rate limiting, removal, failures ---

func TestJWKSRotationRefreshesOnUnknownKid(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey)))
	reg := prometheus.NewPedanticRegistry()
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Registerer: reg, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, JWKSURL: srv.URL, JWKSMinRefreshInterval: time.Minute},
	}})
	tokA := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, nil))
	tokB := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "b", claims(clock, nil))
	expectCode(t, v.Verify(t.Context(), tokA), "")
	if srv.hits.Load() != 1 {
		t.Fatalf("hits = %d, want 1 (initial fetch)", srv.hits.Load())
	}

	// The IdP publishes key b: the first token naming kid b triggers a refresh.
	srv.set(jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey), jwkOf(t, "b", "", &rsaKeyB().PublicKey)), http.StatusOK)
	expectCode(t, v.Verify(t.Context(), tokB), "")
	expectCode(t, v.Verify(t.Context(), tokA), "")
	if srv.hits.Load() != 2 {
		t.Fatalf("hits = %d, want 2", srv.hits.Load())
	}
	if st := v.Status(); len(st) != 1 || st[0].KeyCount != 2 || st[0].LastError != "" || st[0].LastRefresh.IsZero() {
		t.Fatalf("Status = %+v", st)
	}
	if got := counter(t, reg, "gatehouse_jwks_refreshes_total", map[string]string{"issuer": testIssuer, "result": "ok"}); got != 2 {
		t.Fatalf("jwks ok refreshes = %v, want 2", got)
	}

	// A kid nobody publishes: one more refresh (rate limit permitting), then unknown_key.
	tokC := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "c", claims(clock, nil))
	expectCode(t, v.Verify(t.Context(), tokC), token.TokenUnknownKey)
	if srv.hits.Load() != 2 {
		t.Fatalf("hits = %d: refresh within the min interval", srv.hits.Load())
	}
	clock.Advance(time.Minute)
	expectCode(t, v.Verify(t.Context(), testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "c", claims(clock, nil))), token.TokenUnknownKey)
	if srv.hits.Load() != 3 {
		t.Fatalf("hits = %d, want 3 (refresh after the min interval)", srv.hits.Load())
	}
}

func TestJWKSRateLimitUnderFlood(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey)))
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, JWKSURL: srv.URL},
	}})
	c := claims(clock, nil)
	var toks []string
	for range 100 {
		toks = append(toks, testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), rand.Text(), c))
	}
	var wg sync.WaitGroup
	for _, raw := range toks {
		wg.Go(func() {
			if tok := v.Verify(t.Context(), raw); tok.Error != token.TokenUnknownKey {
				t.Errorf("random kid: %v %q, want unknown_key", tok.Valid, tok.Error)
			}
		})
	}
	wg.Wait()
	if h := srv.hits.Load(); h > 2 {
		t.Fatalf("flood of 100 unknown kids caused %d fetches (1 initial + at most 1)", h)
	}
}

func TestJWKSKeyRemovalInvalidatesCache(t *testing.T) {
	t.Parallel()
	t.Run("refresh on unknown kid", func(t *testing.T) {
		t.Parallel()
		clock := newTestClock()
		srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey)))
		reg := prometheus.NewPedanticRegistry()
		v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Registerer: reg, Issuers: []token.IssuerConfig{
			{Issuer: testIssuer, JWKSURL: srv.URL},
		}})
		tokA := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, nil))
		expectCode(t, v.Verify(t.Context(), tokA), "")
		expectCode(t, v.Verify(t.Context(), tokA), "")
		if counter(t, reg, "gatehouse_token_cache_hits_total", nil) != 1 {
			t.Fatal("token a not cached")
		}
		// Key a is compromised: the IdP drops it and publishes b.
		srv.set(jwksOf(t, jwkOf(t, "b", "", &rsaKeyB().PublicKey)), http.StatusOK)
		tokB := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "b", claims(clock, nil))
		expectCode(t, v.Verify(t.Context(), tokB), "")
		expectCode(t, v.Verify(t.Context(), tokA), token.TokenUnknownKey)
	})
	t.Run("periodic refresh by Run", func(t *testing.T) {
		t.Parallel()
		clock := newTestClock()
		keyC := &rsaKeyB().PublicKey
		srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey), jwkOf(t, "c", "", keyC)))
		v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
			{Issuer: testIssuer, JWKSURL: srv.URL, JWKSRefreshInterval: 10 * time.Millisecond},
		}})
		tokA := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, nil))
		expectCode(t, v.Verify(t.Context(), tokA), "")

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- v.Run(ctx) }()
		srv.set(jwksOf(t, jwkOf(t, "c", "", keyC)), http.StatusOK)
		deadline := time.Now().Add(10 * time.Second)
		for v.Verify(t.Context(), tokA).Valid {
			if time.Now().After(deadline) {
				t.Fatal("token signed by a removed key still valid")
			}
			time.Sleep(5 * time.Millisecond)
		}
		expectCode(t, v.Verify(t.Context(), tokA), token.TokenUnknownKey)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	})
}

func TestJWKSServerFailureKeepsLastGoodKeys(t *testing.T) {
	t.Parallel()
	good := func(t *testing.T) []byte { return jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey)) }
	failures := map[string]func(t *testing.T, s *jwksServer){
		"status 500":     func(t *testing.T, s *jwksServer) { s.set([]byte("oops"), http.StatusInternalServerError) },
		"not JSON":       func(t *testing.T, s *jwksServer) { s.set([]byte("<html>"), http.StatusOK) },
		"no usable keys": func(t *testing.T, s *jwksServer) { s.set([]byte(`{"keys":[{"kty":"oct","k":"AA"}]}`), http.StatusOK) },
		"over 1 MiB": func(t *testing.T, s *jwksServer) {
			s.set(append(good(t)[:len(good(t))-1], []byte(`,"pad":"`+strings.Repeat("x", 1<<20)+`"}`)...), http.StatusOK)
		},
		"server gone": func(t *testing.T, s *jwksServer) { s.Close() },
	}
	for name, fail := range failures {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clock := newTestClock()
			srv := newJWKSServer(t, good(t))
			reg := prometheus.NewPedanticRegistry()
			v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Registerer: reg, CacheSize: -1,
				Issuers: []token.IssuerConfig{{Issuer: testIssuer, JWKSURL: srv.URL}}})
			tokA := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, nil))
			expectCode(t, v.Verify(t.Context(), tokA), "")

			fail(t, srv)
			// An unknown kid forces a refresh, which fails.
			expectCode(t, v.Verify(t.Context(), testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "zz", claims(clock, nil))), token.TokenUnknownKey)
			st := v.Status()
			if len(st) != 1 || st[0].KeyCount != 1 || st[0].LastError == "" {
				t.Fatalf("Status = %+v, want 1 key and an error", st)
			}
			expectCode(t, v.Verify(t.Context(), tokA), "")
			if got := counter(t, reg, "gatehouse_jwks_refreshes_total", map[string]string{"result": "error"}); got != 1 {
				t.Fatalf("jwks error refreshes = %v, want 1", got)
			}
		})
	}
}

func TestJWKSInitialFetchFailureIsNotFatal(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	srv := newJWKSServer(t, []byte("down"))
	srv.set([]byte("down"), http.StatusServiceUnavailable)
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, JWKSURL: srv.URL},
	}})
	st := v.Status()
	if len(st) != 1 || st[0].KeyCount != 0 || !strings.Contains(st[0].LastError, "503") || !st[0].LastRefresh.IsZero() {
		t.Fatalf("Status = %+v", st)
	}
	tokA := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, nil))
	expectCode(t, v.Verify(t.Context(), tokA), token.TokenUnknownKey)

	// The IdP comes back; keys are fetched on demand.
	srv.set(jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey)), http.StatusOK)
	clock.Advance(10 * time.Second)
	expectCode(t, v.Verify(t.Context(), tokA), "")
	if st := v.Status(); st[0].KeyCount != 1 || st[0].LastError != "" {
		t.Fatalf("Status = %+v", st)
	}
}

func TestVerifyConcurrentWithRefreshes(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey), jwkOf(t, "e", "", &ecKeyA().PublicKey)))
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, CacheSize: 8, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, JWKSURL: srv.URL, JWKSRefreshInterval: time.Millisecond, JWKSMinRefreshInterval: time.Nanosecond},
	}})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = v.Run(ctx) }()
	var toks []string
	for i := range 20 {
		c := claims(clock, map[string]any{"sub": fmt.Sprint(i)})
		toks = append(toks, testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", c), testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "e", c))
	}
	sets := [][]byte{
		jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey), jwkOf(t, "e", "", &ecKeyA().PublicKey), jwkOf(t, "x", "", &rsaKeyB().PublicKey)),
		jwksOf(t, jwkOf(t, "e", "", &ecKeyA().PublicKey), jwkOf(t, "a", "", &rsaKeyA().PublicKey)),
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				raw := toks[(g*7+i)%len(toks)]
				tok := v.Verify(ctx, raw)
				if !tok.Valid {
					t.Errorf("token %d: %s", (g*7+i)%len(toks), tok.Error)
					return
				}
				_ = tok.Value()
				if g == 0 && i%20 == 0 {
					// Change the key set (add or drop x) to force cache invalidations.
					srv.set(sets[(i/20)%2], http.StatusOK)
				}
				if i%50 == 0 {
					_ = v.Status()
				}
			}
		})
	}
	wg.Wait()
}

func TestVerifierMetricsShareARegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	clock := newTestClock()
	pemFile := writeFile(t, t.TempDir(), "a.pem", pemOf(t, &rsaKeyA().PublicKey))
	cfg := token.VerifierConfig{Now: clock.Now, Registerer: reg,
		Issuers: []token.IssuerConfig{{Issuer: testIssuer, PublicKeyFile: pemFile}}}
	v1, v2 := newVerifier(t, cfg), newVerifier(t, cfg)
	v1.VerifyHeader(t.Context(), "")
	v2.VerifyHeader(t.Context(), "Basic x")
	if got := counter(t, reg, "gatehouse_token_verifications_total", map[string]string{"result": "missing"}); got != 2 {
		t.Fatalf("missing = %v, want 2", got)
	}
}

func TestJWKSRunRetriesSoonerAfterFailure(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t, nil)
	srv.set([]byte("down"), http.StatusBadGateway)
	v := newVerifier(t, token.VerifierConfig{Issuers: []token.IssuerConfig{{Issuer: testIssuer, JWKSURL: srv.URL,
		JWKSRefreshInterval: time.Hour, JWKSMinRefreshInterval: 5 * time.Millisecond}}})
	if st := v.Status(); st[0].LastError == "" {
		t.Fatalf("Status = %+v, want an error", st)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = v.Run(ctx) }()
	time.Sleep(20 * time.Millisecond)
	srv.set(jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey)), http.StatusOK)
	deadline := time.Now().Add(10 * time.Second)
	for v.Status()[0].KeyCount != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("Run did not retry within 10s (refresh interval 1h): %+v", v.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLogsNeverHoldTokens(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	var buf syncBuffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "a", "", &rsaKeyA().PublicKey)))
	v, err := token.NewVerifier(token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, JWKSURL: srv.URL, Audiences: []string{"api"}}}}, logger)
	if err != nil {
		t.Fatal(err)
	}
	toks := []string{
		testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, nil)),
		testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyB(), "a", claims(clock, nil)),
		testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "zz", claims(clock, nil)),
		testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, map[string]any{"aud": "x"})),
		testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "a", claims(clock, map[string]any{"exp": clock.Ago(time.Hour)})),
		"garbage-header.garbage-payload.garbage-signature",
	}
	for _, raw := range toks {
		v.VerifyHeader(t.Context(), "Bearer "+raw)
	}
	out := buf.String()
	if !strings.Contains(out, "token rejected") {
		t.Fatalf("expected debug logs of rejections, got:\n%s", out)
	}
	for _, raw := range toks {
		for _, part := range strings.Split(raw, ".") {
			if len(part) >= 8 && strings.Contains(out, part) {
				t.Fatalf("log holds a token segment %q:\n%s", part, out)
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestVerifyClaimBounds: every NumericDate (exp, nbf, iat) is a finite
// number in [0, 9999-12-31T23:59:59Z] and sub is a non-empty string, or the
// token is malformed, whatever the key type and the issuer's settings. An
// nbf of 1e19 used to wrap to a date in the past and pass.
func TestVerifyClaimBounds(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := newTestClock()
	const maxDate = 253402300799
	v := newVerifier(t, token.VerifierConfig{Now: clock.Now, Issuers: []token.IssuerConfig{
		{Issuer: testIssuer, Audiences: []string{"api"}, PublicKeyFile: writeFile(t, dir, "rsa.pem", pemOf(t, &rsaKeyA().PublicKey))},
		{Issuer: "https://roles.example.com/", Audiences: []string{"api"}, TrustTokenRoles: true, Tenant: "acme",
			PublicKeyFile: writeFile(t, dir, "ec.pem", pemOf(t, &ecKeyA().PublicKey))},
	}})
	signers := map[string]func(jwt.MapClaims) string{
		"RS256": func(c jwt.MapClaims) string { return testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKeyA(), "", c) },
		"ES256 trust_token_roles": func(c jwt.MapClaims) string {
			c["iss"] = "https://roles.example.com/"
			c["authorization"] = map[string]any{"acme": map[string]any{"roles": []string{"admin"}}}
			return testutil.MintJWT(t, jwt.SigningMethodES256, ecKeyA(), "", c)
		},
	}
	// raw JSON numbers, as a hostile issuer (or a forged-but-signed token)
	// could write them
	num := func(s string) json.Number { return json.Number(s) }
	tests := map[string]struct {
		extra map[string]any
		want  token.TokenError
	}{
		"valid":                  {nil, ""},
		"nbf 1e19":               {map[string]any{"nbf": 1e19}, token.TokenMalformed},
		"nbf 9.3e18 (int64 max)": {map[string]any{"nbf": num("9223372036854775807")}, token.TokenMalformed},
		"nbf 2^64":               {map[string]any{"nbf": num("18446744073709551616")}, token.TokenMalformed},
		"nbf 1e400 (infinite)":   {map[string]any{"nbf": num("1e400")}, token.TokenMalformed},
		"nbf -1":                 {map[string]any{"nbf": -1}, token.TokenMalformed},
		"nbf -1e19":              {map[string]any{"nbf": -1e19}, token.TokenMalformed},
		"nbf 0":                  {map[string]any{"nbf": 0}, ""},
		"nbf null":               {map[string]any{"nbf": json.RawMessage("null")}, token.TokenMalformed},
		"exp 1e19":               {map[string]any{"exp": 1e19}, token.TokenMalformed},
		"exp -1":                 {map[string]any{"exp": -1}, token.TokenMalformed},
		"exp -1e19":              {map[string]any{"exp": -1e19}, token.TokenMalformed},
		"exp 1e400":              {map[string]any{"exp": num("1e400")}, token.TokenMalformed},
		"exp max+1":              {map[string]any{"exp": maxDate + 1}, token.TokenMalformed},
		"exp max":                {map[string]any{"exp": maxDate}, ""},
		"exp fractional":         {map[string]any{"exp": float64(clock.In(time.Hour)) + 0.5}, ""},
		"exp a string":           {map[string]any{"exp": "2099-01-01"}, token.TokenMalformed},
		"iat 1e19":               {map[string]any{"iat": 1e19}, token.TokenMalformed},
		"iat -5":                 {map[string]any{"iat": -5}, token.TokenMalformed},
		"iat max+1":              {map[string]any{"iat": maxDate + 1}, token.TokenMalformed},
		"iat in the future":      {map[string]any{"iat": clock.In(time.Hour)}, ""},
		"iat a string":           {map[string]any{"iat": "yesterday"}, token.TokenMalformed},
		"no sub":                 {map[string]any{"sub": nil}, token.TokenMalformed},
		"empty sub":              {map[string]any{"sub": ""}, token.TokenMalformed},
		"sub null":               {map[string]any{"sub": json.RawMessage("null")}, token.TokenMalformed},
		"sub an array":           {map[string]any{"sub": []string{"u1"}}, token.TokenMalformed},
	}
	for signer, sign := range signers {
		for name, tc := range tests {
			t.Run(signer+"/"+name, func(t *testing.T) {
				t.Parallel()
				tok := v.Verify(t.Context(), sign(claims(clock, tc.extra)))
				expectCode(t, tok, tc.want)
				if tc.want == "" && tok.Subject != "u1" {
					t.Errorf("subject %q, want u1", tok.Subject)
				}
			})
		}
	}
}
