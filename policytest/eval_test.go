package policytest_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/policytest"
	"github.com/gatehouse-dev/gatehouse/token"
)

const world = "../policies/fixtures/tenancy/tenancy.json"

// issuer writes a PEM public key for a fresh RSA key and returns the issuer
// configuration trusting it and a function minting tokens.
func issuer(tb testing.TB) (token.IssuerConfig, func(sub string) string) {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	file := filepath.Join(tb.TempDir(), "public.pem")
	writeFile(tb, file, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	cfg := token.IssuerConfig{Issuer: "https://idp.example.com/", Audiences: []string{"api"}, PublicKeyFile: file}
	cfg.SetDefaults()
	return cfg, func(sub string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"iss": cfg.Issuer, "aud": "api", "sub": sub, "exp": time.Now().Add(time.Hour).Unix(),
		})
		s, err := tok.SignedString(key)
		if err != nil {
			tb.Fatal(err)
		}
		return s
	}
}

func checkRequest(path, auth string, ext map[string]string) []byte {
	headers := map[string]string{":path": path, ":method": "GET", ":authority": "api.example.com"}
	if auth != "" {
		headers["authorization"] = "Bearer " + auth
	}
	b, _ := json.Marshal(map[string]any{"attributes": map[string]any{
		"request":           map[string]any{"http": map[string]any{"method": "GET", "path": path, "host": "api.example.com", "headers": headers}},
		"contextExtensions": ext,
	}})
	return b
}

func inputDocument(path string, token map[string]any, ext map[string]string) []byte {
	doc := map[string]any{
		"attributes": map[string]any{
			"request":           map[string]any{"http": map[string]any{"method": "GET", "path": path, "host": "api.example.com", "headers": map[string]any{}}},
			"contextExtensions": ext,
		},
		"parsed_path": strings.Split(strings.TrimPrefix(path, "/"), "/"),
	}
	if token != nil {
		doc["token"] = token
	}
	b, _ := json.Marshal(doc)
	return b
}

func validToken(sub string) map[string]any {
	return map[string]any{"valid": true, "issuer": "https://idp.example.com/", "subject": sub, "claims": map[string]any{"sub": sub}, "tenant_binding": "", "trust_token_roles": false}
}

func TestEval(t *testing.T) {
	t.Parallel()
	iss, mint := issuer(t)
	accountant := map[string]string{"project": "timekeeping", "roles": "accountant"}
	cases := map[string]struct {
		input    []byte
		kind     string
		status   int
		reason   string
		tenant   string // x-gatehouse-tenant on allow
		subject  string
		tokenErr string
	}{
		"check request without token":   {checkRequest("/t/beta/books", "", accountant), policytest.InputCheckRequest, 401, "missing_token", "", "", "missing"},
		"check request, verified token": {checkRequest("/t/beta/books", mint("alice"), accountant), policytest.InputCheckRequest, 200, "allowed", "beta", "alice", ""},
		"check request, forged token":   {checkRequest("/t/beta/books", mint("alice")+"x", accountant), policytest.InputCheckRequest, 401, "invalid_token", "", "", "bad_signature"},
		"input document with a token":   {inputDocument("/t/beta/books", validToken("alice"), accountant), policytest.InputDocument, 200, "allowed", "beta", "alice", ""},
		"input document, role missing":  {inputDocument("/t/beta/books", validToken("bob"), accountant), policytest.InputDocument, 403, "role_required", "", "bob", ""},
		"input document without token":  {inputDocument("/t/beta/books", nil, accountant), policytest.InputDocument, 401, "missing_token", "", "", "missing"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ev, err := policytest.Eval(t.Context(), policytest.EvalConfig{
				Policies: shipped, Data: world, Input: c.input, Issuers: []token.IssuerConfig{iss},
			})
			if err != nil {
				t.Fatal(err)
			}
			d := ev.Decision
			if ev.InputKind != c.kind || d.Status() != c.status || d.Reason != c.reason || d.Subject != c.subject || string(d.TokenError) != c.tokenErr {
				t.Errorf("%s: %d %s subject %q token %q; want %s: %d %s subject %q token %q",
					ev.InputKind, d.Status(), d.Reason, d.Subject, d.TokenError, c.kind, c.status, c.reason, c.subject, c.tokenErr)
			}
			if d.TenancyRevision != 1 || d.PolicyRevision == "" || d.ID == "" {
				t.Errorf("revisions %q/%d, id %q", d.PolicyRevision, d.TenancyRevision, d.ID)
			}
			ok := ev.Response.GetOkResponse()
			if (ok != nil) != (c.status == 200) {
				t.Fatalf("CheckResponse %v for status %d", ev.Response, c.status)
			}
			if c.tenant != "" {
				found := false
				for _, h := range ok.GetHeaders() {
					found = found || (h.GetHeader().GetKey() == "x-gatehouse-tenant" && h.GetHeader().GetValue() == c.tenant)
				}
				if !found {
					t.Errorf("upstream headers %v lack x-gatehouse-tenant: %s", ok.GetHeaders(), c.tenant)
				}
			}
			var b bytes.Buffer
			if err := policytest.WriteEvaluation(&b, ev, policytest.FormatJSON); err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Status        int            `json:"status"`
				Reason        string         `json:"reason"`
				DecisionID    string         `json:"decision_id"`
				CheckResponse map[string]any `json:"check_response"`
			}
			if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
				t.Fatalf("json output: %v\n%s", err, b.String())
			}
			if doc.Status != c.status || doc.Reason != c.reason || doc.DecisionID != d.ID || doc.CheckResponse["dynamicMetadata"] == nil {
				t.Errorf("json output %+v", doc)
			}
		})
	}
}

