package token_test

// Fuzz targets of token verification: the compact JWT string as it arrives
// (FuzzVerifyToken), and the claim values of tokens signed with a real key
// (FuzzTokenClaims). The property is the one that matters: a token verifies
// only if every rule holds, re-checked here independently of golang-jwt —
// signature by the issuer's key with an allowed algorithm, iss, aud, a
// numeric exp not past and a numeric nbf not ahead (beyond the leeway), a
// non-empty string sub, registered claims of their registered types.

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math"
	"math/big"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

const (
	fuzzIssuer = "https://idp.fuzz.test/"
	fuzzLeeway = 30 * time.Second
)

// fuzzNow is the verifier's clock: tokens are judged at a fixed instant.
var fuzzNow = time.Unix(1_800_000_000, 0)

// fuzzVerifier trusts one RSA and one EC key of fuzzIssuer (RS256, ES256),
// audience "api", the default leeway.
func fuzzVerifier(tb testing.TB) (*token.Verifier, *rsa.PrivateKey, *ecdsa.PrivateKey) {
	tb.Helper()
	rk, ek := testutil.RSAKey(tb, "fuzz-rsa"), testutil.ECKey(tb, "fuzz-ec")
	dir := tb.TempDir()
	pem := string(testutil.PublicKeyPEM(tb, &rk.PublicKey)) + string(testutil.PublicKeyPEM(tb, &ek.PublicKey))
	testutil.WriteFile(tb, filepath.Join(dir, "keys.pem"), pem)
	v, err := token.NewVerifier(token.VerifierConfig{
		Issuers: []token.IssuerConfig{{Issuer: fuzzIssuer, Audiences: []string{"api"}, Algorithms: []string{"RS256", "ES256"},
			PublicKeyFile: filepath.Join(dir, "keys.pem"), Leeway: fuzzLeeway}},
		Now: func() time.Time { return fuzzNow },
	}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return v, rk, ek
}

// fuzzB64 decodes a JWS segment, tolerating padding (whatever the verifier
// accepted must decode here too).
func fuzzB64(s string) ([]byte, bool) {
	if b, err := base64.RawURLEncoding.DecodeString(s); err == nil {
		return b, true
	}
	b, err := base64.URLEncoding.DecodeString(s)
	return b, err == nil
}

// claimViolations re-checks the claim rules on a JSON payload; slack widens
// the time bounds (golang-jwt truncates NumericDates to whole seconds), so
// a violation reported here is one beyond any rounding.
func claimViolations(payload []byte, slack time.Duration) []string {
	var out []string
	if !json.Valid(payload) {
		return []string{"payload is not exactly one JSON value"}
	}
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return []string{"payload is not a JSON object"}
	}
	if iss, ok := claims["iss"].(string); !ok || iss != fuzzIssuer {
		out = append(out, "iss is not the issuer")
	}
	switch aud := claims["aud"].(type) {
	case string:
		if aud != "api" {
			out = append(out, "aud is not api")
		}
	case []any:
		found := false
		for _, a := range aud {
			s, ok := a.(string)
			if !ok {
				out = append(out, "aud holds a non-string")
			}
			found = found || s == "api"
		}
		if !found {
			out = append(out, "aud does not hold api")
		}
	default:
		out = append(out, "aud is missing or not a string or list")
	}
	if sub, ok := claims["sub"].(string); !ok || sub == "" {
		out = append(out, "sub is missing, empty or not a string")
	}
	now := float64(fuzzNow.Unix())
	lw := fuzzLeeway.Seconds()
	exp, ok := numericDate(claims["exp"])
	switch {
	case !ok:
		out = append(out, "exp is missing or not a finite number")
	case exp+lw+slack.Seconds() <= now:
		out = append(out, "exp is past beyond the leeway")
	}
	if v, present := claims["nbf"]; present {
		nbf, ok := numericDate(v)
		switch {
		case !ok:
			out = append(out, "nbf is not a finite number")
		case nbf-lw-slack.Seconds() > now:
			out = append(out, "nbf is ahead beyond the leeway")
		}
	}
	if v, present := claims["iat"]; present {
		if _, ok := numericDate(v); !ok {
			out = append(out, "iat is not a finite number")
		}
	}
	return out
}

// numericDate reads a JSON number as seconds (RFC 7519 NumericDate).
func numericDate(v any) (float64, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false
	}
	return f, true
}

