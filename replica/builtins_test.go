package replica_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
)

// calling returns an engine over ten whose decision is the value of expr
// (a call of a built-in): {"allowed": true, "value": expr} when defined,
// false when undefined.
func calling(t *testing.T, ten authz.Tenancy, expr string) *authz.Engine {
	t.Helper()
	dir := testutil.PolicyDir(t, map[string]string{"p.rego": "package envoy.authz\n\ndefault allow := false\n\nallow := {\"allowed\": true, \"headers\": {\"x-value\": json.marshal(v)}} if {\n\tv := " + expr + "\n}\n"})
	e := authz.New(authz.Config{DecisionCacheEntries: -1, Builtins: replica.Builtins()}, nil, ten, discard())
	src, err := authz.LoadDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := e.Compile(src, authz.DefaultDecision)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPolicy(ps)
	return e
}

// value evaluates e's decision: the built-in's value as JSON, "" when
// undefined.
func value(t *testing.T, e *authz.Engine) (string, error) {
	t.Helper()
	d, err := e.Decide(context.Background(), &authz.Request{Input: ast.NewObject()})
	if err != nil || !d.Allowed {
		return "", err
	}
	return d.Headers[0].Value, nil
}

// TestBuiltinsAnswer: each built-in over the store's data.
func TestBuiltinsAnswer(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	src.write(`[{"op":"put","collection":"users","value":{"id":"quinn","tenant":"beta","issuer":"https://beta.example.com/","labels":{"team":"x"}}}]`)
	st := openStore(t, t.TempDir())
	loadSnapshot(t, st, src)
	cases := map[string]string{
		`gatehouse.tenancy.tenant_active("beta")`:                            `true`,
		`gatehouse.tenancy.tenant_active("nowhere")`:                         `false`,
		`gatehouse.tenancy.tenant_roles("tk", "beta")`:                       `["accountant","developer"]`,
		`gatehouse.tenancy.tenant_roles("tk", "nowhere")`:                    ``,
		`gatehouse.tenancy.user_roles("bob", "tk", "beta")`:                  `["developer"]`,
		`gatehouse.tenancy.user_roles("bob", "tk", "acme")`:                  `[]`,
		`gatehouse.tenancy.effective_roles("alice", "tk", "beta")`:           `["accountant"]`,
		`gatehouse.tenancy.user("bob", "https://any/", false)`:               `{"id":"bob","kind":"human","labels":{},"status":"active","tenant":"beta"}`,
		`gatehouse.tenancy.user("bob", "https://any/", true)`:                ``,
		`gatehouse.tenancy.user("quinn", "https://beta.example.com/", true)`: `{"id":"quinn","issuer":"https://beta.example.com/","kind":"human","labels":{"team":"x"},"status":"active","tenant":"beta"}`,
		`gatehouse.tenancy.user("quinn", "https://any/", false)`:             ``,
		`gatehouse.tenancy.decide({"subject": "bob", "issuer": "https://any/", "project": "tk", "tenant": "beta", "required": ["developer"]})`:                                                             `{"reason":"allowed","roles":["developer"],"tenant":"beta"}`,
		`gatehouse.tenancy.decide({"subject": "bob", "issuer": "https://any/", "project": "tk", "tenant_reading": {}, "required": ["accountant"]})`:                                                        `{"reason":"role_required","roles":["developer"],"tenant":"beta"}`,
		`gatehouse.tenancy.decide({"subject": "bob", "project": "tk", "tenant_reading": {"invalid": "why"}})`:                                                                                              `{"reason":"tenant_unknown"}`,
		`gatehouse.tenancy.decide({"subject": "bob", "project": "tk", "tenant_reading": {}, "required": " accountant, ,developer "})`:                                                                      `{"reason":"allowed","roles":["developer"],"tenant":"beta"}`,
		`gatehouse.tenancy.decide({"subject": "bob", "project": "tk", "tenant_reading": {}, "required": " , "})`:                                                                                           `{"reason":"allowed","roles":["developer"],"tenant":"beta"}`,
		`gatehouse.tenancy.decide({"subject": "alice", "project": "tk", "tenant": "acme", "required": ""})`:                                                                                                `{"reason":"no_role","roles":[],"tenant":"acme"}`,
		`gatehouse.tenancy.decide({"subject": "zoe", "issuer": "https://t/", "trust_token_roles": true, "project": "tk", "tenant": "beta", "token_roles": {"beta": {"roles": ["developer", "root", 7]}}})`: `{"reason":"allowed","roles":["developer"],"tenant":"beta"}`,
		`gatehouse.tenancy.decide({"subject": ""})`: `{"reason":"unknown_user"}`,
		// arguments of the wrong shape: undefined, as for OPA's built-ins
		`gatehouse.tenancy.decide({"subject": "bob", "projekt": "tk"})`:                                      ``,
		`gatehouse.tenancy.decide({"subject": "bob", "required": 7})`:                                        ``,
		`gatehouse.tenancy.decide({"subject": "bob", "required": ["developer", 7]})`:                         ``,
		`gatehouse.tenancy.decide({"subject": "bob", "tenant": "beta", "tenant_reading": {}})`:               ``,
		`gatehouse.tenancy.decide({"subject": 7})`:                                                           ``,
		`gatehouse.tenancy.decide({"subject": "bob", "tenant_reading": {"tenant": "beta", "invalid": "x"}})`: ``,
	}
	for expr, want := range cases {
		t.Run(expr, func(t *testing.T) {
			t.Parallel()
			got, err := value(t, calling(t, st, expr))
			if err != nil || got != want {
				t.Fatalf("%s = %q, %v; want %q", expr, got, err, want)
			}
		})
	}
	if st.Corrupt() {
		t.Fatal("marked damaged")
	}
}

