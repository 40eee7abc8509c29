package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const demoWorld = "../../policies/fixtures/tenancy/tenancy.json"

func writeTestFile(tb testing.TB, path, content string) string {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// evalIssuer writes a serve config trusting a fresh key and returns its
// path and a signed token for sub.
func evalIssuer(tb testing.TB, sub string) (config, token string) {
	tb.Helper()
	dir := tb.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	writeTestFile(tb, filepath.Join(dir, "idp.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	config = writeTestFile(tb, filepath.Join(dir, "serve.yaml"), "issuers:\n  - issuer: https://idp.example.com/\n    audiences: [api]\n    public_key_file: idp.pem\n")
	tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss": "https://idp.example.com/", "aud": "api", "sub": sub, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return config, tok
}

func TestEvalCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	config, alice := evalIssuer(t, "alice")
	checkReq := writeTestFile(t, filepath.Join(dir, "check.json"), `{"attributes": {
  "request": {"http": {"method": "GET", "path": "/t/beta/books", "host": "api.example.com",
    "headers": {":path": "/t/beta/books", "authorization": "Bearer `+alice+`", "x-gatehouse-debug": "1"}}},
  "contextExtensions": {"project": "timekeeping", "roles": "accountant"}}}`)
	noToken := writeTestFile(t, filepath.Join(dir, "notoken.json"), `{"attributes": {
  "request": {"http": {"method": "GET", "path": "/t/beta/books", "headers": {}}},
  "contextExtensions": {"project": "timekeeping"}}}`)
	doc := writeTestFile(t, filepath.Join(dir, "input.json"), `{
  "attributes": {"request": {"http": {"method": "GET", "path": "/t/beta/books", "headers": {}}},
                 "contextExtensions": {"project": "timekeeping", "roles": "accountant"}},
  "parsed_path": ["t", "beta", "books"],
  "token": {"valid": true, "issuer": "https://idp.example.com/", "subject": "alice", "claims": {}, "tenant_binding": "", "trust_token_roles": false}}`)
	cases := map[string]struct {
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		"check request with a verified token": {
			[]string{"--config", config, "--input", checkReq}, exitOK,
			[]string{"decision        allowed (200)\n", "reason          allowed\n", "x-gatehouse-tenant: beta\n", "headers removed x-gatehouse-debug\n", "subject         alice\n", "tenancy rev.    1\n", "policy rev.     "}, "",
		},
		"check request without issuers": {
			[]string{"--input", checkReq}, exitOK,
			[]string{"decision        denied (401)\n", "reason          invalid_token\n", "token           unknown_issuer\n", `www-authenticate: Bearer error="invalid_token"`}, "",
		},
		"check request without token": {
			[]string{"--input", noToken}, exitOK,
			[]string{"denied (401)", "missing_token", `body            {"error":"a bearer token is required","reason":"missing_token"}`}, "",
		},
		"input document explained": {
			[]string{"--input", doc, "--explain"}, exitOK,
			[]string{
				"decision        allowed (200)\n",
				"Rules that produced a value:\n",
				"data.envoy.authz.allow = {\"allowed\": true",
				"Tenancy chain (revision 1): alice → alice-tk-beta → timekeeping → tk-beta → beta → acme\n",
				"  user           alice  kind=human status=active tenant=alpha\n",
				"  user grant     alice-tk-beta  project=timekeeping roles=[accountant] tenant=beta user=alice\n",
				"  project grant  tk-beta  project=timekeeping roles=[accountant developer] status=active tenant=beta\n",
				"  tenant         beta  kind=customer name=Beta parent=acme status=active\n",
				"    parent       acme  kind=service_provider name=ACME status=active\n",
				"  home tenant    alpha  ",
				"tenancy.index.user_roles.alice.timekeeping.beta\n",
			}, "",
		},
		"missing input":    {nil, exitUsage, nil, "--input: required"},
		"missing policies": {[]string{"--policies", "", "--input", doc}, exitUsage, nil, "--policies: required"},
		"bad input":        {[]string{"--input", demoWorld, "--input-kind", "check_request"}, exitUsage, nil, "not an Envoy CheckRequest"},
		"broken policy":    {[]string{"--policies", ptd("broken"), "--input", doc}, exitUsage, nil, "unsafe.rego:4:2: var name is unsafe"},
		"bad format":       {[]string{"--input", doc, "--format", "yaml"}, exitUsage, nil, `--format "yaml"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"eval", "--policies", shippedPolicies, "--data", demoWorld}, c.args...)
			code, stdout, stderr := gatehouse(t, args...)
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, c.code, stdout, stderr)
			}
			for _, s := range c.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			if !strings.Contains(stderr, c.stderr) {
				t.Errorf("stderr lacks %q:\n%s", c.stderr, stderr)
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := gatehouse(t, "eval", "--policies", shippedPolicies, "--data", demoWorld, "--input", doc, "--format", "json", "--explain")
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var out struct {
			Allowed       bool   `json:"allowed"`
			Status        int    `json:"status"`
			DecisionID    string `json:"decision_id"`
			CheckResponse struct {
				OkResponse map[string]any `json:"okResponse"`
			} `json:"check_response"`
			Explanation struct {
				Rules []struct{ Rule string }
				Chain struct {
					UserGrants []struct{ ID string } `json:"user_grants"`
					Tenant     []struct{ ID string }
				}
			}
		}
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, stdout)
		}
		if !out.Allowed || out.Status != 200 || out.DecisionID == "" || out.CheckResponse.OkResponse == nil {
			t.Errorf("decision %+v", out)
		}
		if len(out.Explanation.Rules) == 0 || len(out.Explanation.Chain.UserGrants) != 1 || out.Explanation.Chain.UserGrants[0].ID != "alice-tk-beta" || len(out.Explanation.Chain.Tenant) != 2 {
			t.Errorf("explanation %+v", out.Explanation)
		}
	})
}