// checkValidToken fails when a token the verifier accepted breaks a rule:
// its header, signature (re-verified with crypto/rsa or crypto/ecdsa) and
// claims.
func checkValidToken(t *testing.T, tok *token.Token, raw string, rk *rsa.PrivateKey, ek *ecdsa.PrivateKey) {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("verified a token of %d segments", len(parts))
	}
	hb, ok1 := fuzzB64(parts[0])
	pb, ok2 := fuzzB64(parts[1])
	sig, ok3 := fuzzB64(parts[2])
	if !ok1 || !ok2 || !ok3 {
		t.Fatalf("verified a token whose segments are not base64url")
	}
	var header map[string]any
	if err := json.Unmarshal(hb, &header); err != nil {
		t.Fatalf("verified a token whose header is not a JSON object: %v", err)
	}
	if _, crit := header["crit"]; crit {
		t.Fatalf("verified a token with a crit header")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	switch alg, _ := header["alg"].(string); alg {
	case "RS256":
		if err := rsa.VerifyPKCS1v15(&rk.PublicKey, 5 /* crypto.SHA256 */, digest[:], sig); err != nil {
			t.Fatalf("verified an RS256 token whose signature does not verify: %v", err)
		}
	case "ES256":
		if len(sig) != 64 || !ecdsa.Verify(&ek.PublicKey, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			t.Fatalf("verified an ES256 token whose signature does not verify")
		}
	default:
		t.Fatalf("verified a token with alg %q (allow-list: RS256, ES256)", alg)
	}
	if v := claimViolations(pb, time.Second); len(v) > 0 {
		t.Fatalf("verified a token that breaks rules: %s\npayload: %s", strings.Join(v, "; "), pb)
	}
	var claims map[string]any
	_ = json.Unmarshal(pb, &claims)
	if tok.Subject != claims["sub"] || tok.Issuer != claims["iss"] {
		t.Fatalf("verified subject/issuer %q/%q differ from the payload's %v/%v", tok.Subject, tok.Issuer, claims["sub"], claims["iss"])
	}
}

var fuzzTokenCodes = []token.TokenError{token.TokenMissing, token.TokenMalformed, token.TokenUnknownIssuer,
	token.TokenUnsupportedAlgorithm, token.TokenUnknownKey, token.TokenBadSignature, token.TokenExpired,
	token.TokenNotYetValid, token.TokenBadAudience}

// checkToken checks the result's own consistency, then the rules when it
// is valid.
func checkToken(t *testing.T, tok *token.Token, raw string, rk *rsa.PrivateKey, ek *ecdsa.PrivateKey) {
	t.Helper()
	if tok == nil {
		t.Fatal("Verify returned nil")
	}
	if !tok.Valid {
		if !slices.Contains(fuzzTokenCodes, tok.Error) {
			t.Fatalf("invalid token with code %q, not one of SPEC §3", tok.Error)
		}
		return
	}
	if tok.Error != "" {
		t.Fatalf("valid token with error code %q", tok.Error)
	}
	checkValidToken(t, tok, raw, rk, ek)
}

// FuzzVerifyToken fuzzes the compact token string. Properties: no panic;
// every answer is valid or one of SPEC §3's codes; a valid answer only for
// a token whose signature, header and claims pass the independent checks.
func FuzzVerifyToken(f *testing.F) {
	v, rk, ek := fuzzVerifier(f)
	claims := func(extra map[string]any) jwt.MapClaims {
		c := testutil.Claims(fuzzIssuer, "alice", extra)
		c["iat"], c["exp"] = fuzzNow.Add(-time.Minute).Unix(), fuzzNow.Add(time.Hour).Unix()
		return c
	}
	rs := testutil.MintJWT(f, jwt.SigningMethodRS256, rk, "", claims(nil))
	es := testutil.MintJWT(f, jwt.SigningMethodES256, ek, "k1", claims(map[string]any{"nbf": fuzzNow.Unix()}))
	for _, s := range []string{
		rs, es,
		testutil.MintJWT(f, jwt.SigningMethodRS256, rk, "", claims(map[string]any{"exp": fuzzNow.Add(-time.Hour).Unix()})),
		testutil.MintJWT(f, jwt.SigningMethodES256, ek, "", claims(map[string]any{"aud": []string{"x", "api"}})),
		testutil.MintJWT(f, jwt.SigningMethodHS256, []byte("secret"), "", claims(nil)),
		testutil.CraftJWT(f, map[string]any{"alg": "none"}, claims(nil), nil),
		testutil.CraftJWT(f, map[string]any{"alg": "RS256", "crit": []string{"x"}}, claims(nil), []byte("sig")),
		rs[:strings.LastIndexByte(rs, '.')] + ".", // signature cut
		rs + "=",
		strings.Replace(rs, ".", "..", 1),
		"a.b.c", "....", "", "e30.e30.", "eyJhbGciOiJSUzI1NiJ9.bnVsbA.AA",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		tok := v.Verify(t.Context(), raw)
		checkToken(t, tok, raw, rk, ek)
		// the header form reaches the same verification
		if !strings.ContainsAny(raw, " \t\r\n") {
			h := v.VerifyHeader(t.Context(), "Bearer "+raw)
			if h.Valid != tok.Valid || h.Error != tok.Error {
				t.Fatalf("VerifyHeader (%v %q) and Verify (%v %q) disagree", h.Valid, h.Error, tok.Valid, tok.Error)
			}
		}
	})
}

