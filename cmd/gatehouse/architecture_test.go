package main

import (
	"go/build"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestArchitectureTableMatchesImports: the README's table of packages
// ("what it imports of the project (nothing else)") says exactly what
// each package's non-test files import of the module: nothing missing,
// nothing extra (`internal/…` stands for any internal package).
func TestArchitectureTableMatchesImports(t *testing.T) {
	t.Parallel()
	const module = "github.com/gatehouse-dev/gatehouse/"
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z/]+)` \\|.*\\| ([^|]*) \\|$")
	name := regexp.MustCompile("`([a-z/…]+)`")
	rows := row.FindAllSubmatch(readme, -1)
	if len(rows) < 10 {
		t.Fatalf("found %d rows of the package table in README.md", len(rows))
	}
	for _, r := range rows {
		pkg, listed := string(r[1]), string(r[2])
		if strings.Contains(listed, "all of the above") {
			continue
		}
		var want []string
		anyInternal := false
		for _, m := range name.FindAllStringSubmatch(listed, -1) {
			if m[1] == "internal/…" {
				anyInternal = true
				continue
			}
			want = append(want, m[1])
		}
		p, err := build.ImportDir(filepath.Join("..", "..", pkg), 0)
		if err != nil {
			t.Errorf("%s: %v", pkg, err)
			continue
		}
		var got []string
		for _, imp := range p.Imports {
			if rest, ok := strings.CutPrefix(imp, module); ok && !(anyInternal && strings.HasPrefix(rest, "internal/")) {
				got = append(got, rest)
			}
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("README.md says %s imports %v of the project; its files import %v", pkg, want, got)
		}
	}
}
