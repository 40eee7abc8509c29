package authz

import (
	"context"
	"slices"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// Builtin is a built-in function Gatehouse adds to Rego (SPEC §12): its
// declaration, for the compiler, the type checker and the capabilities
// file, and its implementation. The engine knows none by itself: the
// sidecar's tenancy cache provides them (package bundle), and they read the
// tenancy transaction of the evaluation (TenancyTxn), so that a decision
// reads one revision whoever reads it.
type Builtin struct {
	Decl *ast.Builtin
	Func topdown.BuiltinFunc
}

type tenancyTxnKey struct{}

// WithTenancyTxn returns ctx carrying the tenancy transaction an
// evaluation reads, for the built-ins it calls. The engine sets it on every
// evaluation of a policy set compiled with built-ins.
func WithTenancyTxn(ctx context.Context, txn storage.Transaction) context.Context {
	return context.WithValue(ctx, tenancyTxnKey{}, txn)
}

// TenancyTxn returns the tenancy transaction ctx carries (see
// WithTenancyTxn), nil when none: an evaluation outside the engine, such as
// a Rego unit test.
func TenancyTxn(ctx context.Context) storage.Transaction {
	if ctx == nil {
		return nil
	}
	t, _ := ctx.Value(tenancyTxnKey{}).(storage.Transaction)
	return t
}

// IsEmptyTenancyTxn reports whether txn is a transaction of EmptyTenancy
// (no tenancy data at all).
func IsEmptyTenancyTxn(txn storage.Transaction) bool {
	_, ok := txn.(noTxn)
	return ok
}

// Capabilities returns OPA's capabilities for this version with builtins
// added: what `gatehouse capabilities` prints, and what the compiler of a
// policy set accepts.
func Capabilities(builtins []Builtin) *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	for _, b := range builtins {
		c.Builtins = append(c.Builtins, b.Decl)
	}
	slices.SortFunc(c.Builtins, func(a, b *ast.Builtin) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return c
}

// topdownBuiltins maps built-ins by name for topdown (nil for none).
func topdownBuiltins(builtins []Builtin) map[string]*topdown.Builtin {
	if len(builtins) == 0 {
		return nil
	}
	m := make(map[string]*topdown.Builtin, len(builtins))
	for _, b := range builtins {
		m[b.Decl.Name] = &topdown.Builtin{Decl: b.Decl, Func: b.Func}
	}
	return m
}
