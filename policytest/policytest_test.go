package policytest_test

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/tester"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/policytest"
	"github.com/gatehouse-dev/gatehouse/replica"
)

const (
	shipped  = "../policies"
	testdata = "../testdata/policytest"
)

func td(p string) string { return filepath.Join(testdata, p) }

// run runs policytest.Run and fails the test on an error.
// run runs policytest.Run; unless the test sets a timeout, each Rego test
// may take a minute (the race detector on a busy machine slows evaluation
// tenfold: the default 5s is not what these tests are about).
func run(t *testing.T, cfg policytest.Config) *policytest.Report {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Minute
	}
	rep, err := policytest.Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Run(%v): %v", cfg.Paths, err)
	}
	return rep
}

func pretty(tb testing.TB, rep *policytest.Report, verbose bool) string {
	tb.Helper()
	var b bytes.Buffer
	if err := policytest.WritePretty(&b, rep, verbose); err != nil {
		tb.Fatal(err)
	}
	return b.String()
}

var summaryLine = regexp.MustCompile(`(?m)^(PASS|FAIL|SKIPPED|ERROR): \d+/\d+$`)

// opaSummary runs OPA's tester directly on paths (with the data files
// gatehouse loads) and returns the summary lines of its pretty reporter.
func opaSummary(tb testing.TB, paths ...string) []string {
	tb.Helper()
	ctx := context.Background()
	onlyData := func(_ string, info fs.FileInfo, _ int) bool {
		n := info.Name()
		return !info.IsDir() && !strings.HasSuffix(n, ".rego") && n != "data.json" && n != "data.yaml"
	}
	modules, store, err := tester.Load(paths, onlyData)
	if err != nil {
		tb.Fatal(err)
	}
	txn, err := store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		tb.Fatal(err)
	}
	defer store.Abort(ctx, txn)
	// as `opa test --capabilities policies/capabilities.json` runs them:
	// the shipped tests mock the Gatehouse built-ins, declared by the file
	f, err := os.Open(filepath.Join(shipped, "capabilities.json"))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	caps, err := ast.LoadCapabilitiesJSON(f)
	if err != nil {
		tb.Fatal(err)
	}
	compiler := ast.NewCompiler().WithCapabilities(caps).WithEnablePrintStatements(true).WithUseTypeCheckAnnotations(true)
	ch, err := tester.NewRunner().SetCompiler(compiler).SetStore(store).SetModules(modules).SetTimeout(time.Minute).RunTests(ctx, txn)
	if err != nil {
		tb.Fatal(err)
	}
	var b bytes.Buffer
	if err := (tester.PrettyReporter{Output: &b}).Report(ch); err != nil {
		tb.Fatal(err)
	}
	return summaryLine.FindAllString(b.String(), -1)
}

// TestCapabilitiesFileIsCurrent: policies/capabilities.json is what
// `gatehouse capabilities` prints (OPA's capabilities for the embedded
// version plus the Gatehouse built-ins). After an OPA upgrade or a built-in
// change: gatehouse capabilities > policies/capabilities.json
func TestCapabilitiesFileIsCurrent(t *testing.T) {
	t.Parallel()
	want, err := policytest.Capabilities()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(shipped, "capabilities.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("policies/capabilities.json is out of date: run `gatehouse capabilities > policies/capabilities.json`")
	}
	caps, err := ast.LoadCapabilitiesJSON(bytes.NewReader(got))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, b := range caps.Builtins {
		names[b.Name] = true
	}
	for _, b := range replica.Builtins() {
		if !names[b.Decl.Name] {
			t.Errorf("%s is not declared", b.Decl.Name)
		}
	}
	if !names["regex.match"] || !names["io.jwt.decode_verify"] {
		t.Error("OPA's own built-ins are missing")
	}
}

func TestRegoCountsMatchOPA(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		path   string
		passed bool
	}{
		"shipped policies": {shipped, true},
		"passing":          {td("passing"), true},
		"mixed":            {td("mixed"), false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rep := run(t, policytest.Config{Paths: []string{c.path}})
			want := opaSummary(t, c.path)
			got := summaryLine.FindAllString(pretty(t, rep, false), -1)
			if !slices.Equal(got, want) {
				t.Errorf("summary %q, opa's tester says %q", got, want)
			}
			if rep.Passed != c.passed {
				t.Errorf("Passed = %t, want %t", rep.Passed, c.passed)
			}
		})
	}
}

