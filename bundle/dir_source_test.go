package bundle_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// reloadWithin is SPEC §3's bound for an edit to take effect.
const reloadWithin = 2 * time.Second

// versioned allows with x-version: v (or data.lib.version when present).
func versioned(v string) string {
	return `package envoy.authz
default version := "` + v + `"
version := data.lib.version
allow := {"allowed": true, "headers": {"x-version": version}}
`
}

// version asks the sidecar over gRPC which policy version answers.
func version(tb testing.TB, sc *testutil.Sidecar) string {
	tb.Helper()
	resp, err := sc.Check(tb.Context(), testutil.Request{})
	if err != nil {
		tb.Fatalf("Check: %v", err)
	}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == "x-version" {
			return h.GetHeader().GetValue()
		}
	}
	tb.Fatalf("no x-version in %v", resp)
	return ""
}

func waitVersion(tb testing.TB, sc *testutil.Sidecar, want string) {
	tb.Helper()
	testutil.Eventually(tb, reloadWithin, func() (bool, string) {
		got := version(tb, sc)
		return got == want, "policy version " + got + ", want " + want
	})
}

// TestHotReload: edits under the policy directory take effect within 2s,
// however they are made.
func TestHotReload(t *testing.T) {
	t.Parallel()
	tests := map[string]func(t *testing.T, dir string){
		"edit in place": func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, "policy.rego"), versioned("2"))
		},
		"replace by rename": func(t *testing.T, dir string) {
			testutil.ReplaceFile(t, filepath.Join(dir, "policy.rego"), versioned("2"))
		},
		"data in a new folder": func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, "lib", "data.json"), `{"version": "2"}`)
		},
		"data edited in an existing folder": func(t *testing.T, dir string) {
			testutil.WriteFile(t, filepath.Join(dir, "static", "data.json"), `{"x": 2}`)
			testutil.WriteFile(t, filepath.Join(dir, "static", "lib.rego"), "package lib\nversion := \"2\"\n")
		},
		"file removed": func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "override.rego")); err != nil {
				t.Fatal(err)
			}
			testutil.WriteFile(t, filepath.Join(dir, "policy.rego"), versioned("2"))
		},
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			files := map[string]string{"policy.rego": versioned("1"), "static/data.json": `{"x": 1}`}
			if name == "file removed" {
				files["override.rego"] = "package unrelated\nx := 1\n"
			}
			sc := testutil.StartSidecar(t, testutil.Options{Policies: files, Watch: true})
			if got := version(t, sc); got != "1" {
				t.Fatalf("initial version %s", got)
			}
			edit(t, sc.PolicyDir)
			waitVersion(t, sc, "2")
			if st := sc.Engine.PolicyStatus(); st.LastError != "" {
				t.Errorf("last_error %q after a good edit", st.LastError)
			}
		})
	}
}

// TestHotReloadConfigMapSwap: Kubernetes updates a mounted ConfigMap by
// repointing the ..data symlink; the swap takes effect.
func TestHotReloadConfigMapSwap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "..v1", "policy.rego"), versioned("1"))
	mustSymlink(t, "..v1", filepath.Join(dir, "..data"))
	mustSymlink(t, filepath.Join("..data", "policy.rego"), filepath.Join(dir, "policy.rego"))
	sc := testutil.StartSidecar(t, testutil.Options{PolicyDir: dir, Watch: true})
	if got := version(t, sc); got != "1" {
		t.Fatalf("initial version %s", got)
	}
	testutil.WriteFile(t, filepath.Join(dir, "..v2", "policy.rego"), versioned("2"))
	mustSymlink(t, "..v2", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	waitVersion(t, sc, "2")
}

func mustSymlink(tb testing.TB, target, link string) {
	tb.Helper()
	if err := os.Symlink(target, link); err != nil {
		tb.Fatal(err)
	}
}

