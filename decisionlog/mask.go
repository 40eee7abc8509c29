package decisionlog

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/gatehouse-dev/gatehouse/authz"
)

var (
	maskRef  = ast.MustParseRef("data.system.log.mask")
	dropRef  = ast.MustParseRef("data.system.log.drop")
	maskBody = ast.MustParseBody("__mask__ = data.system.log.mask")
	dropBody = ast.MustParseBody("__drop__ = data.system.log.drop")
)

// logPolicy evaluates data.system.log.mask and drop of one policy set.
type logPolicy struct {
	compiler   *ast.Compiler
	mask, drop bool // the rules exist
}

// masker keeps the logPolicy of the active policy set.
type masker struct {
	mu    sync.Mutex
	ps    *authz.PolicySet
	lp    *logPolicy
	store storage.Store
}

func newMasker() *masker { return &masker{store: inmem.New()} }

// policy returns the log policy of ps (nil: no mask or drop rules).
func (m *masker) policy(ps *authz.PolicySet) *logPolicy {
	if ps == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ps != ps {
		c := ps.Compiler()
		lp := &logPolicy{compiler: c, mask: len(c.GetRulesForVirtualDocument(maskRef)) > 0, drop: len(c.GetRulesForVirtualDocument(dropRef)) > 0}
		if !lp.mask && !lp.drop {
			lp = nil
		}
		m.ps, m.lp = ps, lp
	}
	return m.lp
}

// eval evaluates body with input and returns the value of v (nil when
// undefined).
func (m *masker) eval(ctx context.Context, lp *logPolicy, body ast.Body, v string, input ast.Value) (ast.Value, error) {
	txn, err := m.store.NewTransaction(ctx)
	if err != nil {
		return nil, err
	}
	defer m.store.Abort(ctx, txn)
	var out ast.Value
	err = topdown.NewQuery(body).WithCompiler(lp.compiler).WithStore(m.store).WithTransaction(txn).
		WithInput(ast.NewTerm(input)).
		Iter(ctx, func(qr topdown.QueryResult) error {
			if t := qr[ast.Var(v)]; t != nil {
				out = t.Value
			}
			return nil
		})
	return out, err
}

// apply runs the drop and mask rules over rec (OPA's semantics: the input
// is the event; drop true skips it; mask lists JSON pointers to erase and
// {op, path, value} objects, op "upsert" or "remove", under /input or
// /result). It reports whether rec is dropped.
func (m *masker) apply(ctx context.Context, lp *logPolicy, rec *Record) (bool, error) {
	event, err := ast.InterfaceToValue(eventOf(rec))
	if err != nil {
		return false, fmt.Errorf("decision log policy input: %w", err)
	}
	if lp.drop {
		v, err := m.eval(ctx, lp, dropBody, "__drop__", event)
		if err != nil {
			return false, fmt.Errorf("data.system.log.drop: %w", err)
		}
		if b, ok := v.(ast.Boolean); ok && bool(b) {
			return true, nil
		}
	}
	if !lp.mask {
		return false, nil
	}
	v, err := m.eval(ctx, lp, maskBody, "__mask__", event)
	if err != nil {
		return false, fmt.Errorf("data.system.log.mask: %w", err)
	}
	var rules []*ast.Term
	switch v := v.(type) {
	case ast.Set:
		v.Foreach(func(t *ast.Term) { rules = append(rules, t) })
	case *ast.Array:
		for i := range v.Len() {
			rules = append(rules, v.Elem(i))
		}
	}
	for _, t := range rules {
		applyMask(rec, t.Value)
	}
	return false, nil
}

// eventOf is the event as the mask and drop policies read it.
func eventOf(rec *Record) map[string]any {
	ev := map[string]any{
		"labels": anyMap(rec.Labels), "decision_id": rec.DecisionID, "path": rec.Path,
		"timestamp": rec.Timestamp, "req_id": rec.ReqID,
		"gatehouse": map[string]any{
			"tenant": rec.Gatehouse.Tenant, "subject": rec.Gatehouse.Subject, "issuer": rec.Gatehouse.Issuer,
			"allowed": rec.Gatehouse.Allowed, "http_status": rec.Gatehouse.HTTPStatus, "reason": rec.Gatehouse.Reason,
			"policy_revision": rec.Gatehouse.PolicyRevision, "tenancy_revision": rec.Gatehouse.TenancyRevision,
			"cache": rec.Gatehouse.Cache,
		},
	}
	if rec.Input != nil {
		ev["input"] = rec.Input
	}
	if rec.Result != nil {
		ev["result"] = rec.Result
	}
	return ev
}

func anyMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// applyMask applies one mask rule: a JSON pointer string (erase) or an
// {op, path, value} object. Rules outside /input and /result, or that do
// not parse, are ignored, as OPA ignores them.
func applyMask(rec *Record, rule ast.Value) {
	op, path, value := "remove", "", any(nil)
	switch r := rule.(type) {
	case ast.String:
		path = string(r)
	case ast.Object:
		if t := r.Get(ast.InternedTerm("op")); t != nil {
			s, ok := t.Value.(ast.String)
			if !ok {
				return
			}
			op = string(s)
		}
		if t := r.Get(ast.InternedTerm("path")); t != nil {
			if s, ok := t.Value.(ast.String); ok {
				path = string(s)
			}
		}
		if t := r.Get(ast.InternedTerm("value")); t != nil {
			value, _ = ast.JSON(t.Value)
		}
	default:
		return
	}
	segs, ok := parsePointer(path)
	if !ok || len(segs) == 0 {
		return
	}
	var root *any
	switch segs[0] {
	case "input":
		root = &rec.Input
	case "result":
		root = &rec.Result
	default:
		return
	}
	switch op {
	case "remove":
		if removeAt(root, segs[1:]) {
			rec.Erased = append(rec.Erased, path)
		}
	case "upsert":
		if upsertAt(root, segs[1:], value) {
			rec.Masked = append(rec.Masked, path)
		}
	}
}

// parsePointer splits a JSON pointer ("/a/b~1c") into unescaped segments.
func parsePointer(p string) ([]string, bool) {
	if !strings.HasPrefix(p, "/") {
		return nil, false
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		segs[i] = pointerUnescape.Replace(s)
	}
	return segs, true
}

// pointerUnescape undoes a JSON pointer segment's escapes (RFC 6901).
var pointerUnescape = strings.NewReplacer("~1", "/", "~0", "~")

// removeAt removes the value at segs under *root (the root itself when
// segs is empty); it reports whether something was removed.
func removeAt(root *any, segs []string) bool {
	if *root == nil {
		return false
	}
	if len(segs) == 0 {
		*root = nil
		return true
	}
	parent, ok := walk(*root, segs[:len(segs)-1])
	if !ok {
		return false
	}
	last := segs[len(segs)-1]
	switch p := parent.(type) {
	case map[string]any:
		if _, ok := p[last]; ok {
			delete(p, last)
			return true
		}
	case []any:
		if i, err := strconv.Atoi(last); err == nil && i >= 0 && i < len(p) {
			p[i] = nil // arrays keep their length, as OPA's erase of an element leaves null
			return true
		}
	}
	return false
}

// upsertAt sets the value at segs under *root, creating the last key in an
// existing object; it reports whether it did.
func upsertAt(root *any, segs []string, v any) bool {
	if len(segs) == 0 {
		*root = v
		return true
	}
	parent, ok := walk(*root, segs[:len(segs)-1])
	if !ok {
		return false
	}
	last := segs[len(segs)-1]
	switch p := parent.(type) {
	case map[string]any:
		p[last] = v
		return true
	case []any:
		if i, err := strconv.Atoi(last); err == nil && i >= 0 && i < len(p) {
			p[i] = v
			return true
		}
	}
	return false
}

func walk(v any, segs []string) (any, bool) {
	for _, s := range segs {
		switch x := v.(type) {
		case map[string]any:
			next, ok := x[s]
			if !ok {
				return nil, false
			}
			v = next
		case []any:
			i, err := strconv.Atoi(s)
			if err != nil || i < 0 || i >= len(x) {
				return nil, false
			}
			v = x[i]
		default:
			return nil, false
		}
	}
	return v, true
}