func TestMixedOutcomes(t *testing.T) {
	t.Parallel()
	rep := run(t, policytest.Config{Paths: []string{td("mixed")}})
	byName := map[string]*policytest.Result{}
	for _, r := range rep.Tests {
		byName[r.Name] = r
	}
	want := map[string]policytest.Outcome{
		"test_allow":           policytest.Pass,
		"test_deny_prints":     policytest.Pass,
		"test_double_is_wrong": policytest.Fail,
		"test_conflict":        policytest.Error,
		"todo_test_later":      policytest.Skip,
		"test_cases/two":       policytest.Pass,
		"test_cases/three":     policytest.Fail,
	}
	for name, o := range want {
		r := byName[name]
		if r == nil {
			t.Errorf("%s: not reported (got %v)", name, slices.Collect(maps.Keys(byName)))
			continue
		}
		if r.Result != o {
			t.Errorf("%s: %s, want %s", name, r.Result, o)
		}
	}
	if len(rep.Tests) != len(want) {
		t.Errorf("%d results, want %d", len(rep.Tests), len(want))
	}

	f := byName["test_double_is_wrong"].Failure
	if f == nil || f.Location == nil {
		t.Fatalf("failure without location: %+v", f)
	}
	if !strings.HasSuffix(f.Location.File, "mixed/policy_test.rego") || f.Location.Row != 14 || f.Expression != "mixed.double(x) == 7" {
		t.Errorf("failing expression %s %q, want policy_test.rego:14 mixed.double(x) == 7", f.Location, f.Expression)
	}
	if !slices.ContainsFunc(f.Details, func(s string) bool { return strings.TrimSpace(s) == "6" }) {
		t.Errorf("details %q do not show the value 6 of mixed.double(x)", f.Details)
	}
	if e := byName["test_conflict"].Error; !strings.Contains(e, "eval_conflict_error") || !strings.Contains(e, "policy.rego:10") {
		t.Errorf("error %q does not name the conflict and its location", e)
	}

	out := pretty(t, rep, false)
	for _, s := range []string{
		"FAIL data.mixed_test.test_double_is_wrong (" + td("mixed/policy_test.rego") + ":12)",
		"  " + td("mixed/policy_test.rego") + ":14:\n    mixed.double(x) == 7\n",
		"ERROR data.mixed_test.test_conflict (",
		"SKIPPED data.mixed_test.todo_test_later (",
		"FAIL data.mixed_test.test_cases/three (",
		"PASS: 3/7\nFAIL: 2/7\nSKIPPED: 1/7\nERROR: 1/7\n",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("pretty output lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "checking alice") {
		t.Errorf("print output of a passing test shown without -v:\n%s", out)
	}
	if v := pretty(t, rep, true); !strings.Contains(v, "data.mixed_test.test_deny_prints: PASS") || !strings.Contains(v, "  checking alice\n") {
		t.Errorf("-v does not list the passing test with its print output:\n%s", v)
	}
}

func TestRunFilter(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		run   string
		names []string
	}{
		"one test":          {`test_allow$`, []string{"test_allow"}},
		"full name":         {`^data\.mixed_test\.test_d`, []string{"test_deny_prints", "test_double_is_wrong"}},
		"test cases":        {`test_cases`, []string{"test_cases/three", "test_cases/two"}},
		"todo still listed": {`later`, []string{"todo_test_later"}},
		"nothing":           {`nothing-matches`, nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rep := run(t, policytest.Config{Paths: []string{td("mixed")}, Run: c.run})
			var got []string
			for _, r := range rep.Tests {
				got = append(got, r.Name)
			}
			slices.Sort(got)
			if !slices.Equal(got, c.names) {
				t.Errorf("--run %q ran %q, want %q", c.run, got, c.names)
			}
		})
	}
}

