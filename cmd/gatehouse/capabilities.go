package main

import (
	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/policytest"
)

func newCapabilitiesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "capabilities",
		Short: "Print OPA's capabilities for this version plus Gatehouse's built-in functions",
		Long: `Print the capabilities JSON of this Gatehouse: every built-in function of the
OPA version it embeds, plus Gatehouse's own (gatehouse.tenancy.*, answering
tenancy questions natively from the sidecar's cache). Give it to OPA's tools
and editors so that they accept policies calling the Gatehouse built-ins:

  gatehouse capabilities > capabilities.json
  opa check --capabilities capabilities.json policies
  opa test --capabilities capabilities.json policies   # tests that mock the built-ins

The shipped policies carry a copy (policies/capabilities.json).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := policytest.Capabilities()
			if err != nil {
				return failureErr(err)
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
}
