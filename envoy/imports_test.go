package envoy_test

import (
	"go/build"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
)

// Decision logs and shadow policies implement the Observer envoy declares.
var (
	_ envoy.Observer = (*decisionlog.Logger)(nil)
	_ envoy.Observer = (*decisionlog.Shadow)(nil)
)

// TestImportsOfTheProject: the wire package imports, of the project, only
// the engine and the listeners (README, Architecture); observers are
// declared here and implemented elsewhere.
func TestImportsOfTheProject(t *testing.T) {
	t.Parallel()
	const module = "github.com/gatehouse-dev/gatehouse/"
	allowed := map[string]bool{module + "authz": true, module + "internal/netx": true}
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports { // non-test files only
		if strings.HasPrefix(imp, module) && !allowed[imp] {
			t.Errorf("envoy imports %s; of the project it may import only authz and internal/netx", imp)
		}
	}
}
