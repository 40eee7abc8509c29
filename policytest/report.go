package policytest

import (
	"fmt"
	"time"
)

// Outcome is the result of one test or fixture case.
type Outcome string

// Outcomes.
const (
	// Pass: the test evaluated to true; the case matched its expectations.
	Pass Outcome = "pass"
	// Fail: the test was false or undefined; the case did not match.
	Fail Outcome = "fail"
	// Error: evaluation failed (a conflict, a timeout, "cannot decide").
	Error Outcome = "error"
	// Skip: a todo_test_ rule, or a case with skip:.
	Skip Outcome = "skip"
)

// Kinds of results.
const (
	KindRego    = "rego"
	KindFixture = "fixture"
)

// Location is a position in a file (row and col count from 1; col 0 =
// unknown).
type Location struct {
	File string `json:"file"`
	Row  int    `json:"row"`
	Col  int    `json:"col,omitempty"`
}

// String is "file:row".
func (l *Location) String() string {
	if l == nil {
		return ""
	}
	return fmt.Sprintf("%s:%d", l.File, l.Row)
}

// Result is the result of one Rego test or fixture case.
type Result struct {
	// Kind is "rego" or "fixture".
	Kind string `json:"kind"`
	// Package is the Rego package (data.envoy.authz_test) of a test, the
	// folder of a fixture case.
	Package string `json:"package"`
	// Name is the test rule's name (test_x; a test case of a test is
	// test_x/<case>), or the case's name.
	Name string `json:"name"`
	// Location is the test rule's head, or the case in fixture.yaml.
	Location *Location `json:"location,omitempty"`
	// Result is the outcome.
	Result Outcome `json:"result"`
	// Duration is how long the test took.
	Duration time.Duration `json:"-"`
	// DurationNS is Duration in nanoseconds (for JSON).
	DurationNS int64 `json:"duration_ns"`
	// Output is the print() output of a test.
	Output string `json:"output,omitempty"`
	// Failure explains a failed test or case.
	Failure *Failure `json:"failure,omitempty"`
	// Error is the evaluation error of an erroring test or case, or why it
	// was skipped.
	Error string `json:"error,omitempty"`
	// Got is what a fixture case was answered.
	Got *Got `json:"got,omitempty"`
}

// FullName is data.pkg.test_name for a test, folder/case name for a case.
func (r *Result) FullName() string {
	if r.Kind == KindFixture {
		return r.Package + "/" + r.Name
	}
	return r.Package + "." + r.Name
}

// Failure explains why a test or case failed.
type Failure struct {
	// Message is a one-line summary.
	Message string `json:"message"`
	// Location is where the failing expression is (Rego tests).
	Location *Location `json:"location,omitempty"`
	// Expression is the failing expression's source text (Rego tests).
	Expression string `json:"expression,omitempty"`
	// Details are further lines: the values of the expression's variables
	// (Rego tests), every expectation that did not hold (fixtures).
	Details []string `json:"details,omitempty"`
}

// Got is the answer a fixture case received.
type Got struct {
	Allowed         bool              `json:"allowed"`
	Status          int               `json:"status"`
	Reason          string            `json:"reason,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
	HeadersToRemove []string          `json:"headers_to_remove,omitempty"`
	Body            string            `json:"body,omitempty"`
	DecisionID      string            `json:"decision_id,omitempty"`
}

// Summary counts results by outcome.
type Summary struct {
	Total int `json:"total"`
	Pass  int `json:"pass"`
	Fail  int `json:"fail"`
	Error int `json:"error"`
	Skip  int `json:"skip"`
}

func (s *Summary) add(o Outcome) {
	s.Total++
	switch o {
	case Pass:
		s.Pass++
	case Fail:
		s.Fail++
	case Error:
		s.Error++
	case Skip:
		s.Skip++
	}
}

// Report is the outcome of a run: the JSON format is this document.
type Report struct {
	// Tests are the Rego tests, sorted by file and line.
	Tests []*Result `json:"tests"`
	// Fixtures are the fixture cases, by folder and order in the file.
	Fixtures []*Result `json:"fixtures"`
	// Coverage is set with --coverage (or --threshold).
	Coverage *Coverage `json:"coverage,omitempty"`
	// Summary counts tests, Fixtures counts fixture cases, Total both.
	Summary         Summary `json:"summary"`
	FixturesSummary Summary `json:"fixtures_summary"`
	Total           Summary `json:"total"`
	// Passed is true when nothing failed or errored and coverage (when
	// a threshold is set) is not below the threshold: exit code 0.
	Passed bool `json:"passed"`
}

// finish computes the summaries and the verdict.
func (r *Report) finish() {
	r.Summary, r.FixturesSummary, r.Total = Summary{}, Summary{}, Summary{}
	for _, t := range r.Tests {
		r.Summary.add(t.Result)
		r.Total.add(t.Result)
	}
	for _, f := range r.Fixtures {
		r.FixturesSummary.add(f.Result)
		r.Total.add(f.Result)
	}
	r.Passed = r.Total.Fail == 0 && r.Total.Error == 0 && (r.Coverage == nil || !r.Coverage.BelowThreshold)
}

// Coverage is the line coverage of the Rego modules by the Rego tests
// (OPA's cover report: every module, *_test.rego included, as `opa test
// --coverage` counts it).
type Coverage struct {
	// Files are the modules, sorted by name.
	Files []*FileCoverage `json:"files"`
	// CoveredLines and NotCoveredLines are totals over Files.
	CoveredLines    int `json:"covered_lines"`
	NotCoveredLines int `json:"not_covered_lines"`
	// Percent is the total coverage, 0-100.
	Percent float64 `json:"coverage"`
	// Threshold is --threshold (0 = none).
	Threshold float64 `json:"threshold,omitempty"`
	// BelowThreshold is true when Percent < Threshold.
	BelowThreshold bool `json:"below_threshold"`
}

// FileCoverage is the coverage of one module.
type FileCoverage struct {
	File            string      `json:"file"`
	Covered         []LineRange `json:"covered"`
	NotCovered      []LineRange `json:"not_covered"`
	CoveredLines    int         `json:"covered_lines"`
	NotCoveredLines int         `json:"not_covered_lines"`
	Percent         float64     `json:"coverage"`
}

// LineRange is an inclusive range of lines.
type LineRange struct {
	Start int `json:"start"`
	End   int `json:"end"`
}

// String is "12" or "12-14".
func (r LineRange) String() string {
	if r.Start == r.End {
		return fmt.Sprint(r.Start)
	}
	return fmt.Sprintf("%d-%d", r.Start, r.End)
}
