package bundle

import (
	"bytes"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	opabundle "github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// BuildConfig configures Build.
type BuildConfig struct {
	// Dir is the policy directory: every .rego file (without *_test.rego
	// unless IncludeTests) and every data.json / data.yaml / data.yml, as
	// `serve` loads a directory. Hidden files and folders are skipped;
	// symbolic links are followed.
	Dir string
	// Revision is the manifest revision; default the directory's content
	// hash (authz.DirRevision), the revision `serve --policies` reports.
	Revision string
	// Roots are the manifest roots; default the first segment of every
	// package and of every data path.
	Roots []string
	// IncludeTests adds *_test.rego files.
	IncludeTests bool
	// RegoVersion is "v1" (default) or "v0"; it is written to the manifest.
	RegoVersion string
	// Decision is the decision rule the policy must define (default
	// envoy/authz/allow), as authz.Compile checks it.
	Decision string
	// Signer signs the bundle; nil writes an unsigned bundle (which a
	// sidecar refuses).
	Signer *Signer
	// Builtins are the built-ins the policy is compiled with, as the
	// sidecar compiles it (replica.Builtins()).
	Builtins []authz.Builtin
}

// BuildResult describes a built bundle.
type BuildResult struct {
	// Revision is the manifest revision.
	Revision string
	// Roots are the manifest roots.
	Roots []string
	// Files are the names in the tarball, .manifest and .signatures.json
	// included.
	Files []string
	// Bytes is the size of the tarball.
	Bytes int
}

// Build writes the policy directory cfg.Dir as a bundle to w. The bundle
// is compiled first, from the very tarball that is written (read back as
// a sidecar reads it, signature included), so a bundle that does not
// compile is never written; compile errors carry file:line locations in
// cfg.Dir.
func Build(w io.Writer, cfg BuildConfig) (BuildResult, error) {
	if cfg.Decision == "" {
		cfg.Decision = authz.DefaultDecision
	}
	version, err := authz.ParseRegoVersion(cfg.RegoVersion)
	if err != nil {
		return BuildResult{}, err
	}
	info, err := os.Stat(cfg.Dir)
	if err != nil {
		return BuildResult{}, fmt.Errorf("policy directory: %w", err)
	}
	if !info.IsDir() {
		return BuildResult{}, fmt.Errorf("policy directory %q is not a directory", cfg.Dir)
	}
	names, err := authz.PolicyFiles(cfg.Dir, cfg.IncludeTests)
	if err != nil {
		return BuildResult{}, err
	}
	files := make([]File, 0, len(names)+2)
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(cfg.Dir, filepath.FromSlash(name)))
		if err != nil {
			return BuildResult{}, fmt.Errorf("read policy file: %w", err)
		}
		files = append(files, File{Name: name, Content: b})
	}

	revision := cfg.Revision
	if revision == "" {
		if revision, err = authz.DirRevision(cfg.Dir, cfg.IncludeTests); err != nil {
			return BuildResult{}, err
		}
	}
	roots := make([]string, 0, len(cfg.Roots))
	for _, r := range cfg.Roots {
		roots = append(roots, strings.Trim(r, "/"))
	}
	if len(cfg.Roots) == 0 {
		if roots, err = defaultRoots(cfg.Dir, files, version); err != nil {
			return BuildResult{}, err
		}
	}
	rv := version.Int()
	manifest, err := json.Marshal(opabundle.Manifest{Revision: revision, Roots: &roots, RegoVersion: &rv})
	if err != nil {
		return BuildResult{}, fmt.Errorf("manifest: %w", err)
	}
	files = append(files, File{Name: ManifestFile, Content: manifest})

	var buf bytes.Buffer
	if err := WriteBundle(&buf, files, cfg.Signer); err != nil {
		return BuildResult{}, err
	}

	// Read the tarball back as a sidecar does, and compile it.
	opts := OpenOptions{RegoVersion: version, BaseDir: cfg.Dir, Origin: cfg.Dir, Unsigned: cfg.Signer == nil}
	if cfg.Signer != nil {
		v, err := NewKeySet([]crypto.PublicKey{cfg.Signer.Public()}, "the signing key")
		if err != nil {
			return BuildResult{}, err
		}
		opts.Keys = v
	}
	src, err := OpenBundle(buf.Bytes(), opts)
	if err != nil {
		return BuildResult{}, err
	}
	if _, err := authz.Compile(src, cfg.Decision, cfg.Builtins...); err != nil {
		return BuildResult{}, err
	}

	res := BuildResult{Revision: revision, Roots: roots, Bytes: buf.Len()}
	for _, f := range files {
		res.Files = append(res.Files, f.Name)
	}
	if cfg.Signer != nil {
		res.Files = append(res.Files, SignaturesFile)
	}
	slices.Sort(res.Files)
	if _, err := w.Write(buf.Bytes()); err != nil {
		return BuildResult{}, fmt.Errorf("write bundle: %w", err)
	}
	return res, nil
}

// defaultRoots are the first segments of every package and data path: the
// namespaces the bundle owns.
func defaultRoots(dir string, files []File, version ast.RegoVersion) ([]string, error) {
	set := map[string]bool{}
	for _, f := range files {
		switch {
		case strings.HasSuffix(f.Name, ".rego"):
			m, err := ast.ParseModuleWithOpts(filepath.Join(dir, filepath.FromSlash(f.Name)), string(f.Content), ast.ParserOptions{RegoVersion: version, ProcessAnnotation: true})
			if err != nil {
				return nil, err
			}
			if len(m.Package.Path) > 1 {
				if s, ok := m.Package.Path[1].Value.(ast.String); ok {
					set[string(s)] = true
				}
			}
		case path.Dir(f.Name) != ".":
			set[strings.SplitN(f.Name, "/", 2)[0]] = true
		default: // data file at the top: its keys
			var v any
			if err := util.Unmarshal(f.Content, &v); err != nil {
				return nil, fmt.Errorf("%s: %w", filepath.Join(dir, f.Name), err)
			}
			obj, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%s: the top-level data document must be an object", filepath.Join(dir, f.Name))
			}
			for k := range obj {
				set[k] = true
			}
		}
	}
	roots := make([]string, 0, len(set))
	for r := range set {
		roots = append(roots, r)
	}
	slices.Sort(roots)
	return roots, nil
}
