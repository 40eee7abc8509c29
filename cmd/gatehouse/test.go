package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/policytest"
)

func newTestCmd() *cobra.Command {
	var (
		cfg     policytest.Config
		format  string
		verbose bool
	)
	cmd := &cobra.Command{
		Use:   "test [PATH...]",
		Short: "Run the Rego tests and request fixtures under the paths (default .)",
		Long: `Run Rego unit tests and request fixtures.

Rego tests: every test_ rule of the .rego files under the paths (*_test.rego
included) runs with OPA's tester, as "opa test" runs it: a test passes when it
is true, fails when it is false or undefined, errors when evaluation fails;
todo_test_ rules are skipped. data.json / data.yaml / data.yml files are
static data at the path of their folder (other JSON and YAML files are not
data, as for serve).

Fixtures: every folder holding a fixture.yaml is a list of requests (Envoy
CheckRequests or a short form: method, path, host, headers, token, context,
body) with their expected answers, run through the sidecar's own path (input
builder, token verification with minted tokens, engine, response mapping)
against the policies under test (all .rego files but *_test.rego) and the
fixture's tenancy data. See the policytest package documentation.

Formats: pretty (failures with the failing expression and its file:line, then
"PASS: n/m" as opa prints it), json (a stable document: tests, fixtures,
coverage, summaries) and junit (JUnit XML, one testsuite per Rego package
and per fixture folder).

Exit codes: 0 every test and case passed (and coverage meets --threshold);
1 a test or case failed or errored, or coverage is below --threshold;
2 usage error, a policy that does not parse or compile (printed as
file:line:col: message), or a fixture that cannot run.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !slices.Contains(policytest.Formats, format) {
				return usageErr(fmt.Errorf("--format %q: want pretty, json or junit", format))
			}
			cfg.Paths = args
			rep, err := policytest.Run(cmd.Context(), cfg)
			if err != nil {
				return policyErr(cmd.ErrOrStderr(), err)
			}
			if err := policytest.WriteReport(cmd.OutOrStdout(), rep, format, verbose); err != nil {
				return failureErr(err)
			}
			if !rep.Passed {
				return failureErr(testVerdict(rep))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&format, "format", "f", policytest.FormatPretty, "output format: pretty, json or junit")
	fl.BoolVarP(&cfg.Coverage, "coverage", "c", false, "report line coverage per file and in total")
	fl.Float64Var(&cfg.Threshold, "threshold", 0, "exit 1 when total coverage is below this percentage (implies --coverage)")
	fl.StringVarP(&cfg.Run, "run", "r", "", "run only tests (data.pkg.test_name) and fixture cases (folder/case name) matching this regular expression")
	fl.BoolVarP(&verbose, "verbose", "v", false, "list every test and case, with print() output")
	fl.DurationVar(&cfg.Timeout, "timeout", 5*time.Second, "time limit of each test and fixture case")
	fl.StringArrayVar(&cfg.Ignore, "ignore", nil, "leave out files and folders matching this glob (repeatable; matched against the name and the path)")
	fl.StringVar(&cfg.Decision, "decision", authz.DefaultDecision, "decision rule of fixtures (a fixture's decision: wins)")
	return cmd
}

// testVerdict says why a run did not pass.
func testVerdict(rep *policytest.Report) error {
	t := rep.Total
	if t.Fail+t.Error > 0 {
		return fmt.Errorf("%d of %d tests and fixture cases did not pass", t.Fail+t.Error, t.Total)
	}
	if c := rep.Coverage; c != nil && c.BelowThreshold {
		return fmt.Errorf("coverage %.2f%% is below the threshold %g%%", c.Percent, c.Threshold)
	}
	return errors.New("tests did not pass")
}

// policyErr reports an error of the policy tools: compile errors one per
// line as file:line:col: message on stderr, then exit 2; usage and fixture
// errors exit 2; anything else is a runtime failure (1).
func policyErr(stderr io.Writer, err error) error {
	var ce *policytest.CompileError
	if errors.As(err, &ce) {
		for _, line := range policytest.FormatErrors(ce.Errors) {
			fmt.Fprintln(stderr, line)
		}
		return usageErr(fmt.Errorf("policies do not compile (%s)", plural(len(ce.Errors), "error")))
	}
	if errors.Is(err, policytest.ErrUsage) || errors.Is(err, policytest.ErrFixture) || errors.Is(err, policytest.ErrInput) {
		return usageErr(err)
	}
	return failureErr(err)
}

// plural is "1 error", "2 errors".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
