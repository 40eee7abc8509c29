package authz_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

const allowTrue = "package envoy.authz\nallow := true\n"

// TestLoadDir: what serve loads from a policy directory, and what it skips.
func TestLoadDir(t *testing.T) {
	t.Parallel()
	dir := testutil.PolicyDir(t, map[string]string{
		"policy.rego": `package envoy.authz
allow := {"allowed": true, "headers": {
	"x-plans": concat(",", data.plans.names),
	"x-region": data.geo.eu.region,
	"x-root": data.root_flag,
	"x-yaml": data.teams.lead,
}}
`,
		"plans/data.json":       `{"names": ["free", "pro"]}`,
		"geo/eu/data.json":      `{"region": "eu-west-1"}`,
		"teams/data.yaml":       "lead: dana\n",
		"data.json":             `{"root_flag": "on"}`,
		"policy_test.rego":      "package envoy.authz\nthis does not parse",
		"lib/helpers_test.rego": "package lib\ntest_x if {",
		".git/broken.rego":      "package broken\n{{{",
		".hidden/data.json":     `{"tenancy": {}}`,
		"README.md":             "not a policy",
	})
	src, err := authz.LoadDir(dir, ast.RegoV1)
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	for name := range src.Modules {
		if strings.HasSuffix(name, "_test.rego") || strings.Contains(name, ".git") {
			t.Errorf("serve loaded %s", name)
		}
	}
	if len(src.Modules) != 1 {
		t.Errorf("loaded %d modules, want 1", len(src.Modules))
	}
	e := authz.New(authz.Config{}, nil, nil, testLogger(t))
	ps, err := authz.Compile(src, authz.DefaultDecision)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	e.SetPolicy(ps)
	d, err := decide(t, e, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"x-plans": "free,pro", "x-region": "eu-west-1", "x-root": "on", "x-yaml": "dana"}
	for _, h := range d.Headers {
		if want[h.Key] != h.Value {
			t.Errorf("header %s = %q, want %q", h.Key, h.Value, want[h.Key])
		}
		delete(want, h.Key)
	}
	if len(want) != 0 {
		t.Errorf("missing headers %v", want)
	}
}

// TestLoadDirRefusesTenancyData: data.tenancy belongs to the tenancy store;
// static data claiming it is refused.
func TestLoadDirRefusesTenancyData(t *testing.T) {
	t.Parallel()
	tests := map[string]map[string]string{
		"root data.json":      {"data.json": `{"tenancy": {"users": {}}}`},
		"tenancy/data.json":   {"tenancy/data.json": `{"users": {"u1": {}}}`},
		"tenancy/x/data.yaml": {"tenancy/x/data.yaml": "a: 1\n"},
	}
	for name, files := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			files["policy.rego"] = allowTrue
			src, err := authz.LoadDir(testutil.PolicyDir(t, files), ast.RegoV1)
			if err != nil {
				t.Fatalf("LoadDir: %v", err)
			}
			if _, err := authz.Compile(src, authz.DefaultDecision); !errors.Is(err, authz.ErrReservedData) {
				t.Fatalf("Compile = %v, want ErrReservedData", err)
			}
		})
	}
}

// TestCompileErrors: what does not compile is reported with its location.
func TestCompileErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		files    map[string]string
		decision string
		wantErr  error
		wantText string
	}{
		"syntax error": {
			files:    map[string]string{"policy.rego": "package envoy.authz\n\nallow if {\n"},
			wantText: "policy.rego:4: rego_parse_error",
		},
		"type error": {
			files:    map[string]string{"policy.rego": "package envoy.authz\nallow if count(1) > 0\n"},
			wantText: "policy.rego:2",
		},
		"unsafe variable": {
			files:    map[string]string{"policy.rego": "package envoy.authz\nallow if x > 1\n"},
			wantText: "var x is unsafe",
		},
		"v0 syntax under v1": {
			files:    map[string]string{"policy.rego": "package envoy.authz\nallow { true }\n"},
			wantText: "policy.rego:2",
		},
		"no decision rule": {
			files:   map[string]string{"policy.rego": "package other\nallow := true\n"},
			wantErr: authz.ErrNoDecisionRule,
		},
		"other decision rule missing": {
			files:    map[string]string{"policy.rego": allowTrue},
			decision: "envoy/authz/decision",
			wantErr:  authz.ErrNoDecisionRule,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			src, err := authz.LoadDir(testutil.PolicyDir(t, tc.files), ast.RegoV1)
			if err == nil {
				decision := tc.decision
				if decision == "" {
					decision = authz.DefaultDecision
				}
				_, err = authz.Compile(src, decision)
			}
			if err == nil {
				t.Fatal("compiled")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not contain %q", err, tc.wantText)
			}
		})
	}
}

