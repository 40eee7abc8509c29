package policytest_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/policytest"
)

const authzenPolicy = `package authzen

allow := {"decision": input.action.name == "read", "context": {"reason": "r"}}

search_actions contains {"name": "read"}
`

// Request fixtures can be AuthZEN requests: evaluations, batches and
// searches are answered as the listener answers them, and each expectation
// is checked (a wrong one fails).
func TestAuthZENFixtures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "policy", "authzen.rego"), authzenPolicy)
	testutil.WriteFile(t, filepath.Join(dir, "policy", "envoy.rego"), "package envoy.authz\n\ndefault allow := false\n")
	testutil.WriteFile(t, filepath.Join(dir, "fx", "fixture.yaml"), `policies: ../policy
cases:
  - name: read
    authzen: {subject: {type: user, id: a}, action: {name: read}, resource: {type: r, id: "1"}}
    expect: {status: 200, allowed: true, reason: r}
  - name: batch
    authzen: {subject: {type: user, id: a}, resource: {type: r, id: "1"}, evaluations: [{action: {name: read}}, {action: {name: write}}]}
    expect: {decisions: [true, false]}
  - name: search
    authzen_endpoint: /access/v1/search/action
    authzen: {subject: {type: user, id: a}, resource: {type: r, id: "1"}}
    expect: {body_contains: '"results":[{"name":"read"}]'}
  - name: bad request
    authzen: {subject: {type: user}, action: {name: read}, resource: {type: r, id: "1"}}
    expect: {status: 400}
  - name: wrong decision
    authzen: {subject: {type: user, id: a}, action: {name: write}, resource: {type: r, id: "1"}}
    expect: {allowed: true}
  - name: wrong batch
    authzen: {subject: {type: user, id: a}, resource: {type: r, id: "1"}, evaluations: [{action: {name: write}}]}
    expect: {decisions: [true]}
`)
	rep := run(t, policytest.Config{Paths: []string{filepath.Join(dir, "fx")}})
	want := map[string]string{"read": "PASS", "batch": "PASS", "search": "PASS", "bad request": "PASS", "wrong decision": "FAIL", "wrong batch": "FAIL"}
	if len(rep.Fixtures) != len(want) {
		t.Fatalf("%d cases, want %d", len(rep.Fixtures), len(want))
	}
	for _, f := range rep.Fixtures {
		if got := strings.ToUpper(string(f.Result)); got != want[f.Name] {
			t.Errorf("%s: %s, want %s (%v %v)", f.Name, got, want[f.Name], f.Failure, f.Error)
		}
	}

	testutil.WriteFile(t, filepath.Join(dir, "bad", "fixture.yaml"), `policies: ../policy
cases:
  - name: mixed
    path: /x
    authzen: {subject: {type: user, id: a}}
    expect: {allowed: true}
`)
	if _, err := policytest.Run(t.Context(), policytest.Config{Paths: []string{filepath.Join(dir, "bad")}}); err == nil || !strings.Contains(err.Error(), "an authzen case") {
		t.Errorf("a case mixing a check and an AuthZEN request: %v", err)
	}
}

// gatehouse eval answers an AuthZEN request as the listener would.
func TestEvalAuthZEN(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "authzen.rego"), authzenPolicy)
	for name, c := range map[string]struct {
		input, kind, endpoint, want string
		status                      int
	}{
		"evaluation": {`{"subject":{"type":"user","id":"a"},"action":{"name":"read"},"resource":{"type":"r","id":"1"}}`, "", "", `"decision":true`, 200},
		"batch":      {`{"subject":{"type":"user","id":"a"},"resource":{"type":"r","id":"1"},"evaluations":[{"action":{"name":"x"}}]}`, "", "", `"evaluations":[{"decision":false,"context":{"reason":"r"}}]`, 200},
		"search":     {`{"subject":{"type":"user","id":"a"},"resource":{"type":"r","id":"1"}}`, "", "/access/v1/search/action", `"results":[{"name":"read"}]`, 200},
		"explicit":   {`{"subject":{"type":"user","id":"a"},"attributes":{},"action":{"name":"read"},"resource":{"type":"r","id":"1"}}`, policytest.InputAuthZEN, "", `"decision":true`, 200},
		"bad":        {`{"subject":{"type":"user"}}`, "", "", `"error":"bad_request"`, 400},
	} {
		ev, err := policytest.Eval(t.Context(), policytest.EvalConfig{Policies: dir, Input: []byte(c.input), InputKind: c.kind, AuthZENEndpoint: c.endpoint})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if ev.AuthZEN == nil || ev.AuthZEN.Status != c.status || !strings.Contains(string(ev.AuthZEN.Body), c.want) {
			t.Errorf("%s: %+v, want %d with %s", name, ev.AuthZEN, c.status, c.want)
		}
	}
}
