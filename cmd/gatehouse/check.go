package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/policytest"
)

func newCheckCmd() *cobra.Command {
	var ignore []string
	cmd := &cobra.Command{
		Use:   "check [PATH...]",
		Short: "Compile the policies under the paths (default .) in strict mode",
		Long: `Compile every .rego file under the paths (*_test.rego included), with the
data.json / data.yaml files beside them, in OPA's strict mode. Reported, one
per line as file:line:col: message (code):

  - parse, safety (unsafe variables) and type errors;
  - strict-mode findings: unused imports, local variables assigned but never
    used, duplicate imports, input/data shadowed, deprecated built-ins.

Exit codes: 0 clean; 1 findings (any compile error, strict or not: the files
were checked and something is wrong); 2 usage error or a file that does not
parse (nothing could be checked).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			findings, err := policytest.Check(cmd.Context(), args, ignore)
			if err != nil {
				return policyErr(cmd.ErrOrStderr(), err)
			}
			for _, line := range policytest.FormatErrors(findings) {
				fmt.Fprintln(cmd.OutOrStdout(), line)
			}
			if len(findings) > 0 {
				return failureErr(errors.New(plural(len(findings), "finding")))
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&ignore, "ignore", nil, "leave out files and folders matching this glob (repeatable)")
	return cmd
}
