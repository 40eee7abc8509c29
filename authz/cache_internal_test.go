package authz

import (
	"math/rand/v2"
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
		b, ok := plan.key(v, nil)
		if !ok {
			t.Fatal("key refused")
		}
		return string(b)
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

// randomValue is a random ast value of depth at most d: every value kind a
// JSON input or a policy builds (strings with quotes, escapes and invalid
// UTF-8; numbers in several spellings; nested arrays, objects and sets).
func randomValue(r *rand.Rand, d int) ast.Value {
	strs := []string{"", "a", `q"uote`, "back\\slash", "nl\n", "\x00", "\xff\xfe", "é", "/t/acme", "x-tenant-id"}
	nums := []string{"0", "1", "-1", "1.5", "1e3", "12345678901234567890"}
	k := r.IntN(8)
	if d == 0 {
		k = r.IntN(4)
	}
	switch k {
	case 0:
		return ast.String(strs[r.IntN(len(strs))])
	case 1:
		return ast.Number(nums[r.IntN(len(nums))])
	case 2:
		return ast.Boolean(r.IntN(2) == 0)
	case 3:
		return ast.Null{}
	case 4, 5:
		obj := ast.NewObject()
		for range r.IntN(4) {
			obj.Insert(ast.NewTerm(randomValue(r, 0)), ast.NewTerm(randomValue(r, d-1)))
		}
		return obj
	case 6:
		terms := make([]*ast.Term, r.IntN(4))
		for i := range terms {
			terms[i] = ast.NewTerm(randomValue(r, d-1))
		}
		return ast.NewArray(terms...)
	default:
		set := ast.NewSet()
		for range r.IntN(4) {
			set.Add(ast.NewTerm(randomValue(r, d-1)))
		}
		return set
	}
}

// TestCacheKeyTextIsStringRendering: the key is appended in place, and
// must stay exactly the values' String() renderings joined as before
// (so that two inputs share a key exactly when the old key was shared):
// randomized over every kind of value.
func TestCacheKeyTextIsStringRendering(t *testing.T) {
	t.Parallel()
	plan := compileForPlan(t, `package envoy.authz
allow if { input.a == 1; input.b[0] == "x"; input.c.d == 2 }`)
	r := rand.New(rand.NewPCG(8, 9))
	for i := range 5000 {
		v := randomValue(r, 3)
		if got, want := string(appendText([]byte("prefix"), v)), "prefix"+v.String(); got != want {
			t.Fatalf("value %d: appended %q, String() %q", i, got, want)
		}
		in := ast.NewObject(
			ast.Item(ast.StringTerm("a"), ast.NewTerm(v)),
			ast.Item(ast.StringTerm("b"), ast.ArrayTerm(ast.NewTerm(randomValue(r, 2)))),
			ast.Item(ast.StringTerm("c"), ast.NewTerm(randomValue(r, 2))),
		)
		var old strings.Builder
		for j, p := range plan.paths {
			if j > 0 {
				old.WriteByte(0)
			}
			var x ast.Value = in
			for _, s := range p[1:] {
				if x = child(x, s); x == nil {
					break
				}
			}
			if x == nil {
				old.WriteByte(1)
			} else {
				old.WriteString(x.String())
			}
		}
		got, ok := plan.key(in, nil)
		if !ok || string(got) != old.String() {
			t.Fatalf("input %d %v: key %q (ok %v), want %q", i, in, got, ok, old.String())
		}
	}
}

// TestCacheKeyDoesNotAllocate: building the key of the usual input (strings,
// an object of context extensions) allocates nothing when the buffer fits.
// Not parallel: AllocsPerRun.
func TestCacheKeyDoesNotAllocate(t *testing.T) {
	plan := compileForPlan(t, `package envoy.authz
allow if { input.token.subject == "u"; input.attributes.contextExtensions.project == "p"; input.attributes.request.http.path == "/" }`)
	in := ast.MustParseTerm(`{"token": {"subject": "u1", "valid": true}, "attributes": {"contextExtensions": {"project": "p1", "roles": "reader"},
		"request": {"http": {"path": "/t/acme/items", "headers": {"x": "y"}}}}}`).Value.(ast.Object)
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { _, _ = plan.key(in, buf[:0]) }); n != 0 {
		t.Errorf("%v allocations per key", n)
	}
}
