package authzen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Evaluation semantics of a batch (options.evaluations_semantic).
const (
	ExecuteAll          = "execute_all"
	DenyOnFirstDeny     = "deny_on_first_deny"
	PermitOnFirstPermit = "permit_on_first_permit"
)

// entity rules: which string fields an entity must carry.
type shape struct {
	name   string   // subject, resource, action
	fields []string // required non-empty string fields
}

var (
	subjectShape  = shape{"subject", []string{"type", "id"}}
	resourceShape = shape{"resource", []string{"type", "id"}}
	actionShape   = shape{"action", []string{"name"}}
)

// checkEntity validates one entity: an object whose required fields are
// non-empty strings, whose optional type/id/name are strings, and whose
// properties, when present, are an object.
func checkEntity(sh shape, v any, required []string) *apiError {
	obj, ok := v.(map[string]any)
	if !ok {
		if v == nil {
			return badRequest("%s is required", sh.name)
		}
		return badRequest("%s must be an object", sh.name)
	}
	for _, f := range []string{"type", "id", "name"} {
		if x, present := obj[f]; present {
			if s, ok := x.(string); !ok {
				return badRequest("%s.%s must be a string", sh.name, f)
			} else if s == "" {
				return badRequest("%s.%s must not be empty", sh.name, f)
			}
		}
	}
	for _, f := range required {
		if _, present := obj[f]; !present {
			return badRequest("%s.%s is required", sh.name, f)
		}
	}
	if p, present := obj["properties"]; present {
		if _, ok := p.(map[string]any); !ok {
			return badRequest("%s.properties must be an object", sh.name)
		}
	}
	return nil
}

// checkContext validates an optional context: an object.
func checkContext(v any, present bool) *apiError {
	if !present {
		return nil
	}
	if _, ok := v.(map[string]any); !ok {
		return badRequest("context must be an object")
	}
	return nil
}

// checkEvaluation validates a complete evaluation request.
func checkEvaluation(req map[string]any) *apiError {
	if err := checkEntity(subjectShape, req["subject"], subjectShape.fields); err != nil {
		return err
	}
	if err := checkEntity(actionShape, req["action"], actionShape.fields); err != nil {
		return err
	}
	if err := checkEntity(resourceShape, req["resource"], resourceShape.fields); err != nil {
		return err
	}
	ctx, present := req["context"]
	return checkContext(ctx, present)
}

// input builds the policy input of an evaluation or search: subject,
// resource, action and context as sent (what is absent stays absent).
func input(req map[string]any) (ast.Object, *apiError) {
	obj := ast.NewObject()
	for _, k := range []string{"subject", "resource", "action", "context"} {
		v, ok := req[k]
		if !ok {
			continue
		}
		val, err := ast.InterfaceToValue(v)
		if err != nil {
			return nil, badRequest("%s: %v", k, err)
		}
		obj.Insert(ast.StringTerm(k), ast.NewTerm(val))
	}
	return obj, nil
}

// verdict is one decision as the API answers it.
type verdict struct {
	Decision bool           `json:"decision"`
	Context  map[string]any `json:"context,omitempty"`
}

// shapeDecision reads the decision rule's value: a boolean, or an object
// with a boolean "decision" and an optional object "context"; undefined is
// a deny. Anything else is a decision of the wrong shape: cannot decide.
func shapeDecision(v ast.Value) (verdict, error) {
	switch x := v.(type) {
	case nil:
		return verdict{}, nil
	case ast.Boolean:
		return verdict{Decision: bool(x)}, nil
	case ast.Object:
		dt := x.Get(ast.InternedTerm("decision"))
		if dt == nil {
			return verdict{}, fmt.Errorf("%w: an AuthZEN decision object needs a boolean \"decision\"", authz.ErrBadDecision)
		}
		d, ok := dt.Value.(ast.Boolean)
		if !ok {
			return verdict{}, fmt.Errorf("%w: an AuthZEN decision object needs a boolean \"decision\"", authz.ErrBadDecision)
		}
		out := verdict{Decision: bool(d)}
		if c := x.Get(ast.InternedTerm("context")); c != nil {
			if _, ok := c.Value.(ast.Object); !ok {
				return verdict{}, fmt.Errorf("%w: an AuthZEN decision's \"context\" must be an object", authz.ErrBadDecision)
			}
			raw, err := ast.JSON(c.Value)
			if err != nil {
				return verdict{}, fmt.Errorf("%w: context: %v", authz.ErrBadDecision, err)
			}
			out.Context, _ = raw.(map[string]any)
		}
		return out, nil
	}
	return verdict{}, fmt.Errorf("%w: an AuthZEN decision is a boolean or an object, got %s", authz.ErrBadDecision, ast.ValueName(v))
}

// stamp is what every answer's context says about how it was made; id is
// its decision id (the batch's for a batch).
func stamp(sess *authz.Session, id string) map[string]any {
	return map[string]any{
		"decision_id":      id,
		"policy_revision":  sess.PolicyRevision(),
		"tenancy_revision": sess.TenancyRevision(),
	}
}

