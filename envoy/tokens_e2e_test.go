package envoy_test

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// exposeToken denies every request with input.token as the body, so a test
// sees exactly what a policy sees.
const exposeToken = `package envoy.authz
allow := {"allowed": false, "http_status": 401, "body": json.marshal(input.token)}
`

// TestTokenAttacksThroughCheck sends forged, expired and otherwise invalid
// tokens through a real Check and reads the verdict the policy receives in
// input.token; no token text may reach the logs.
func TestTokenAttacksThroughCheck(t *testing.T) {
	t.Parallel()
	const (
		issuer       = "https://idp.example.com/"
		tenantIssuer = "https://acme.idp.example.com/"
	)
	rsaKey, ecKey := testutil.RSAKey(t, "attack-rsa"), testutil.ECKey(t, "attack-ec")
	rogue := testutil.RSAKey(t, "attack-rogue") // in no JWKS
	acmeKey := testutil.RSAKey(t, "attack-acme")
	idp := testutil.NewJWKSServer(t,
		testutil.JWK(t, "rsa-1", "RS256", &rsaKey.PublicKey),
		testutil.JWK(t, "ec-1", "ES256", &ecKey.PublicKey))
	pemDir := testutil.PolicyDir(t, map[string]string{"acme.pem": string(testutil.PublicKeyPEM(t, &acmeKey.PublicKey))})
	issuers := []token.IssuerConfig{
		{Issuer: issuer, Audiences: []string{"api"}, JWKSURL: idp.URL, JWKSMinRefreshInterval: time.Millisecond},
		{Issuer: tenantIssuer, Audiences: []string{"api"}, PublicKeyFile: filepath.Join(pemDir, "acme.pem"), Tenant: "acme"},
	}

	claims := func(extra map[string]any) jwt.MapClaims {
		return testutil.Claims(issuer, "alice", extra)
	}
	valid := testutil.MintJWT(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", claims(map[string]any{"tenant": "acme", "roles": []string{"reader"}}))
	parts := strings.Split(valid, ".")
	tamperedPayload, _ := json.Marshal(claims(map[string]any{"sub": "admin"}))
	pubPEM := testutil.PublicKeyPEM(t, &rsaKey.PublicKey)

	tests := map[string]struct {
		authorization string
		wantError     string         // "" for a valid token
		wantClaims    map[string]any // checked for valid tokens
		wantBinding   string
	}{
		"no header":     {authorization: "", wantError: "missing"},
		"basic scheme":  {authorization: "Basic YWxpY2U6c2VjcmV0", wantError: "missing"},
		"bearer alone":  {authorization: "Bearer", wantError: "missing"},
		"not a JWT":     {authorization: "Bearer not-a-jwt", wantError: "malformed"},
		"garbage parts": {authorization: "Bearer a.b.c", wantError: "malformed"},
		"alg none": {authorization: "Bearer " + testutil.CraftJWT(t,
			map[string]any{"alg": "none", "typ": "JWT"}, claims(nil), nil), wantError: "unsupported_algorithm"},
		"HS256 keyed with the RSA public key": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodHS256, pubPEM, "rsa-1", claims(nil)), wantError: "unsupported_algorithm"},
		"unknown issuer": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rsaKey, "rsa-1", testutil.Claims("https://evil.example.com/", "alice", nil)), wantError: "unknown_issuer"},
		"wrong audience": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rsaKey, "rsa-1", claims(map[string]any{"aud": "billing"})), wantError: "bad_audience"},
		"expired": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rsaKey, "rsa-1", claims(map[string]any{"exp": time.Now().Add(-time.Hour).Unix()})), wantError: "expired"},
		"no exp": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rsaKey, "rsa-1", claims(map[string]any{"exp": nil})), wantError: "expired"},
		"not yet valid": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rsaKey, "rsa-1", claims(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()})), wantError: "not_yet_valid"},
		"tampered payload": {authorization: "Bearer " + parts[0] + "." + base64.RawURLEncoding.EncodeToString(tamperedPayload) + "." + parts[2],
			wantError: "bad_signature"},
		"signed by a rogue key under a known kid": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rogue, "rsa-1", claims(nil)), wantError: "bad_signature"},
		"unknown kid": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rogue, "rsa-rogue", claims(nil)), wantError: "unknown_key"},
		"valid RS256": {authorization: "Bearer " + valid,
			wantClaims: map[string]any{"sub": "alice", "tenant": "acme", "roles": []any{"reader"}, "aud": "api"}},
		"valid ES256, lowercase scheme": {authorization: "bearer " + testutil.MintJWT(t,
			jwt.SigningMethodES256, ecKey, "ec-1", testutil.Claims(issuer, "bob", nil)),
			wantClaims: map[string]any{"sub": "bob"}},
		"tenant-bound issuer": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, acmeKey, "", testutil.Claims(tenantIssuer, "carol", nil)),
			wantClaims: map[string]any{"sub": "carol"}, wantBinding: "acme"},
		"tenant-bound issuer, key of the other issuer": {authorization: "Bearer " + testutil.MintJWT(t,
			jwt.SigningMethodRS256, rsaKey, "rsa-1", testutil.Claims(tenantIssuer, "carol", nil)), wantError: "bad_signature"},
	}
	// Each request is sent twice over gRPC and once over HTTP: at Info level
	// (production) the later ones may be answered from the decision cache,
	// which must not blur one token's verdict into another's.
	run := func(t *testing.T, sc *testutil.Sidecar) {
		for name, tc := range tests {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				req := testutil.Request{Path: "/api"}
				if tc.authorization != "" {
					req.Headers = map[string]string{"authorization": tc.authorization}
				}
				var bodies []string
				for range 2 {
					resp, err := sc.Check(t.Context(), req)
					if err != nil {
						t.Fatalf("Check: %v", err)
					}
					bodies = append(bodies, resp.GetDeniedResponse().GetBody())
					checkToken(t, bodies[len(bodies)-1], tc.wantError, tc.wantClaims, tc.wantBinding, issuer, tenantIssuer)
				}
				h := sc.CheckHTTP(t, t.Context(), req)
				if h.Status != http.StatusUnauthorized || h.Body != bodies[0] || bodies[1] != bodies[0] {
					t.Errorf("HTTP %d %s, gRPC said 401 %q", h.Status, h.Body, bodies)
				}
			})
		}
	}
	t.Run("info", func(t *testing.T) {
		sc := startPolicy(t, exposeToken, testutil.Options{Issuers: issuers})
		t.Run("cases", func(t *testing.T) { run(t, sc) })
		if hits := testutil.MetricValue(t, sc.Registry, "gatehouse_decision_cache_total", map[string]string{"result": "hit"}); hits == 0 {
			t.Error("no decision came from the cache: the production path is untested")
		}
	})
	sc := startPolicy(t, exposeToken, testutil.Options{Issuers: issuers, LogLevel: slog.LevelDebug})
	t.Run("debug", func(t *testing.T) { run(t, sc) })
	if idp.Hits.Load() < 2 {
		t.Errorf("JWKS endpoint fetched %d times; an unknown kid must trigger a refresh", idp.Hits.Load())
	}
	logs := sc.Logs.String()
	if !strings.Contains(logs, `"token rejected"`) || !strings.Contains(logs, `"msg":"decision"`) {
		t.Fatalf("debug logs missing; the leak check below would prove nothing:\n%s", logs)
	}
	for name, tc := range tests {
		raw := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(tc.authorization, "Bearer"), "bearer"))
		if len(raw) < 8 {
			continue
		}
		segs := strings.Split(raw, ".")
		for _, s := range append(segs, raw) {
			if len(s) >= 16 && strings.Contains(logs, s) {
				t.Errorf("%s: token text %.24q... appears in the logs", name, s)
			}
		}
	}
}

