package policies

import "embed"

// FS holds every .rego file under policies/.
//
//go:embed envoy gatehouse authzen
var FS embed.FS
