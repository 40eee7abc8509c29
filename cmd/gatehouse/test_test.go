package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"path/filepath"
	"strings"
	"testing"
)

const (
	shippedPolicies = "../../policies"
	policytestData  = "../../testdata/policytest"
)

func ptd(p string) string { return filepath.Join(policytestData, p) }

// gatehouse runs the command line and returns the exit code, stdout and
// stderr.
func gatehouse(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestTestCommand(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		"shipped policies with coverage": {
			// a generous --timeout: the race detector on a busy machine is slow
			[]string{"--coverage", "--threshold", "90", "--timeout", "1m", shippedPolicies}, exitOK,
			[]string{"PASS: ", "FIXTURES PASS: ", "COVERAGE: ", "coverage meets the threshold 90%"}, nil,
		},
		"a failing test names the expression": {
			[]string{ptd("mixed")}, exitFailure,
			[]string{
				"FAIL data.mixed_test.test_double_is_wrong (" + ptd("mixed/policy_test.rego") + ":12)\n  " + ptd("mixed/policy_test.rego") + ":14:\n    mixed.double(x) == 7\n",
				"ERROR data.mixed_test.test_conflict",
				"SKIPPED data.mixed_test.todo_test_later",
				"PASS: 3/7\nFAIL: 2/7\nSKIPPED: 1/7\nERROR: 1/7\n",
			},
			[]string{"3 of 7 tests and fixture cases did not pass"},
		},
		"--run selects": {
			[]string{"--run", "test_allow|test_deny", ptd("mixed")}, exitOK,
			[]string{"PASS: 2/2"}, nil,
		},
		"-v prints passing tests and their output": {
			[]string{"-v", "--run", "test_deny_prints", ptd("mixed")}, exitOK,
			[]string{"data.mixed_test.test_deny_prints: PASS (", "  checking alice\n"}, nil,
		},
		"a failing fixture says want and got": {
			[]string{ptd("fixtures")}, exitFailure,
			[]string{
				"FAIL " + ptd("fixtures/failing") + ": wrong status (" + ptd("fixtures/failing/fixture.yaml") + ":5)\n  status: want 403, got 200\n",
				`  reason: want "suspended", got "denied"`,
				`  header x-user: want "alice", got "bob"`,
				"FIXTURES PASS: 4/9\nFIXTURES FAIL: 4/9\nFIXTURES SKIPPED: 1/9\n",
			},
			nil,
		},
		"a compile error exits 2 with file:line": {
			[]string{ptd("broken")}, exitUsage, nil,
			[]string{ptd("broken/unsafe.rego") + ":4:2: var name is unsafe", "policies do not compile"},
		},
		"coverage below the threshold": {
			[]string{"--threshold", "99.5", ptd("passing")}, exitFailure,
			[]string{"PASS: 3/3", "FAIL: coverage "},
			[]string{"is below the threshold 99.5%"},
		},
		"bad format":        {[]string{"--format", "xml", ptd("passing")}, exitUsage, nil, []string{`--format "xml"`}},
		"bad regexp":        {[]string{"--run", "(", ptd("passing")}, exitUsage, nil, []string{"--run"}},
		"missing path":      {[]string{ptd("nope")}, exitUsage, nil, []string{"nope"}},
		"ignore everything": {[]string{"--ignore", "*.rego", ptd("mixed")}, exitUsage, nil, []string{"no .rego files or fixtures"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := gatehouse(t, append([]string{"test"}, c.args...)...)
			if code != c.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, c.code, stdout, stderr)
			}
			for _, s := range c.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			for _, s := range c.stderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
		})
	}
}

func TestTestFormats(t *testing.T) {
	t.Parallel()
	t.Run("junit", func(t *testing.T) {
		t.Parallel()
		code, stdout, _ := gatehouse(t, "test", "--format", "junit", "--threshold", "10", ptd("mixed"), ptd("fixtures"))
		if code != exitFailure {
			t.Errorf("exit %d, want 1", code)
		}
		var doc struct {
			Tests    int `xml:"tests,attr"`
			Failures int `xml:"failures,attr"`
			Suites   []struct {
				Name  string `xml:"name,attr"`
				Tests int    `xml:"tests,attr"`
				Cases []struct {
					Name    string    `xml:"name,attr"`
					Failure *struct{} `xml:"failure"`
				} `xml:"testcase"`
			} `xml:"testsuite"`
		}
		if err := xml.Unmarshal([]byte(stdout), &doc); err != nil {
			t.Fatalf("not XML: %v\n%s", err, stdout)
		}
		// data.mixed_test, the two fixture folders, coverage
		if len(doc.Suites) != 4 || doc.Tests != 7+9+1 || doc.Failures != 2+4 {
			t.Errorf("%d suites, %d tests, %d failures; want 4, 17, 6", len(doc.Suites), doc.Tests, doc.Failures)
		}
	})
	t.Run("json", func(t *testing.T) {
		t.Parallel()
		code, stdout, _ := gatehouse(t, "test", "--format", "json", "--coverage", ptd("passing"), ptd("fixtures/passing"))
		if code != exitOK {
			t.Errorf("exit %d, want 0", code)
		}
		var doc struct {
			Tests []struct {
				Package, Name, Result string
				Location              struct {
					File string
					Row  int
				}
				DurationNS int64 `json:"duration_ns"`
			}
			Fixtures []struct{ Package, Name, Result string }
			Coverage struct {
				Files []struct {
					File    string
					Percent float64 `json:"coverage"`
				}
				Percent float64 `json:"coverage"`
			}
			Summary, FixturesSummary struct{ Total, Pass int }
			Passed                   bool
		}
		if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, stdout)
		}
		if len(doc.Tests) != 3 || doc.Tests[0].Package != "data.lib_test" || doc.Tests[0].Result != "pass" || doc.Tests[0].Location.Row == 0 {
			t.Errorf("tests %+v", doc.Tests)
		}
		if len(doc.Fixtures) != 5 || doc.Coverage.Percent == 0 || len(doc.Coverage.Files) == 0 || !doc.Passed {
			t.Errorf("fixtures %+v, coverage %+v, passed %t", doc.Fixtures, doc.Coverage, doc.Passed)
		}
	})
}
