package policytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/replica"
)

// regoRun runs the Rego tests of modules over data with OPA's tester, as
// `opa test` does, and returns one Result per test (per leaf test case for
// tests with sub-results, which is how opa counts them).
type regoRun struct {
	modules  map[string]*ast.Module
	data     map[string]any
	filter   string
	timeout  time.Duration
	coverage bool
}

// newCompiler returns the compiler `opa test` uses.
func newCompiler(ctx context.Context, store storage.Store, txn storage.Transaction) *ast.Compiler {
	return ast.NewCompiler().
		WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn)).
		WithEnablePrintStatements(true).
		WithCapabilities(authz.Capabilities(replica.Builtins())).
		WithUseTypeCheckAnnotations(true)
}

// testBuiltins are Gatehouse's built-ins for OPA's tester. A Rego unit test
// has no tenancy cache: a built-in it calls halts with a hint to mock it
// (`with gatehouse.tenancy.decide as testing.decide`); fixtures exercise
// them for real.
func testBuiltins() []*tester.Builtin {
	var out []*tester.Builtin
	for _, b := range replica.Builtins() {
		out = append(out, &tester.Builtin{Decl: b.Decl, Func: rego.FunctionDyn(&rego.Function{
			Name: b.Decl.Name,
			Decl: b.Decl.Decl,
		}, func(bctx topdown.BuiltinContext, terms []*ast.Term) (*ast.Term, error) {
			var out *ast.Term
			err := b.Func(bctx, terms, func(t *ast.Term) error { out = t; return nil })
			if h, ok := err.(topdown.Halt); ok { // rego halts on its own error type only
				msg := h.Err.Error()
				if te, ok := h.Err.(*topdown.Error); ok {
					msg = strings.TrimPrefix(te.Message, b.Decl.Name+": ")
				}
				return nil, rego.NewHaltError(errors.New(msg))
			}
			return out, err
		})})
	}
	return out
}

// run executes the tests. A compile error is returned as *CompileError.
func (r *regoRun) run(ctx context.Context) ([]*Result, *cover.Report, error) {
	store := inmem.NewFromObject(r.data)
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer store.Abort(ctx, txn)

	var cov *cover.Cover
	runner := tester.NewRunner().
		SetCompiler(newCompiler(ctx, store, txn)).
		SetStore(store).
		SetModules(r.modules).
		AddCustomBuiltins(testBuiltins()).
		CapturePrintOutput(true).
		StackTraces(true).
		SetTimeout(r.timeout).
		SetCoverageRuns(nil).
		Filter(r.filter)
	if r.coverage {
		cov = cover.New()
		runner.SetCoverageQueryTracer(cov)
	}
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return nil, nil, compileError(err)
	}
	var results []*Result
	var failed []*tester.Result
	for tr := range ch {
		rs := r.convert(tr)
		results = append(results, rs...)
		if slices.ContainsFunc(rs, func(x *Result) bool { return x.Result == Fail }) {
			failed = append(failed, tr)
		}
	}
	if len(failed) > 0 {
		// Tracing excludes coverage (and costs): the failed tests run a
		// second time, traced, to find their failing expressions.
		r.explainFailures(ctx, store, txn, failed, results)
	}
	slices.SortStableFunc(results, func(a, b *Result) int {
		if c := strings.Compare(a.Location.File, b.Location.File); c != 0 {
			return c
		}
		if a.Location.Row != b.Location.Row {
			return a.Location.Row - b.Location.Row
		}
		return strings.Compare(a.Name, b.Name)
	})
	var rep *cover.Report
	if cov != nil {
		x := cov.Report(r.modules)
		rep = &x
	}
	return results, rep, nil
}

// convert maps a tester result to ours.
func (r *regoRun) convert(tr *tester.Result) []*Result {
	base := Result{
		Kind:       KindRego,
		Package:    tr.Package,
		Name:       tr.Name,
		Location:   location(tr.Location),
		Duration:   tr.Duration,
		DurationNS: tr.Duration.Nanoseconds(),
		Output:     string(tr.Output),
	}
	switch {
	case tr.Skip:
		base.Result = Skip
		base.Error = "todo"
	case tr.Error != nil:
		base.Result = Error
		base.Error = r.errorText(tr.Error)
	case len(tr.SubResults) > 0:
		var out []*Result
		for path, sr := range tr.SubResults.Iter {
			if len(sr.SubResults) > 0 {
				continue // only leaves count
			}
			x := base
			x.Name = tr.Name + "/" + strings.Join(path, "/")
			x.Result = Pass
			if sr.Fail {
				x.Result = Fail
				x.Failure = &Failure{Message: "test case failed"}
			}
			out = append(out, &x)
		}
		return out
	case tr.Fail:
		base.Result = Fail
		base.Failure = &Failure{Message: "test is false or undefined"}
	default:
		base.Result = Pass
	}
	return []*Result{&base}
}

// errorText renders an evaluation error with its location and, for a
// timeout, says so.
func (r *regoRun) errorText(err error) string {
	if topdown.IsCancel(err) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("timed out after %s (--timeout)", r.timeout)
	}
	var te *topdown.Error
	if errors.As(err, &te) {
		var b strings.Builder
		if te.Location != nil {
			fmt.Fprintf(&b, "%s:%d:%d: ", te.Location.File, te.Location.Row, te.Location.Col)
		}
		fmt.Fprintf(&b, "%s: %s", te.Code, te.Message)
		for _, f := range te.StackTrace {
			fmt.Fprintf(&b, "\n  at %v", f)
		}
		return b.String()
	}
	return err.Error()
}

