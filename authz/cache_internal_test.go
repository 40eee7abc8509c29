package authz

import (
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

func compileForPlan(t *testing.T, policy string) cachePlan {
	t.Helper()
	mod, err := ast.ParseModuleWithOpts("p.rego", policy, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := Compile(Source{Modules: map[string]*ast.Module{"p.rego": mod}}, DefaultDecision)
	if err != nil {
		t.Fatal(err)
	}
	return ps.cache
}

func TestPlanCache(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		policy   string
		paths    []string
		disabled string
	}{
		"constant": {`package envoy.authz
allow := true`, nil, ""},
		"direct refs and indexes": {`package envoy.authz
allow if { input.parsed_path[0] == "a"; input.attributes.request.http.method == "GET" }`,
			[]string{`input.attributes.request.http.method`, `input.parsed_path[0]`}, ""},
		"variable key cuts the path": {`package envoy.authz
allow if { some k; input.attributes.request.http.headers[k] == "x" }`,
			[]string{`input.attributes.request.http.headers`}, ""},
		"imports resolve to full refs": {`package envoy.authz
import input.attributes.request.http as h
allow if h.method == "GET"`,
			[]string{`input.attributes.request.http.method`}, ""},
		"whole input through a builtin": {`package envoy.authz
allow if object.get(input, "x", 1) == 1`, []string{`input`}, ""},
		"whole input assigned": {`package envoy.authz
x := input
allow if x.a == 1`, []string{`input`}, ""},
		"functions, comprehensions and every": {`package envoy.authz
f(v) := v.b
allow if { f(input.a) == 1; every h in input.hs { h != "" }; count([y | y := input.c[_].d]) > 0 }`,
			[]string{`input.a`, `input.c`, `input.hs`}, ""},
		"prefix covers deeper paths": {`package envoy.authz
allow if { input.a.b == 1; input.a == {} }`, []string{`input.a`}, ""},
		"with on input": {`package envoy.authz
q if input.z == 1
allow if q with input.z as 1`, []string{`input.z`}, ""},
		"time": {`package envoy.authz
allow if time.now_ns() > 0`, nil, "time.now_ns"},
		"jwt verification checks the clock": {`package envoy.authz
allow if { [ok, _, _] := io.jwt.decode_verify(input.t, {"secret": "s"}); ok }`, []string{"input.t"}, "io.jwt.decode_verify"},
		"http.send": {`package envoy.authz
allow if http.send({"method": "GET", "url": "http://x"}).status_code == 200`, nil, "http.send"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			plan := compileForPlan(t, c.policy)
			var got []string
			for _, p := range plan.paths {
				got = append(got, p.String())
			}
			if strings.Join(got, " ") != strings.Join(c.paths, " ") {
				t.Errorf("paths = %q, want %q", got, c.paths)
			}
			if c.disabled == "" && plan.disabled != "" || c.disabled != "" && !strings.Contains(plan.disabled, c.disabled) {
				t.Errorf("disabled = %q, want %q", plan.disabled, c.disabled)
			}
		})
	}
}

func TestCacheKeyDistinguishesValues(t *testing.T) {
	t.Parallel()
	plan := compileForPlan(t, `package envoy.authz
allow if { input.a == 1; input.b[0] == "x" }`)
	key := func(in string) string {
		v := ast.MustParseTerm(in).Value.(ast.Object)
		var b strings.Builder
		if !plan.key(v, &b) {
			t.Fatal("key refused")
		}
		return b.String()
	}
	same := [][2]string{
		{`{"a": 1, "b": ["x"], "c": 1}`, `{"a": 1, "b": ["x"], "c": 2}`},
		{`{"a": 1}`, `{"a": 1, "b": []}`}, // b[0] is undefined in both
		{`{"a": 1, "b": ["x", "y"]}`, `{"a": 1, "b": ["x", "z"]}`},
	}
	differ := [][2]string{
		{`{"a": 1, "b": ["x"]}`, `{"a": 2, "b": ["x"]}`},
		{`{"a": 1, "b": ["x"]}`, `{"a": 1, "b": ["y"]}`},
		{`{"a": "1"}`, `{"a": 1}`},
		{`{"a": 1, "b": ["x\u0000"]}`, `{"a": 1, "b": ["x"]}`},
	}
	for _, p := range same {
		if key(p[0]) != key(p[1]) {
			t.Errorf("%s and %s should share a key", p[0], p[1])
		}
	}
	for _, p := range differ {
		if key(p[0]) == key(p[1]) {
			t.Errorf("%s and %s share a key", p[0], p[1])
		}
	}
}