// decide evaluates one validated request in sess and logs it as decision
// id (batch: the batch's id, "" for a single evaluation).
func (s *Server) decide(sess *authz.Session, req map[string]any, id, batch string) (verdict, *apiError) {
	in, aerr := input(req)
	if aerr != nil {
		return verdict{}, aerr
	}
	v, cache, err := sess.Eval(s.decision, in)
	if err != nil {
		aerr := engineError(err)
		s.observe(sess, s.decision, in, id, batch, nil, verdict{}, cache, aerr)
		return verdict{}, aerr
	}
	out, err := shapeDecision(v)
	if err != nil {
		aerr := &apiError{status: http.StatusInternalServerError, code: "internal", message: err.Error()}
		s.observe(sess, s.decision, in, id, batch, anyValue(v), verdict{}, cache, aerr)
		return verdict{}, aerr
	}
	s.observe(sess, s.decision, in, id, batch, anyValue(v), out, cache, nil)
	return out, nil
}

// observe hands one answer to the decision log: path the rule, input the
// AuthZEN input (with tenancy_revision; never modified afterwards), result
// the rule's value. A failed evaluation is logged as "cannot decide".
func (s *Server) observe(sess *authz.Session, rule ast.Ref, in ast.Object, id, batch string, result any, out verdict, cache authz.CacheResult, aerr *apiError) {
	if s.cfg.Observer == nil {
		return
	}
	e := authz.Answer{ID: id, Path: ruleText(rule), BatchID: batch, Transport: "authzen", Start: time.Now().Add(-sess.Elapsed()), Duration: sess.Elapsed(),
		Input: func(*authz.Need) (ast.Object, error) { return in, nil }}
	if aerr != nil && aerr.status >= 500 {
		e.Err = &authz.DecideError{Code: authz.CodeInternal, Err: errors.New(aerr.message)}
		if aerr.status == http.StatusServiceUnavailable {
			e.Err = &authz.DecideError{Code: authz.CodeUnavailable, Err: errors.New(aerr.message)}
		}
		s.cfg.Observer.Observe(e)
		return
	}
	d := &authz.Decision{ID: id, Allowed: out.Decision, Defined: result != nil, PolicyRevision: sess.PolicyRevision(),
		TenancyRevision: sess.TenancyRevision(), Cache: string(cache), Duration: sess.Elapsed()}
	if d.Cache == "stale" {
		d.Cache = authz.CacheMiss
	}
	if aerr != nil { // 429: not decided at the revision asked
		d.HTTPStatus, d.Reason = aerr.status, aerr.code
	}
	if r, ok := out.Context["reason"].(string); ok {
		d.Reason = r
	}
	d.Subject = entityField(in, "subject", "id")
	d.DynamicMetadata = authz.StringMetadata("tenant", tenantOf(in))
	e.Result, e.Decision = result, d
	s.cfg.Observer.Observe(e)
}

// anyValue is v, nil when undefined (not a nil ast.Value in an any).
func anyValue(v ast.Value) any {
	if v == nil {
		return nil
	}
	return v
}

// ruleText is a rule's path as the decision log names it (authzen/allow).
func ruleText(rule ast.Ref) string {
	var sb strings.Builder
	for i, t := range rule[1:] {
		if i > 0 {
			sb.WriteByte('/')
		}
		if s, ok := t.Value.(ast.String); ok {
			sb.WriteString(string(s))
		} else {
			sb.WriteString(t.String())
		}
	}
	return sb.String()
}

// entityField is input[entity][field] when it is a string.
func entityField(in ast.Object, entity, field string) string {
	if t := in.Get(ast.InternedTerm(entity)); t != nil {
		if o, ok := t.Value.(ast.Object); ok {
			if f := o.Get(ast.InternedTerm(field)); f != nil {
				if s, ok := f.Value.(ast.String); ok {
					return string(s)
				}
			}
		}
	}
	return ""
}

// tenantOf is the tenant an AuthZEN request is about: the resource's
// properties.tenant, or the resource itself when it is a tenant.
func tenantOf(in ast.Object) string {
	if t := in.Get(ast.InternedTerm("resource")); t != nil {
		if o, ok := t.Value.(ast.Object); ok {
			if p := o.Get(ast.InternedTerm("properties")); p != nil {
				if po, ok := p.Value.(ast.Object); ok {
					if tt := po.Get(ast.InternedTerm("tenant")); tt != nil {
						if s, ok := tt.Value.(ast.String); ok {
							return string(s)
						}
					}
				}
			}
		}
	}
	if entityField(in, "resource", "type") == "tenant" {
		return entityField(in, "resource", "id")
	}
	return ""
}