func TestEvalExplain(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		input      []byte
		chain      string // the chain line of the pretty output
		rows       []string
		homeTenant string
	}{
		"external accountant": {
			inputDocument("/t/beta/books", validToken("alice"), map[string]string{"project": "timekeeping", "roles": "accountant"}),
			"alice → alice-tk-beta → timekeeping → tk-beta → beta → acme",
			[]string{"user           alice  kind=human status=active tenant=alpha", "user grant     alice-tk-beta  ", "project grant  tk-beta  ", "tenant         beta  ", "  parent       acme  "},
			"alpha",
		},
		"owner tenant": {
			inputDocument("/dashboard", validToken("carol"), map[string]string{"project": "dashboard"}),
			"carol → carol-dashboard → dashboard → acme",
			[]string{"user grant     carol-dashboard  ", "project grant  (none: acme owns dashboard)"},
			"",
		},
		"denied: tenant not granted": {
			inputDocument("/t/alpha/deals", validToken("alice"), map[string]string{"project": "partner-app"}),
			"alice → partner-app → alpha → acme",
			[]string{"project grant  (none: alpha holds no grant on partner-app)"},
			"",
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ev, err := policytest.Eval(t.Context(), policytest.EvalConfig{Policies: shipped, Data: world, Input: c.input, Explain: true})
			if err != nil {
				t.Fatal(err)
			}
			ex := ev.Explanation
			if ex == nil || ex.Chain == nil {
				t.Fatalf("no chain: %+v", ex)
			}
			if len(ex.Rules) == 0 || !strings.HasSuffix(ex.Rules[0].Location.File, "authz.rego") {
				t.Errorf("rules %+v", ex.Rules)
			}
			if len(ex.TenancyReads) == 0 {
				t.Error("no tenancy reads recorded")
			}
			if c.homeTenant != "" && (len(ex.Chain.HomeTenant) == 0 || ex.Chain.HomeTenant[0].ID != c.homeTenant) {
				t.Errorf("home tenant %+v, want %s", ex.Chain.HomeTenant, c.homeTenant)
			}
			var b bytes.Buffer
			if err := policytest.WriteEvaluation(&b, ev, policytest.FormatPretty); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, s := range append([]string{"Tenancy chain (revision 1): " + c.chain + "\n", "Rules that produced a value:\n", "Tenancy data read:\n"}, c.rows...) {
				if !strings.Contains(out, s) {
					t.Errorf("explanation lacks %q:\n%s", s, out)
				}
			}
			for _, r := range ex.Rules {
				if r.Location == nil || r.Location.Row == 0 {
					t.Errorf("rule %s without location", r.Rule)
				}
			}
		})
	}
}

func TestEvalErrors(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		cfg  policytest.EvalConfig
		want error
	}{
		"not json":             {policytest.EvalConfig{Policies: shipped, Input: []byte("nope")}, policytest.ErrInput},
		"not a check request":  {policytest.EvalConfig{Policies: shipped, Input: []byte(`{"attributes": {"nope": 1}}`)}, policytest.ErrInput},
		"forced kind mismatch": {policytest.EvalConfig{Policies: shipped, Input: []byte(`{"parsed_path": []}`), InputKind: policytest.InputCheckRequest}, policytest.ErrInput},
		"bad data":             {policytest.EvalConfig{Policies: shipped, Data: "../testdata/policytest/passing/ignored.json", Input: inputDocument("/", nil, nil)}, policytest.ErrInput},
		"no policies":          {policytest.EvalConfig{Policies: "nope", Input: inputDocument("/", nil, nil)}, policytest.ErrUsage},
		"unknown decision":     {policytest.EvalConfig{Policies: shipped, Decision: "x/y", Input: inputDocument("/", nil, nil)}, policytest.ErrUsage},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := policytest.Eval(t.Context(), c.cfg); !errors.Is(err, c.want) {
				t.Errorf("Eval: %v, want %v", err, c.want)
			}
		})
	}
	var ce *policytest.CompileError
	_, err := policytest.Eval(t.Context(), policytest.EvalConfig{Policies: td("broken"), Input: inputDocument("/", nil, nil)})
	if !errors.As(err, &ce) {
		t.Errorf("Eval of a broken policy: %v, want a *CompileError", err)
	}
}
