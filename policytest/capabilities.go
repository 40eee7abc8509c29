package policytest

import (
	"encoding/json"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/replica"
)

// Capabilities returns the capabilities file of this Gatehouse: OPA's
// capabilities for the OPA version it embeds plus Gatehouse's built-in
// functions (SPEC §12), as JSON in the layout `opa capabilities` prints.
// `opa check --capabilities FILE`, `opa test --capabilities FILE`, Regal
// and editors then accept policies calling the built-ins.
func Capabilities() ([]byte, error) {
	b, err := json.MarshalIndent(authz.Capabilities(replica.Builtins()), "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
