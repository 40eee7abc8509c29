// Package policies embeds the shipped Rego policies (the tenancy library and
// the default envoy.authz decision, with their tests) so that `gatehouse dev`
// runs without a checkout.
package policies

import "embed"

// FS holds every .rego file under policies/.
//
//go:embed envoy gatehouse authzen
var FS embed.FS