// TestDecisionPaths: the decision rule may be configured in either form,
// and may be defined by a rule, a prefix rule, or data.
func TestDecisionPaths(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		files    map[string]string
		decision string
		want     bool
	}{
		"slash path":              {map[string]string{"p.rego": "package a.b\nc := true\n"}, "a/b/c", true},
		"data ref":                {map[string]string{"p.rego": "package a.b\nc := true\n"}, "data.a.b.c", true},
		"leading /":               {map[string]string{"p.rego": "package a.b\nc := true\n"}, "/a/b/c", true},
		"partial object prefix":   {map[string]string{"p.rego": "package a\nb[k] := true if some k in [\"c\"]\n"}, "a/b/c", true},
		"data only":               {map[string]string{"envoy/authz/data.json": `{"allow": true}`}, authz.DefaultDecision, true},
		"rego v1 opa-envoy style": {map[string]string{"p.rego": "package envoy.authz\nimport rego.v1\ndefault allow := false\nallow if input.x == 1\n"}, authz.DefaultDecision, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			src, err := authz.LoadDir(testutil.PolicyDir(t, tc.files), ast.RegoV1)
			if err != nil {
				t.Fatal(err)
			}
			ps, err := authz.Compile(src, tc.decision)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			e := authz.New(authz.Config{}, nil, nil, testLogger(t))
			e.SetPolicy(ps)
			d, err := decide(t, e, nil, "")
			if err != nil || d.Allowed != tc.want || !d.Defined {
				t.Fatalf("Decide = %+v, %v; want allowed %v", d, err, tc.want)
			}
		})
	}
	for _, bad := range []string{"", "data.", "a//b", "/"} {
		if _, err := authz.DecisionRef(bad); err == nil {
			t.Errorf("DecisionRef(%q) accepted", bad)
		}
	}
}

// TestRegoV0: policies in the older syntax load with rego_version v0.
func TestRegoV0(t *testing.T) {
	t.Parallel()
	dir := testutil.PolicyDir(t, map[string]string{"policy.rego": "package envoy.authz\ndefault allow = false\nallow { input.x == 1 }\n"})
	e := authz.New(authz.Config{}, nil, nil, testLogger(t))
	loadDirVersion(t, e, dir, ast.RegoV0)
	if d, err := decide(t, e, map[string]any{"x": 1}, ""); err != nil || !d.Allowed {
		t.Fatalf("Decide = %+v, %v", d, err)
	}
	if _, err := authz.ParseRegoVersion("v2"); err == nil {
		t.Error("rego_version v2 accepted")
	}
}

// TestDirRevision: the revision changes exactly when what serve loads
// changes.
func TestDirRevision(t *testing.T) {
	t.Parallel()
	dir := testutil.PolicyDir(t, map[string]string{"policy.rego": allowTrue, "x/data.json": `{"a": 1}`})
	rev := func() string {
		t.Helper()
		r, err := authz.DirRevision(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r0 := rev()
	steps := []struct {
		name    string
		do      func()
		changed bool
	}{
		{"test file added", func() { testutil.WriteFile(t, filepath.Join(dir, "policy_test.rego"), "package x\n") }, false},
		{"unrelated file", func() { testutil.WriteFile(t, filepath.Join(dir, "NOTES.md"), "hi") }, false},
		{"hidden folder", func() { testutil.WriteFile(t, filepath.Join(dir, ".git", "a.rego"), "package x") }, false},
		{"data edited", func() { testutil.WriteFile(t, filepath.Join(dir, "x", "data.json"), `{"a": 2}`) }, true},
		{"policy edited", func() { testutil.WriteFile(t, filepath.Join(dir, "policy.rego"), allowTrue+"# edit\n") }, true},
		{"file renamed", func() {
			if err := os.Rename(filepath.Join(dir, "policy.rego"), filepath.Join(dir, "main.rego")); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	prev := r0
	for _, st := range steps {
		st.do()
		now := rev()
		if (now != prev) != st.changed {
			t.Errorf("%s: revision %s -> %s, changed want %v", st.name, prev, now, st.changed)
		}
		prev = now
	}
}