// explainFailures runs the failed tests again with tracing and fills in
// the failing expression of each.
func (r *regoRun) explainFailures(ctx context.Context, store storage.Store, txn storage.Transaction, failed []*tester.Result, results []*Result) {
	var alts []string
	for _, tr := range failed {
		alts = append(alts, regexp.QuoteMeta(tr.Package)+`(?:\.|\[")`+regexp.QuoteMeta(tr.Name)+`(?:"\])?`)
	}
	runner := tester.NewRunner().
		SetCompiler(newCompiler(ctx, store, txn)).
		SetStore(store).
		SetModules(r.modules).
		AddCustomBuiltins(testBuiltins()).
		CapturePrintOutput(true).
		SetTimeout(r.timeout).
		EnableTracing(true).
		Filter("^(?:" + strings.Join(alts, "|") + ")$")
	ch, err := runner.RunTests(ctx, txn)
	if err != nil {
		return
	}
	byName := map[string][]*Result{}
	for _, x := range results {
		byName[x.Package+"."+x.Name] = append(byName[x.Package+"."+x.Name], x)
	}
	for tr := range ch {
		if len(tr.SubResults) == 0 {
			for _, x := range byName[tr.Package+"."+tr.Name] {
				if x.Result == Fail {
					x.Failure = failure(tr.Trace, x.Failure.Message)
				}
			}
			continue
		}
		for path, sr := range tr.SubResults.Iter {
			name := tr.Package + "." + tr.Name + "/" + strings.Join(path, "/")
			for _, x := range byName[name] {
				if x.Result == Fail {
					x.Failure = failure(sr.Trace, x.Failure.Message)
				}
			}
		}
	}
}

// failure finds the failing expression in a trace: the last expression
// that evaluated to false (as opa test --var-values reports it), with the
// values of its variables.
func failure(trace []*topdown.Event, msg string) *Failure {
	f := &Failure{Message: msg}
	for _, e := range slices.Backward(trace) {
		if e.Op != topdown.FailOp || e.Location == nil || e.QueryID == 0 {
			continue
		}
		expr, isExpr := e.Node.(*ast.Expr)
		if !isExpr {
			continue
		}
		if _, every := expr.Terms.(*ast.Every); every {
			continue // the failing expression inside the every body comes first
		}
		f.Location = location(e.Location)
		text := string(e.Location.Text)
		if text == "" {
			text = expr.String()
		}
		f.Message = "failed at " + f.Location.String() + ": " + firstLine(text)
		f.Expression = text
		var buf bytes.Buffer
		if err := topdown.PrettyEvent(&buf, e, topdown.PrettyEventOpts{PrettyVars: true}); err == nil && buf.Len() > 0 {
			// The expression, padded to its column, then the values of its
			// variables aligned below it (as opa test --var-values shows).
			lines := dedent(strings.Split(strings.TrimRight(strings.ReplaceAll(buf.String(), "\t", " "), "\n"), "\n"))
			n := min(strings.Count(text, "\n")+1, len(lines))
			f.Expression = strings.Join(lines[:n], "\n")
			f.Details = lines[n:]
		}
		break
	}
	return f
}

// dedent removes the indentation common to the non-empty lines.
func dedent(lines []string) []string {
	common := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " "))
		if common < 0 || n < common {
			common = n
		}
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		if len(l) >= common && common > 0 {
			l = l[common:]
		}
		out[i] = strings.TrimRight(l, " ")
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

func location(l *ast.Location) *Location {
	if l == nil {
		return &Location{}
	}
	return &Location{File: l.File, Row: l.Row, Col: l.Col}
}

// coverage converts OPA's cover report.
func coverage(rep *cover.Report, threshold float64) *Coverage {
	c := &Coverage{
		CoveredLines:    rep.CoveredLines,
		NotCoveredLines: rep.NotCoveredLines,
		Percent:         rep.Coverage,
		Threshold:       threshold,
		BelowThreshold:  threshold > 0 && rep.Coverage < threshold,
	}
	for file, fr := range rep.Files {
		c.Files = append(c.Files, &FileCoverage{
			File:            file,
			Covered:         lineRanges(fr.Covered),
			NotCovered:      lineRanges(fr.NotCovered),
			CoveredLines:    fr.CoveredLines,
			NotCoveredLines: fr.NotCoveredLines,
			Percent:         fr.Coverage,
		})
	}
	slices.SortFunc(c.Files, func(a, b *FileCoverage) int { return strings.Compare(a.File, b.File) })
	return c
}

// lineRanges merges OPA's ranges into sorted, disjoint line ranges.
func lineRanges(rs []cover.Range) []LineRange {
	out := make([]LineRange, 0, len(rs))
	for _, r := range rs {
		out = append(out, LineRange{Start: r.Start.Row, End: r.End.Row})
	}
	slices.SortFunc(out, func(a, b LineRange) int { return a.Start - b.Start })
	var merged []LineRange
	for _, r := range out {
		if n := len(merged); n > 0 && r.Start <= merged[n-1].End+1 {
			merged[n-1].End = max(merged[n-1].End, r.End)
			continue
		}
		merged = append(merged, r)
	}
	if merged == nil {
		merged = []LineRange{}
	}
	return merged
}