// TestBuiltinsOnDamagedData: a built-in that reads a damaged value halts
// the evaluation (the engine cannot decide: an error, never an allow or an
// undefined that a `not` could turn into one) and marks the cache file
// damaged, so the sidecar stops deciding from it until it is rebuilt.
func TestBuiltinsOnDamagedData(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	decideBob := `gatehouse.tenancy.decide({"subject": "bob", "issuer": "https://any/", "project": "tk", "tenant": "beta", "required": ["developer"]})`
	cases := map[string]struct {
		key, doc string
		expr     string
	}{
		"decide, the user":                {"bob", `{"id":"bob","tenant":"beta"`, decideBob},
		"decide, an ancestor tenant":      {"acme", `{"id":"acme"`, decideBob},
		"decide, the tenant chain":        {"beta", `["beta","acme"]`, decideBob},
		"decide, the project":             {"tk", `{"id":"tk"`, decideBob},
		"decide, the tenant's roles":      {"tk\x00beta", `["accountant","developer"]`, decideBob},
		"decide, the user's roles":        {"bob\x00tk\x00beta", `["developer"]`, decideBob},
		"user":                            {"bob", `{"id":"bob","tenant":"beta"`, `gatehouse.tenancy.user("bob", "https://any/", false)`},
		"tenant_active, an ancestor":      {"acme", `{"id":"acme"`, `gatehouse.tenancy.tenant_active("beta")`},
		"tenant_roles":                    {"tk\x00beta", `["accountant","developer"]`, `gatehouse.tenancy.tenant_roles("tk", "beta")`},
		"user_roles":                      {"bob\x00tk\x00beta", `["developer"]`, `gatehouse.tenancy.user_roles("bob", "tk", "beta")`},
		"effective_roles, the user roles": {"bob\x00tk\x00beta", `["developer"]`, `gatehouse.tenancy.effective_roles("bob", "tk", "beta")`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			st, err := replica.OpenStore(replica.StoreConfig{Dir: dir}, discard())
			if err != nil {
				t.Fatal(err)
			}
			loadSnapshot(t, st, src)
			st.Close()
			flipInValue(t, filepath.Join(dir, replica.CacheFile), []byte(c.key), []byte(c.doc), 3)
			st = openStore(t, dir)

			got, err := value(t, calling(t, st, c.expr))
			if err == nil {
				t.Fatalf("%s decided (%q) from damaged data", c.expr, got)
			}
			if !errors.Is(err, authz.ErrEvaluation) || !strings.Contains(err.Error(), "damaged") {
				t.Fatalf("err = %v", err)
			}
			if !st.Corrupt() || st.State().Present {
				t.Fatalf("the store was not marked damaged: %+v", st.State())
			}
		})
	}
}

// TestBuiltinsWithoutData: with no tenancy data at all (serve without a
// control endpoint) the built-ins answer from empty data: every decision
// is a deny.
func TestBuiltinsWithoutData(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		`gatehouse.tenancy.decide({"subject": "bob", "issuer": "https://any/", "project": "tk", "tenant": "beta", "required": []})`:                             `{"reason":"unknown_user"}`,
		`gatehouse.tenancy.decide({"subject": "zoe", "trust_token_roles": true, "project": "tk", "tenant": "beta", "token_roles": {"beta": {"roles": ["x"]}}})`: `{"reason":"tenant_unknown","tenant":"beta"}`,
		`gatehouse.tenancy.tenant_active("beta")`:              `false`,
		`gatehouse.tenancy.user_roles("bob", "tk", "beta")`:    `[]`,
		`gatehouse.tenancy.user("bob", "https://any/", false)`: ``,
	}
	for expr, want := range cases {
		got, err := value(t, calling(t, authz.EmptyTenancy(), expr))
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", expr, got, err, want)
		}
	}
}

// TestShippedPolicyKeysOnNamedInputs: the shipped policy passes the
// built-ins the input values it names (input.token.issuer, never
// input.token or its claims whole): the decision cache keys on exactly the
// input paths a policy references, and a whole token (iat, exp, jti) would
// give every token its own decisions.
func TestShippedPolicyKeysOnNamedInputs(t *testing.T) {
	t.Parallel()
	src, err := authz.LoadDir(policyDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := authz.Compile(src, authz.DefaultDecision, replica.Builtins()...)
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := ps.Cacheable(); !ok {
		t.Fatalf("not cacheable: %s", why)
	}
	need := ps.Need()
	for _, c := range []struct {
		path []string
		want []string
	}{
		{[]string{"token"}, []string{"claims", "error", "issuer", "subject", "tenant_binding", "trust_token_roles", "valid"}},
		{[]string{"token", "claims"}, []string{"authorization", "tenant"}},
		{[]string{"attributes", "request", "http"}, []string{"headers", "host", "path"}},
		{[]string{"attributes", "request", "http", "headers"}, []string{"x-tenant-id"}},
	} {
		n := need
		for _, k := range c.path {
			n = n.Child(k)
		}
		if n == nil || n.All {
			t.Errorf("input.%s is read whole", strings.Join(c.path, "."))
			continue
		}
		got := n.Keys()
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("input.%s: reads %v, want %v", strings.Join(c.path, "."), got, c.want)
		}
	}
}