// TestHotReloadRejectsBrokenEdits: an edit that does not compile is
// reported (status, metric, log) and ignored; the last good policy keeps
// answering and the sidecar stays ready; the fix clears the error.
func TestHotReloadRejectsBrokenEdits(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		edit     map[string]string
		wantText string
	}{
		"syntax error":        {map[string]string{"policy.rego": "package envoy.authz\nallow := {\n"}, "rego_parse_error"},
		"compile error":       {map[string]string{"policy.rego": "package envoy.authz\nallow if x\n"}, "unsafe"},
		"decision rule gone":  {map[string]string{"policy.rego": "package envoy.other\nallow := true\n"}, "decision rule not defined"},
		"tenancy in data":     {map[string]string{"data.json": `{"tenancy": {"users": {}}}`}, "tenancy"},
		"tenancy data folder": {map[string]string{"tenancy/data.json": `{"users": {}}`}, "tenancy"},
		"bad data.json":       {map[string]string{"lib/data.json": `{"version": `}, "data.json"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sc := testutil.StartSidecar(t, testutil.Options{Policies: map[string]string{"policy.rego": versioned("1")}, Watch: true, Ops: true})
			good := sc.Engine.PolicyStatus().Revision
			errorsBefore := testutil.MetricValue(t, sc.Registry, "gatehouse_policy_loads_total", map[string]string{"result": "error"})

			for p, content := range tc.edit {
				testutil.WriteFile(t, filepath.Join(sc.PolicyDir, p), content)
			}
			testutil.Eventually(t, reloadWithin, func() (bool, string) {
				st := sc.Engine.PolicyStatus()
				return strings.Contains(st.LastError, tc.wantText), "last_error " + st.LastError
			})
			if got := version(t, sc); got != "1" {
				t.Errorf("after a broken edit version %s answers, want the last good 1", got)
			}
			if err := sc.Engine.Ready(); err != nil {
				t.Errorf("a broken edit made the sidecar unready: %v", err)
			}
			if got := testutil.MetricValue(t, sc.Registry, "gatehouse_policy_loads_total", map[string]string{"result": "error"}); got <= errorsBefore {
				t.Errorf("gatehouse_policy_loads_total{result=error} = %v, was %v", got, errorsBefore)
			}
			st := opsStatus(t, sc)
			if !st.Ready || st.Policy.Revision != good || !strings.Contains(st.Policy.LastError, tc.wantText) {
				t.Errorf("/v1/status %+v, want ready on %s with the error", st, good)
			}
			if !strings.Contains(sc.Logs.String(), "policy not loaded") {
				t.Error("the failed load is not logged")
			}

			// The fix: remove what broke, move to version 2.
			for p := range tc.edit {
				if err := os.Remove(filepath.Join(sc.PolicyDir, p)); err != nil {
					t.Fatal(err)
				}
			}
			testutil.WriteFile(t, filepath.Join(sc.PolicyDir, "policy.rego"), versioned("2"))
			waitVersion(t, sc, "2")
			if st := opsStatus(t, sc); st.Policy.LastError != "" || st.Policy.Revision == good {
				t.Errorf("/v1/status after the fix: %+v", st)
			}
		})
	}
}

// TestHotReloadIgnoresTestFiles: *_test.rego files are not served, so a
// broken one never blocks a reload.
func TestHotReloadIgnoresTestFiles(t *testing.T) {
	t.Parallel()
	sc := testutil.StartSidecar(t, testutil.Options{Policies: map[string]string{"policy.rego": versioned("1")}, Watch: true})
	testutil.WriteFile(t, filepath.Join(sc.PolicyDir, "policy_test.rego"), "package envoy.authz\ntest_broken if {\n")
	testutil.WriteFile(t, filepath.Join(sc.PolicyDir, "policy.rego"), versioned("2"))
	waitVersion(t, sc, "2")
	if st := sc.Engine.PolicyStatus(); st.LastError != "" {
		t.Errorf("last_error %q: a test file was loaded", st.LastError)
	}
}

type statusDoc struct {
	Ready  bool `json:"ready"`
	Policy struct {
		Revision  string `json:"revision"`
		LoadedAt  string `json:"loaded_at"`
		LastError string `json:"last_error"`
	} `json:"policy"`
}

func opsStatus(tb testing.TB, sc *testutil.Sidecar) statusDoc {
	tb.Helper()
	code, body := testutil.Get(tb, tb.Context(), sc.OpsURL+"/v1/status")
	var st statusDoc
	if code != 200 {
		tb.Fatalf("/v1/status: %d %s", code, body)
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		tb.Fatalf("/v1/status: %v: %s", err, body)
	}
	return st
}
