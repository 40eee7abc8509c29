package policytest

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// FixtureFile is the name of the file that makes a folder a fixture folder.
const FixtureFile = "fixture.yaml"

// Files is what Discover found under a list of paths.
type Files struct {
	// Paths are the paths as given (the loader roots: a data file is
	// loaded at the path of its folder relative to its root).
	Paths []string
	// Rego lists the .rego files, *_test.rego included.
	Rego []string
	// Data lists the data.json / data.yaml / data.yml files.
	Data []string
	// Fixtures lists the fixture folders (each holds a fixture.yaml).
	Fixtures []string
}

// Discover walks paths (files or folders) and lists the policy, data and
// fixture files under them. Hidden entries below a root (".git") are
// skipped, as are entries matching an ignore glob (matched against the base
// name and against the slash-separated path). Symbolic links are followed.
func Discover(paths, ignore []string) (Files, error) {
	if len(paths) == 0 {
		paths = []string{"."}
	}
	for _, g := range ignore {
		if _, err := filepath.Match(g, ""); err != nil {
			return Files{}, usagef("--ignore %q: %v", g, err)
		}
	}
	f := Files{Paths: paths}
	for _, root := range paths {
		info, err := os.Stat(root)
		if err != nil {
			return Files{}, usagef("%v", err)
		}
		if !info.IsDir() {
			switch {
			case info.Name() == FixtureFile:
				f.Fixtures = append(f.Fixtures, filepath.Dir(root))
			case strings.HasSuffix(root, ".rego"):
				f.Rego = append(f.Rego, root)
			case authz.IsDataFile(info.Name()):
				f.Data = append(f.Data, root)
			default:
				return Files{}, usagef("%s is neither a .rego file, a data file nor a %s", root, FixtureFile)
			}
			continue
		}
		if err := walk(root, 0, ignore, &f); err != nil {
			return Files{}, err
		}
	}
	slices.Sort(f.Rego)
	f.Rego = slices.Compact(f.Rego)
	slices.Sort(f.Data)
	f.Data = slices.Compact(f.Data)
	slices.Sort(f.Fixtures)
	f.Fixtures = slices.Compact(f.Fixtures)
	return f, nil
}

func walk(dir string, depth int, ignore []string, f *Files) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return usagef("%v", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if skipped(p, e.Name(), ignore) {
			continue
		}
		info, err := os.Stat(p) // follows links
		if err != nil {
			continue // dangling link
		}
		if info.IsDir() {
			if depth > 64 {
				return usagef("%s: folders nested too deep (a symbolic link loop?)", p)
			}
			if err := walk(p, depth+1, ignore, f); err != nil {
				return err
			}
			continue
		}
		switch {
		case e.Name() == FixtureFile:
			f.Fixtures = append(f.Fixtures, dir)
		case strings.HasSuffix(e.Name(), ".rego"):
			f.Rego = append(f.Rego, p)
		case authz.IsDataFile(e.Name()):
			f.Data = append(f.Data, p)
		}
	}
	return nil
}

// skipped reports whether a walked entry is hidden or ignored.
func skipped(path, name string, ignore []string) bool {
	if strings.HasPrefix(name, ".") {
		return true
	}
	slash := filepath.ToSlash(path)
	for _, g := range ignore {
		if ok, _ := filepath.Match(g, name); ok {
			return true
		}
		if ok, _ := filepath.Match(g, slash); ok {
			return true
		}
		if ok, _ := filepath.Match(g, strings.TrimPrefix(slash, "./")); ok {
			return true
		}
	}
	return false
}

// Loaded is the parsed content of the discovered files.
type Loaded struct {
	// Modules by file name, *_test.rego included.
	Modules map[string]*ast.Module
	// Data is the merged static data document.
	Data map[string]any
}

// PolicyModules returns the modules serve would load: all but *_test.rego.
func (l *Loaded) PolicyModules() map[string]*ast.Module {
	out := make(map[string]*ast.Module, len(l.Modules))
	for name, m := range l.Modules {
		if !strings.HasSuffix(name, "_test.rego") {
			out[name] = m
		}
	}
	return out
}

// Load parses the discovered Rego and data files with OPA's loader (data
// at the path of its folder below its root, as `opa test` and `serve` place
// it). Parse errors are returned as *CompileError.
func Load(f Files, version ast.RegoVersion) (*Loaded, error) {
	keep := map[string]bool{}
	for _, p := range f.Rego {
		keep[filepath.Clean(p)] = true
	}
	for _, p := range f.Data {
		keep[filepath.Clean(p)] = true
	}
	out := &Loaded{Modules: map[string]*ast.Module{}, Data: map[string]any{}}
	if len(keep) == 0 {
		return out, nil
	}
	res, err := loader.NewFileLoader().
		WithRegoVersion(version).
		WithFollowSymlinks(true).
		WithProcessAnnotation(true).
		Filtered(f.Paths, func(abs string, info fs.FileInfo, depth int) bool {
			if info.IsDir() {
				return depth > 0 && strings.HasPrefix(info.Name(), ".")
			}
			return !keep[filepath.Clean(abs)]
		})
	if err != nil {
		return nil, loadError(err)
	}
	for name, m := range res.Modules {
		out.Modules[name] = m.Parsed
	}
	out.Data = res.Documents
	return out, nil
}

// loadError turns the loader's errors into a *CompileError when they carry
// locations.
func loadError(err error) error {
	var errs loader.Errors
	if errors.As(err, &errs) {
		ce := &CompileError{}
		for _, e := range errs {
			var ae *ast.Error
			if errors.As(e, &ae) {
				ce.Errors = append(ce.Errors, ae)
				continue
			}
			var aes ast.Errors
			if errors.As(e, &aes) {
				ce.Errors = append(ce.Errors, aes...)
				continue
			}
			ce.Errors = append(ce.Errors, &ast.Error{Code: "rego_parse_error", Message: e.Error()})
		}
		return ce
	}
	return usagef("%v", err)
}
