package policytest

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/format"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/replica"
)

// Check compiles every .rego file under paths (*_test.rego included) with
// the static data beside them, in OPA's strict mode: besides parse, safety
// and type errors it reports unused imports, unused local variables
// (assigned but never read), shadowed input/data, duplicate imports and
// deprecated built-ins.
//
// A nil error means the files were checked: findings are the compile
// errors (sorted by file and position), empty when clean. The error is a
// *CompileError when a file does not parse (nothing could be checked), or
// wraps ErrUsage.
func Check(ctx context.Context, paths, ignore []string) (ast.Errors, error) {
	files, err := Discover(paths, ignore)
	if err != nil {
		return nil, err
	}
	if len(files.Rego) == 0 {
		return nil, usagef("no .rego files under %v", files.Paths)
	}
	loaded, err := Load(files, ast.RegoV1)
	if err != nil {
		return nil, err
	}
	store := inmem.NewFromObject(loaded.Data)
	txn, err := store.NewTransaction(ctx)
	if err != nil {
		return nil, err
	}
	defer store.Abort(ctx, txn)
	c := ast.NewCompiler().
		WithStrict(true).
		WithPathConflictsCheck(storage.NonEmpty(ctx, store, txn)).
		WithEnablePrintStatements(true).
		WithCapabilities(authz.Capabilities(replica.Builtins())).
		WithUseTypeCheckAnnotations(true).
		SetErrorLimit(0)
	c.Compile(loaded.Modules)
	findings := slices.Clone(c.Errors)
	slices.SortStableFunc(findings, func(a, b *ast.Error) int {
		la, lb := a.Location, b.Location
		switch {
		case la == nil && lb == nil:
			return 0
		case la == nil:
			return -1
		case lb == nil:
			return 1
		}
		if c := strings.Compare(la.File, lb.File); c != 0 {
			return c
		}
		if la.Row != lb.Row {
			return la.Row - lb.Row
		}
		return la.Col - lb.Col
	})
	return findings, nil
}

// RegoFiles lists the .rego files under paths (as Discover finds them).
func RegoFiles(paths, ignore []string) ([]string, error) {
	files, err := Discover(paths, ignore)
	if err != nil {
		return nil, err
	}
	return files.Rego, nil
}

// Format formats Rego source with OPA's formatter (Rego v1). name is used
// in error locations. A source that does not parse is a *CompileError.
func Format(name string, src []byte) ([]byte, error) {
	out, err := format.SourceWithOpts(name, src, format.Opts{
		RegoVersion:   ast.RegoV1,
		ParserOptions: &ast.ParserOptions{RegoVersion: ast.RegoV1, ProcessAnnotation: true},
	})
	if err != nil {
		return nil, compileError(err)
	}
	return out, nil
}

// FormatFile formats a file and reports whether its formatting differs.
func FormatFile(path string) (formatted []byte, changed bool, err error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, false, usagef("%v", err)
	}
	out, err := Format(path, src)
	if err != nil {
		return nil, false, err
	}
	return out, !bytes.Equal(src, out), nil
}