func checkToken(tb testing.TB, body, wantError string, wantClaims map[string]any, wantBinding, issuer, tenantIssuer string) {
	tb.Helper()
	var tok map[string]any
	if err := json.Unmarshal([]byte(body), &tok); err != nil {
		tb.Fatalf("input.token %q: %v", body, err)
	}
	if wantError != "" {
		if tok["valid"] != false || tok["error"] != wantError || len(tok) != 2 {
			tb.Errorf("input.token = %s, want {valid: false, error: %q}", body, wantError)
		}
		return
	}
	if tok["valid"] != true || tok["error"] != nil {
		tb.Fatalf("input.token = %s, want valid", body)
	}
	wantIssuer := issuer
	if wantBinding != "" {
		wantIssuer = tenantIssuer
	}
	if tok["issuer"] != wantIssuer || tok["subject"] != wantClaims["sub"] || tok["tenant_binding"] != wantBinding {
		tb.Errorf("input.token = %s, want issuer %q subject %q tenant_binding %q", body, wantIssuer, wantClaims["sub"], wantBinding)
	}
	claims, _ := tok["claims"].(map[string]any)
	for k, want := range wantClaims {
		g, _ := json.Marshal(claims[k])
		w, _ := json.Marshal(want)
		if string(g) != string(w) {
			tb.Errorf("input.token.claims.%s = %s, want %s", k, g, w)
		}
	}
	if _, ok := claims["exp"].(float64); !ok {
		tb.Errorf("input.token.claims.exp = %v, want a number", claims["exp"])
	}
}
