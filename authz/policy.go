package authz

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// DefaultDecision is the decision rule evaluated when none is configured.
const DefaultDecision = "envoy/authz/allow"

// resultVar is the query variable the decision is bound to.
const resultVar = ast.Var("gatehouse_decision")

// PolicyConfig is the `policies:` section of the serve configuration.
type PolicyConfig struct {
	// Dir is a directory of .rego files and data.json/data.yaml files.
	Dir string `yaml:"dir"`
	// Bundle fetches an OPA bundle from a URL instead of reading Dir.
	Bundle BundleSourceConfig `yaml:"bundle"`
	// Decision is the path of the decision rule, e.g. envoy/authz/allow.
	Decision string `yaml:"decision"`
	// RegoVersion is "v1" (default) or "v0" for policies in the older syntax.
	RegoVersion string `yaml:"rego_version"`
	// Shadow is a candidate policy set evaluated beside this one, whose
	// answers never reach Envoy (SPEC §9; package decisionlog).
	Shadow *PolicyConfig `yaml:"shadow"`
	// AuthZENDecision is the decision rule of the AuthZEN API (SPEC §10),
	// e.g. authzen/allow (the default); its package holds the search rules.
	AuthZENDecision string `yaml:"authzen_decision"`
}

// BundleSourceConfig locates a signed policy bundle.
type BundleSourceConfig struct {
	// URL of the bundle, e.g. http://127.0.0.1:8282/v1/bundles/main.
	URL string `yaml:"url"`
	// PublicKeyFile is the PEM key the bundle signature must verify with.
	PublicKeyFile string `yaml:"public_key_file"`
	// TokenFile holds a bearer token sent when downloading the bundle.
	TokenFile string `yaml:"token_file"`
	// Poll is how often the bundle is polled for changes (default 10s).
	Poll time.Duration `yaml:"poll"`
}

// SetDefaults fills unset fields.
func (c *PolicyConfig) SetDefaults() {
	if c.Decision == "" {
		c.Decision = DefaultDecision
	}
	if c.RegoVersion == "" {
		c.RegoVersion = "v1"
	}
	if c.AuthZENDecision == "" {
		c.AuthZENDecision = DefaultAuthZENDecision
	}
	if c.Bundle.Poll == 0 {
		c.Bundle.Poll = 10 * time.Second
	}
	if c.Shadow != nil {
		if c.Shadow.Decision == "" {
			c.Shadow.Decision = c.Decision
		}
		c.Shadow.SetDefaults()
	}
}