func TestStaticData(t *testing.T) {
	t.Parallel()
	// lib/data.json is data.lib; ignored.json (max 100) is not data, or
	// test_not_within would fail.
	rep := run(t, policytest.Config{Paths: []string{td("passing")}})
	if !rep.Passed || rep.Summary.Pass != 3 {
		t.Fatalf("passing suite: %+v\n%s", rep.Summary, pretty(t, rep, true))
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	rep := run(t, policytest.Config{Paths: []string{td("slow")}, Timeout: 100 * time.Millisecond})
	for _, r := range rep.Tests {
		want := map[string]policytest.Outcome{"test_slow": policytest.Error, "test_fast": policytest.Pass}[r.Name]
		if r.Result != want {
			t.Errorf("%s: %s, want %s", r.Name, r.Result, want)
		}
		if r.Name == "test_slow" && !strings.Contains(r.Error, "timed out after 100ms") {
			t.Errorf("test_slow: error %q does not say it timed out", r.Error)
		}
	}
	if len(rep.Tests) != 2 || rep.Passed {
		t.Errorf("%d tests, passed %t", len(rep.Tests), rep.Passed)
	}
}

func TestCompileError(t *testing.T) {
	t.Parallel()
	_, err := policytest.Run(t.Context(), policytest.Config{Paths: []string{td("broken")}})
	var ce *policytest.CompileError
	if !errors.As(err, &ce) {
		t.Fatalf("Run: %v, want a *CompileError", err)
	}
	want := td("broken/unsafe.rego") + ":4:2: var name is unsafe"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start with %q", err, want)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	cases := map[string]policytest.Config{
		"missing path":  {Paths: []string{td("nope")}},
		"bad regexp":    {Paths: []string{td("mixed")}, Run: "("},
		"bad threshold": {Paths: []string{td("mixed")}, Threshold: 101},
		"nothing found": {Paths: []string{td("fmt/../check/unused/..")}, Ignore: []string{"*.rego"}},
		"bad glob":      {Paths: []string{td("mixed")}, Ignore: []string{"["}},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if _, err := policytest.Run(t.Context(), cfg); !errors.Is(err, policytest.ErrUsage) {
				t.Errorf("Run: %v, want ErrUsage", err)
			}
		})
	}
}

func TestCoverage(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		threshold float64
		passed    bool
	}{
		"no threshold":      {0, true},
		"threshold met":     {50, true},
		"threshold not met": {99.5, false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rep := run(t, policytest.Config{Paths: []string{td("passing")}, Coverage: true, Threshold: c.threshold})
			cov := rep.Coverage
			if cov == nil {
				t.Fatal("no coverage")
			}
			var lib *policytest.FileCoverage
			for _, f := range cov.Files {
				if strings.HasSuffix(f.File, "lib/lib.rego") {
					lib = f
				}
			}
			if lib == nil {
				t.Fatalf("no coverage of lib.rego in %+v", cov.Files)
			}
			// label(n) := "large" (line 8) is never evaluated by the tests.
			if !slices.ContainsFunc(lib.NotCovered, func(r policytest.LineRange) bool { return r.Start <= 8 && 8 <= r.End }) {
				t.Errorf("lib.rego not covered %v, want line 8 among them", lib.NotCovered)
			}
			if lib.Percent <= 0 || lib.Percent >= 100 || lib.CoveredLines == 0 || lib.NotCoveredLines == 0 {
				t.Errorf("lib.rego: %.1f%% (%d covered, %d not)", lib.Percent, lib.CoveredLines, lib.NotCoveredLines)
			}
			if cov.Percent <= 0 || cov.Percent >= 100 {
				t.Errorf("total %.1f%%", cov.Percent)
			}
			if rep.Passed != c.passed || cov.BelowThreshold == c.passed {
				t.Errorf("threshold %v at %.1f%%: passed %t, below %t; want passed %t", c.threshold, cov.Percent, rep.Passed, cov.BelowThreshold, c.passed)
			}
			out := pretty(t, rep, false)
			if !strings.Contains(out, "COVERAGE: ") || !strings.Contains(out, "lib/lib.rego") {
				t.Errorf("pretty output lacks the coverage table:\n%s", out)
			}
		})
	}
}