// FuzzTokenClaims signs fuzzed claim values with the issuer's real EC key:
// exp, nbf and iat as raw JSON (numbers of any size or precision, strings,
// null, objects), sub, aud and iss as raw JSON, plus extra raw members. An
// empty argument leaves the claim out. Properties: no panic; a token
// verifies only if every claim rule holds; a token whose claims clearly
// hold (well inside the time bounds) verifies.
func FuzzTokenClaims(f *testing.F) {
	v, rk, ek := fuzzVerifier(f)
	now := fuzzNow.Unix()
	n := func(d time.Duration) string { return strconv.FormatInt(now+int64(d/time.Second), 10) }
	good := `"` + fuzzIssuer + `"`
	f.Add(n(time.Hour), "", n(-time.Minute), `"alice"`, `"api"`, good, "")
	f.Add(n(time.Hour), n(-time.Hour), "", `"alice"`, `["x","api"]`, good, `"tenant":"acme"`)
	f.Add(n(-time.Hour), "", "", `"alice"`, `"api"`, good, "")
	f.Add(n(-29*time.Second), "", "", `"alice"`, `"api"`, good, "")
	f.Add(n(time.Hour), n(29*time.Second), "", `"alice"`, `"api"`, good, "")
	f.Add(n(time.Hour), n(time.Hour), "", `"alice"`, `"api"`, good, "")
	f.Add("", "", "", `"alice"`, `"api"`, good, "")
	f.Add(`"`+n(time.Hour)+`"`, "", "", `"alice"`, `"api"`, good, "")
	f.Add(n(time.Hour)+".999", "", `"yesterday"`, `"alice"`, `"api"`, good, "")
	f.Add("1e400", "", "", `"alice"`, `"api"`, good, "")
	f.Add("1e20", "", "", `"alice"`, `"api"`, good, "")
	f.Add(n(time.Hour), "1e20", "", `"alice"`, `"api"`, good, "")
	f.Add(n(time.Hour), "-1e20", "", `"alice"`, `"api"`, good, "")
	f.Add(n(time.Hour), "", "", `""`, `"api"`, good, "")
	f.Add(n(time.Hour), "", "", "", `"api"`, good, "")
	f.Add(n(time.Hour), "", "", `123`, `"api"`, good, "")
	f.Add(n(time.Hour), "", "", `"alice"`, `["api",1]`, good, "")
	f.Add(n(time.Hour), "", "", `"alice"`, `"api"`, `"https://other/"`, "")
	f.Add(n(time.Hour), "", "", `"alice"`, `"api"`, good, `"sub":"bob"`)
	f.Add(n(time.Hour), "", "", `"alice"`, `"api"`, good, `"x":1} {"y":2`)
	f.Add(n(time.Hour), "null", "null", `"alice"`, `"api"`, good, `"x":{"y":[1,2]}} trailing`)

	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT"}`))
	f.Fuzz(func(t *testing.T, exp, nbf, iat, sub, aud, iss, extra string) {
		var members []string
		for _, m := range [][2]string{{"exp", exp}, {"nbf", nbf}, {"iat", iat}, {"sub", sub}, {"aud", aud}, {"iss", iss}} {
			if m[1] != "" {
				members = append(members, `"`+m[0]+`":`+m[1])
			}
		}
		if extra != "" {
			members = append(members, extra)
		}
		payload := []byte("{" + strings.Join(members, ",") + "}")
		signing := header + "." + base64.RawURLEncoding.EncodeToString(payload)
		sig, err := jwt.SigningMethodES256.Sign(signing, ek)
		if err != nil {
			t.Fatal(err)
		}
		raw := signing + "." + base64.RawURLEncoding.EncodeToString(sig)
		tok := v.Verify(t.Context(), raw)
		checkToken(t, tok, raw, rk, ek)
		if !tok.Valid && clearlyValid(payload) {
			t.Fatalf("refused (%s) a token whose claims clearly hold: %s", tok.Error, payload)
		}
	})
}

// clearlyValid: the rules hold with ten seconds to spare on every time
// bound, dates are integers of ordinary size, and no other member than the
// registered ones is present (so no unknown rule can apply).
func clearlyValid(payload []byte) bool {
	if len(claimViolations(payload, -10*time.Second)) > 0 {
		return false
	}
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.UseNumber()
	var claims map[string]any
	if dec.Decode(&claims) != nil {
		return false
	}
	for k, v := range claims {
		switch k {
		case "exp", "nbf", "iat":
			n, ok := v.(json.Number)
			if !ok {
				return false
			}
			i, err := strconv.ParseInt(string(n), 10, 64)
			if err != nil || i < 0 || i > 1<<35 {
				return false
			}
		case "iss", "sub", "aud":
		default:
			return false
		}
	}
	return true
}
