package policies

import "embed"

// FS holds every .rego file under policies/.
//
//go:embed envoy gatehouse
var FS embed.FS