// evaluation answers POST /access/v1/evaluation.
func (s *Server) evaluation(ctx context.Context, r *http.Request, req map[string]any) (any, *apiError) {
	if err := checkEvaluation(req); err != nil {
		return nil, err
	}
	sess, aerr := s.session(ctx, r)
	if aerr != nil {
		return nil, aerr
	}
	defer sess.Close()
	id := authz.NewDecisionID()
	out, aerr := s.decide(sess, req, id, "")
	if aerr != nil {
		return nil, aerr
	}
	ctxOut := make(map[string]any, len(out.Context)+1)
	maps.Copy(ctxOut, out.Context)
	ctxOut["gatehouse"] = stamp(sess, id)
	out.Context = ctxOut
	return out, nil
}

// evaluations answers POST /access/v1/evaluations: without evaluations (or
// with an empty array) a single evaluation; otherwise each item with the
// top-level subject, action, resource and context as defaults, in order,
// at one revision.
func (s *Server) evaluations(ctx context.Context, r *http.Request, req map[string]any) (any, *apiError) {
	raw, present := req["evaluations"]
	items, ok := raw.([]any)
	if present && raw != nil && !ok {
		return nil, badRequest("evaluations must be an array")
	}
	if len(items) == 0 {
		return s.evaluation(ctx, r, req)
	}
	if len(items) > s.cfg.MaxEvaluations {
		return nil, badRequest("%d evaluations: at most %d per request", len(items), s.cfg.MaxEvaluations)
	}
	semantic := ExecuteAll
	if o, present := req["options"]; present {
		opts, ok := o.(map[string]any)
		if !ok {
			return nil, badRequest("options must be an object")
		}
		if sv, present := opts["evaluations_semantic"]; present {
			str, _ := sv.(string)
			switch str {
			case ExecuteAll, DenyOnFirstDeny, PermitOnFirstPermit:
				semantic = str
			default:
				return nil, badRequest("options.evaluations_semantic: %s is not %s, %s or %s", jsonText(sv), ExecuteAll, DenyOnFirstDeny, PermitOnFirstPermit)
			}
		}
	}
	// the defaults themselves must be well-formed where present
	for _, d := range []struct {
		sh shape
		k  string
	}{{subjectShape, "subject"}, {actionShape, "action"}, {resourceShape, "resource"}} {
		if v, present := req[d.k]; present {
			if err := checkEntity(d.sh, v, nil); err != nil {
				return nil, err
			}
		}
	}
	if c, present := req["context"]; present {
		if err := checkContext(c, true); err != nil {
			return nil, err
		}
	}
	sess, aerr := s.session(ctx, r)
	if aerr != nil {
		return nil, aerr
	}
	defer sess.Close()
	batch := authz.NewDecisionID()
	out := make([]verdict, 0, len(items))
	for i, it := range items {
		id := authz.NewDecisionID()
		v, aerr := s.item(sess, req, it, id, batch)
		if aerr != nil {
			if aerr.status >= 500 {
				s.logger.Error("authzen: cannot decide an evaluation; answered as a deny", "index", i, "err", aerr.message)
			}
			v = verdict{Context: map[string]any{"error": map[string]any{"status": aerr.status, "message": aerr.message}}}
		}
		if s.cfg.Observer != nil {
			// the item's own decision id joins it to its record
			c := make(map[string]any, len(v.Context)+1)
			maps.Copy(c, v.Context)
			c["gatehouse"] = map[string]any{"decision_id": id}
			v.Context = c
		}
		out = append(out, v)
		if (semantic == DenyOnFirstDeny && !v.Decision) || (semantic == PermitOnFirstPermit && v.Decision) {
			break
		}
	}
	return map[string]any{"evaluations": out, "context": map[string]any{"gatehouse": stamp(sess, batch)}}, nil
}

// item merges one batch item with the defaults and decides it. An item
// replaces a default entity whole, except that a required field it lacks
// (type, id, name) comes from the default; its context replaces the
// default context.
func (s *Server) item(sess *authz.Session, defaults map[string]any, it any, id, batch string) (verdict, *apiError) {
	obj, ok := it.(map[string]any)
	if !ok {
		return verdict{}, badRequest("an evaluation must be an object")
	}
	req := map[string]any{}
	for _, k := range []string{"subject", "action", "resource", "context"} {
		def, hasDef := defaults[k]
		own, hasOwn := obj[k]
		switch {
		case hasOwn && hasDef && k != "context":
			req[k] = mergeEntity(def, own)
		case hasOwn:
			req[k] = own
		case hasDef:
			req[k] = def
		}
	}
	if err := checkEvaluation(req); err != nil {
		return verdict{}, err
	}
	return s.decide(sess, req, id, batch)
}

// mergeEntity is own, with the required fields it lacks taken from def.
func mergeEntity(def, own any) any {
	o, ok := own.(map[string]any)
	d, dok := def.(map[string]any)
	if !ok || !dok {
		return own
	}
	out := make(map[string]any, len(o)+2)
	for k, v := range o {
		out[k] = v
	}
	for _, f := range []string{"type", "id", "name"} {
		if _, has := out[f]; !has {
			if v, ok := d[f]; ok {
				out[f] = v
			}
		}
	}
	return out
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