// Validate reports every problem of the configuration.
func (c PolicyConfig) Validate() error {
	var errs []error
	if c.Dir == "" && c.Bundle.URL == "" {
		errs = append(errs, errors.New("policies: set dir or bundle.url"))
	}
	if c.Dir != "" && c.Bundle.URL != "" {
		errs = append(errs, errors.New("policies: set dir or bundle.url, not both"))
	}
	if c.Bundle.URL != "" && c.Bundle.PublicKeyFile == "" {
		errs = append(errs, errors.New("policies.bundle: public_key_file is required (unsigned bundles are refused)"))
	}
	if _, err := DecisionRef(c.Decision); err != nil {
		errs = append(errs, err)
	}
	if _, err := ParseRegoVersion(c.RegoVersion); err != nil {
		errs = append(errs, err)
	}
	if c.Bundle.Poll < 0 {
		errs = append(errs, fmt.Errorf("policies.bundle.poll: %v is negative", c.Bundle.Poll))
	}
	if c.Shadow != nil {
		if c.Shadow.Shadow != nil {
			errs = append(errs, errors.New("policies.shadow.shadow: a shadow policy has no shadow"))
		}
		if err := c.Shadow.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("policies.shadow: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ParseRegoVersion maps "v0"/"v1" to the parser's version.
func ParseRegoVersion(s string) (ast.RegoVersion, error) {
	switch s {
	case "", "v1":
		return ast.RegoV1, nil
	case "v0":
		return ast.RegoV0, nil
	}
	return ast.RegoUndefined, fmt.Errorf("policies.rego_version: %q is not v0 or v1", s)
}

// DecisionRef turns "envoy/authz/allow" (or "data.envoy.authz.allow") into
// the reference data.envoy.authz.allow.
func DecisionRef(path string) (ast.Ref, error) {
	p := strings.TrimPrefix(strings.TrimPrefix(path, "data."), "/")
	p = strings.ReplaceAll(p, ".", "/")
	if p == "" {
		return nil, fmt.Errorf("policies.decision: %q is empty", path)
	}
	ref := ast.Ref{ast.DefaultRootDocument}
	for part := range strings.SplitSeq(p, "/") {
		if part == "" {
			return nil, fmt.Errorf("policies.decision: %q has an empty segment", path)
		}
		ref = append(ref, ast.StringTerm(part))
	}
	return ref, nil
}

// Source is what a policy set is compiled from: parsed modules, static data
// and a revision.
type Source struct {
	// Modules by file name.
	Modules map[string]*ast.Module
	// Data is the static data document (the merge of every data file).
	Data map[string]any
	// Revision identifies the source: a bundle's manifest revision, or a
	// content hash for a directory.
	Revision string
	// Origin says where the source came from (a directory or a URL), for logs.
	Origin string
}

// PolicySet is a compiled, prepared set of policies. It is immutable.
type PolicySet struct {
	revision string
	origin   string
	loadedAt time.Time
	compiler *ast.Compiler
	query    ast.Body
	static   ast.Object
	decision ast.Ref
	files    int
	cache    cachePlan
	need     *Need
	builtins map[string]*topdown.Builtin // Gatehouse built-ins the set was compiled with
}

// Revision returns the policy revision.
func (p *PolicySet) Revision() string { return p.revision }

// LoadedAt returns when the set was compiled.
func (p *PolicySet) LoadedAt() time.Time { return p.loadedAt }

// Cacheable reports whether decisions of the set can be cached, and if not,
// why.
func (p *PolicySet) Cacheable() (bool, string) { return p.cache.disabled == "", p.cache.disabled }

// Need returns the parts of the input the set's rules can read.
func (p *PolicySet) Need() *Need { return p.need }

// Compiler returns the compiled modules.
func (p *PolicySet) Compiler() *ast.Compiler { return p.compiler }

// Compile compiles src and prepares the decision query. Compile errors carry
// file:line:col locations. builtins are the Gatehouse built-ins the
// policies may call (see Builtin); a policy calling one it is not given
// does not compile.
func Compile(src Source, decision string, builtins ...Builtin) (*PolicySet, error) {
	ref, err := DecisionRef(decision)
	if err != nil {
		return nil, err
	}
	if _, ok := src.Data["tenancy"]; ok {
		return nil, ErrReservedData
	}
	compiler := ast.NewCompiler().
		WithEnablePrintStatements(true).
		WithUseTypeCheckAnnotations(true)
	if len(builtins) > 0 {
		compiler = compiler.WithCapabilities(Capabilities(builtins))
	}
	compiler.Compile(src.Modules)
	if compiler.Failed() {
		return nil, fmt.Errorf("compile policies: %w", compiler.Errors)
	}
	static, err := ast.InterfaceToValue(src.Data)
	if err != nil {
		return nil, fmt.Errorf("static data: %w", err)
	}
	obj, ok := static.(ast.Object)
	if !ok {
		obj = ast.NewObject()
	}
	if !decisionDefined(compiler, obj, ref) {
		return nil, fmt.Errorf("%w: no rule or data defines %v", ErrNoDecisionRule, ref)
	}
	plan := planCache(compiler)
	body := ast.NewBody(ast.Equality.Expr(ast.VarTerm(string(resultVar)), ast.NewTerm(ref)))
	query, err := compiler.QueryCompiler().Compile(body)
	if err != nil {
		return nil, fmt.Errorf("compile decision query %v: %w", ref, err)
	}
	return &PolicySet{
		revision: src.Revision,
		origin:   src.Origin,
		loadedAt: time.Now(),
		compiler: compiler,
		query:    query,
		static:   obj,
		decision: ref,
		files:    len(src.Modules),
		cache:    plan,
		need:     needOf(plan.paths),
		builtins: topdownBuiltins(builtins),
	}, nil
}

// decisionDefined reports whether a rule (at the ref or a prefix of it, or
// below it) or static data defines the decision.
func decisionDefined(c *ast.Compiler, static ast.Object, ref ast.Ref) bool {
	node := c.RuleTree
	for _, t := range ref {
		if len(node.Values) > 0 {
			return true // a rule at a prefix (e.g. a partial object) may define it
		}
		node = node.Child(t.Value)
		if node == nil {
			break
		}
	}
	if node != nil {
		return true
	}
	var v ast.Value = static
	for _, t := range ref[1:] {
		obj, ok := v.(ast.Object)
		if !ok {
			return false
		}
		child := obj.Get(t)
		if child == nil {
			return false
		}
		v = child.Value
	}
	return true
}

// LoadDir reads a policy directory: every .rego file except *_test.rego, and
// every data.json / data.yaml / data.yml, loaded at the path of its folder.
// Hidden files and folders (".git", Kubernetes' "..data" targets) are
// skipped; symbolic links are followed.
func LoadDir(dir string, version ast.RegoVersion) (Source, error) {
	info, err := os.Stat(dir)
	if err != nil {
		return Source{}, fmt.Errorf("policy directory: %w", err)
	}
	if !info.IsDir() {
		return Source{}, fmt.Errorf("policy directory %q is not a directory", dir)
	}
	res, err := loader.NewFileLoader().
		WithRegoVersion(version).
		WithFollowSymlinks(true).
		WithProcessAnnotation(true).
		Filtered([]string{dir}, policyFilter(false))
	if err != nil {
		return Source{}, fmt.Errorf("load policies from %q: %w", dir, err)
	}
	rev, err := DirRevision(dir, false)
	if err != nil {
		return Source{}, err
	}
	modules := make(map[string]*ast.Module, len(res.Modules))
	for name, f := range res.Modules {
		modules[name] = f.Parsed
	}
	return Source{Modules: modules, Data: res.Documents, Revision: rev, Origin: dir}, nil
}

// policyFilter excludes everything but policy and data files. With tests,
// *_test.rego files are kept.
func policyFilter(tests bool) loader.Filter {
	return func(_ string, info fs.FileInfo, depth int) bool {
		name := info.Name()
		if depth > 0 && strings.HasPrefix(name, ".") {
			return true
		}
		if info.IsDir() {
			return false
		}
		return !isPolicyFile(name, tests)
	}
}

func isPolicyFile(name string, tests bool) bool {
	switch {
	case strings.HasSuffix(name, "_test.rego"):
		return tests
	case strings.HasSuffix(name, ".rego"):
		return true
	}
	return IsDataFile(name)
}

// IsDataFile reports whether a file name is a static data file: only
// data.json, data.yaml and data.yml are data, loaded at the path of their
// folder (other JSON and YAML files, e.g. test fixtures, never are).
func IsDataFile(name string) bool {
	return name == "data.json" || name == "data.yaml" || name == "data.yml"
}

// DirRevision hashes the names and contents of the policy files under dir,
// so that the revision changes exactly when what serve loads changes.
func DirRevision(dir string, tests bool) (string, error) {
	files, err := PolicyFiles(dir, tests)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil {
			return "", fmt.Errorf("read %q: %w", f, err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// PolicyFiles lists the policy and data files under dir that serve loads
// (slash-separated paths relative to dir, sorted): *.rego (and *_test.rego
// with tests), data.json, data.yaml, data.yml; hidden files and folders
// skipped, symbolic links followed (loops stopped at 64 levels).
func PolicyFiles(dir string, tests bool) ([]string, error) {
	var out []string
	var walk func(rel string, depth int) error
	walk = func(rel string, depth int) error {
		if depth > 64 {
			return fmt.Errorf("list policy files in %q: folders nested deeper than 64 (a symbolic link loop?)", dir)
		}
		entries, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			return fmt.Errorf("list policy files in %q: %w", dir, err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(rel, e.Name())
			info, err := os.Stat(filepath.Join(dir, p)) // follows links
			if err != nil {
				continue // dangling link
			}
			if info.IsDir() {
				if err := walk(p, depth+1); err != nil {
					return err
				}
				continue
			}
			if isPolicyFile(e.Name(), tests) {
				out = append(out, filepath.ToSlash(p))
			}
		}
		return nil
	}
	if err := walk("", 0); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}