func TestShippedPoliciesMeetTheThreshold(t *testing.T) {
	t.Parallel()
	rep := run(t, policytest.Config{Paths: []string{shipped}, Threshold: 90})
	if !rep.Passed {
		t.Fatalf("shipped policies:\n%s", pretty(t, rep, false))
	}
	if rep.FixturesSummary.Pass < 12 {
		t.Errorf("%d shipped fixture cases pass, want at least 12", rep.FixturesSummary.Pass)
	}
}

// junitDoc is an independent reading of JUnit XML.
type junitDoc struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Errors   int      `xml:"errors,attr"`
	Skipped  int      `xml:"skipped,attr"`
	Suites   []struct {
		Name     string `xml:"name,attr"`
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Errors   int    `xml:"errors,attr"`
		Skipped  int    `xml:"skipped,attr"`
		Time     string `xml:"time,attr"`
		Cases    []struct {
			Name    string `xml:"name,attr"`
			Time    string `xml:"time,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
			Skipped   *struct{} `xml:"skipped"`
			SystemOut string    `xml:"system-out"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func TestJUnit(t *testing.T) {
	t.Parallel()
	rep := run(t, policytest.Config{Paths: []string{td("mixed"), td("fixtures")}})
	var b bytes.Buffer
	if err := policytest.WriteJUnit(&b, rep); err != nil {
		t.Fatal(err)
	}
	var doc junitDoc
	if err := xml.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatalf("the JUnit output does not parse: %v\n%s", err, b.String())
	}
	type counts struct{ tests, failures, errors, skipped int }
	want := map[string]counts{
		"data.mixed_test":                        {7, 2, 1, 1},
		filepath.ToSlash(td("fixtures/failing")): {4, 4, 0, 0},
		filepath.ToSlash(td("fixtures/passing")): {5, 0, 0, 1},
	}
	if len(doc.Suites) != len(want) {
		t.Errorf("%d suites, want %d", len(doc.Suites), len(want))
	}
	var total counts
	for _, s := range doc.Suites {
		w, ok := want[s.Name]
		if !ok {
			t.Errorf("unexpected suite %q", s.Name)
			continue
		}
		got := counts{s.Tests, s.Failures, s.Errors, s.Skipped}
		if got != w {
			t.Errorf("suite %s: %+v, want %+v", s.Name, got, w)
		}
		var fails, errs, skips int
		for _, c := range s.Cases {
			if c.Time == "" {
				t.Errorf("%s/%s: no time attribute", s.Name, c.Name)
			}
			if c.Failure != nil {
				fails++
				if c.Failure.Message == "" || c.Failure.Text == "" {
					t.Errorf("%s/%s: failure without message or text", s.Name, c.Name)
				}
			}
			if c.Error != nil {
				errs++
			}
			if c.Skipped != nil {
				skips++
			}
			if c.Name == "test_deny_prints" && !strings.Contains(c.SystemOut, "checking alice") {
				t.Errorf("test_deny_prints: system-out %q lacks the print output", c.SystemOut)
			}
			if c.Name == "wrong status" && !strings.Contains(c.Failure.Text, "status: want 403, got 200") {
				t.Errorf("wrong status: failure %q does not say want vs got", c.Failure.Text)
			}
		}
		if (counts{len(s.Cases), fails, errs, skips}) != got {
			t.Errorf("suite %s: the children (%d cases, %d failures, %d errors, %d skipped) disagree with the attributes %+v", s.Name, len(s.Cases), fails, errs, skips, got)
		}
		total.tests += s.Tests
		total.failures += s.Failures
		total.errors += s.Errors
		total.skipped += s.Skipped
	}
	if (counts{doc.Tests, doc.Failures, doc.Errors, doc.Skipped}) != total {
		t.Errorf("testsuites totals %d/%d/%d/%d, suites sum to %+v", doc.Tests, doc.Failures, doc.Errors, doc.Skipped, total)
	}
}

func TestFixtures(t *testing.T) {
	t.Parallel()
	rep := run(t, policytest.Config{Paths: []string{td("fixtures")}})
	got := map[string]*policytest.Result{}
	for _, r := range rep.Fixtures {
		got[r.FullName()] = r
	}
	failing, passing := filepath.ToSlash(td("fixtures/failing")), filepath.ToSlash(td("fixtures/passing"))
	cases := map[string]struct {
		outcome policytest.Outcome
		message string
	}{
		passing + "/bob is allowed":    {policytest.Pass, ""},
		passing + "/dave is suspended": {policytest.Pass, ""},
		passing + "/no token":          {policytest.Pass, ""},
		passing + "/expired token":     {policytest.Pass, ""},
		passing + "/not written yet":   {policytest.Skip, ""},
		failing + "/wrong status":      {policytest.Fail, "status: want 403, got 200"},
		failing + "/wrong reason":      {policytest.Fail, `reason: want "suspended", got "denied"`},
		failing + "/wrong header":      {policytest.Fail, `header x-user: want "alice", got "bob"`},
		failing + "/missing header":    {policytest.Fail, `header www-authenticate: want it absent, got "Bearer"`},
	}
	for name, c := range cases {
		r := got[name]
		if r == nil {
			t.Errorf("%s: not reported", name)
			continue
		}
		if r.Result != c.outcome {
			t.Errorf("%s: %s, want %s (%+v)", name, r.Result, c.outcome, r.Failure)
		}
		if c.message != "" && (r.Failure == nil || r.Failure.Message != c.message) {
			t.Errorf("%s: failure %+v, want %q", name, r.Failure, c.message)
		}
		if r.Location == nil || r.Location.Row == 0 || !strings.HasSuffix(r.Location.File, "fixture.yaml") {
			t.Errorf("%s: location %v, want its line in fixture.yaml", name, r.Location)
		}
	}
	if rep.Passed {
		t.Error("a run with failing cases passed")
	}
	out := pretty(t, rep, false)
	want := "FAIL " + failing + ": wrong status (" + td("fixtures/failing/fixture.yaml") + ":5)\n  status: want 403, got 200\n  got: allowed, 200 allowed\n"
	if !strings.Contains(out, want) {
		t.Errorf("pretty output lacks\n%s\nin\n%s", want, out)
	}
}

func TestFixtureErrors(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		yaml string
		want string
	}{
		"unknown field":      {"cases:\n  - name: x\n    expct: {status: 200}\n", "field expct not found"},
		"no expectation":     {"cases:\n  - name: x\n    path: /\n", "no expect:"},
		"bad token error":    {"cases:\n  - name: x\n    token: {subject: a, error: stolen}\n    expect: {status: 401}\n", `"stolen" is not one of`},
		"unknown token key":  {"cases:\n  - name: x\n    token: {sub: a}\n    expect: {status: 401}\n", `unknown field "sub"`},
		"missing tenancy":    {"tenancy: nope.json\ncases:\n  - name: x\n    expect: {status: 401}\n", "nope.json"},
		"broken invariant":   {"tenancy: t.json\ncases:\n  - name: x\n    expect: {status: 401}\n", "users/u"},
		"duplicate names":    {"cases:\n  - {name: x, expect: {status: 1}}\n  - {name: x, expect: {status: 1}}\n", "used twice"},
		"not yaml":           {"cases: [\n", "fixture.yaml:"},
		"both request forms": {"cases:\n  - name: x\n    path: /\n    check_request: {attributes: {}}\n    expect: {status: 1}\n", "not both"},
		// issuers: the one validation of issuer lists (token.ValidateIssuers)
		"issuer listed twice": {"issuers: [{issuer: a}, {issuer: a}]\ncases:\n  - {name: x, expect: {status: 1}}\n", `issuers: invalid issuer config: issuer "a": listed twice`},
		"issuer without iss":  {"issuers: [{tenant: t1}]\ncases:\n  - {name: x, expect: {status: 1}}\n", "issuer must not be empty"},
		"issuer's bad tenant": {"issuers: [{issuer: a, tenant: \"not a tenant\"}]\ncases:\n  - {name: x, expect: {status: 1}}\n", "not a valid tenant id"},
		"issuer's empty aud":  {"issuers: [{issuer: a, audiences: [\"\"]}]\ncases:\n  - {name: x, expect: {status: 1}}\n", "empty audience"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// a user of an unknown tenant: the control endpoint refuses it
			writeFile(t, filepath.Join(dir, "t.json"), `{"ops": [{"op": "put", "collection": "users", "value": {"id": "u", "tenant": "nowhere"}}]}`)
			writeFile(t, filepath.Join(dir, "fx", "fixture.yaml"), c.yaml)
			writeFile(t, filepath.Join(dir, "fx", "t.json"), `{"ops": [{"op": "put", "collection": "users", "value": {"id": "u", "tenant": "nowhere"}}]}`)
			_, err := policytest.Run(t.Context(), policytest.Config{Paths: []string{filepath.Join(dir, "fx"), td("fixtures/passing/policy.rego")}})
			if !errors.Is(err, policytest.ErrFixture) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Run: %v, want ErrFixture naming %q", err, c.want)
			}
		})
	}
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		path     string
		findings []string
	}{
		"clean": {td("check/clean"), nil},
		"unused": {td("check/unused"), []string{
			td("check/unused/unused.rego") + ":3:1: import data.lib unused (rego_compile_error)",
			td("check/unused/unused.rego") + ":6:2: assigned var x unused (rego_compile_error)",
		}},
		"shipped policies": {shipped, nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			findings, err := policytest.Check(t.Context(), []string{c.path}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := policytest.FormatErrors(findings); !slices.Equal(got, c.findings) {
				t.Errorf("findings\n%q\nwant\n%q", got, c.findings)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		path    string
		changed bool
	}{
		"unformatted": {td("fmt/unformatted.rego"), true},
		"formatted":   {td("check/clean/clean.rego"), false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, changed, err := policytest.FormatFile(c.path)
			if err != nil {
				t.Fatal(err)
			}
			if changed != c.changed {
				t.Errorf("changed = %t, want %t", changed, c.changed)
			}
			if again, err := policytest.Format("x.rego", out); err != nil || !bytes.Equal(again, out) {
				t.Errorf("formatting is not idempotent: %v", err)
			}
		})
	}
	files, err := policytest.RegoFiles([]string{shipped}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, changed, err := policytest.FormatFile(f); err != nil || changed {
			t.Errorf("%s: not formatted (%v): run gatehouse fmt -w policies", f, err)
		}
	}
}

// TestBuiltinsInRegoTests: a Rego unit test has no tenancy cache: a
// Gatehouse built-in it calls stops the test with an error saying to mock
// it (never a pass, a fail or an undefined that `not` would turn around);
// mocked with `with`, it answers as the mock says; `gatehouse check`
// accepts both.
func TestBuiltinsInRegoTests(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "x_test.rego"), `package x_test

test_unmocked if gatehouse.tenancy.tenant_active("t")

test_unmocked_negated if not gatehouse.tenancy.tenant_active("t")

test_mocked if gatehouse.tenancy.tenant_active("t") with gatehouse.tenancy.tenant_active as active

test_mocked_decide if {
	a := gatehouse.tenancy.decide({"subject": "u"}) with gatehouse.tenancy.decide as answer
	a.reason == "allowed"
}

active(_) := true

answer(_) := {"reason": "allowed"}
`)
	rep := run(t, policytest.Config{Paths: []string{dir}})
	got := map[string]*policytest.Result{}
	for _, r := range rep.Tests {
		got[r.Name] = r
	}
	for _, name := range []string{"test_unmocked", "test_unmocked_negated"} {
		r := got[name]
		if r == nil || r.Result != policytest.Error || !strings.Contains(r.Error, "no tenancy cache") || !strings.Contains(r.Error, "mock") {
			t.Errorf("%s: %+v", name, r)
		}
	}
	for _, name := range []string{"test_mocked", "test_mocked_decide"} {
		if r := got[name]; r == nil || r.Result != policytest.Pass {
			t.Errorf("%s: %+v", name, r)
		}
	}
	findings, err := policytest.Check(t.Context(), []string{dir}, nil)
	if err != nil || len(findings) > 0 {
		t.Fatalf("check: %v %v", findings, err)
	}
}
