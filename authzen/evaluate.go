package authzen

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

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

// stamp is what every answer's context says about how it was made.
func stamp(sess *authz.Session) map[string]any {
	return map[string]any{
		"decision_id":      authz.NewDecisionID(),
		"policy_revision":  sess.PolicyRevision(),
		"tenancy_revision": sess.TenancyRevision(),
	}
}

// decide evaluates one validated request in sess.
func (s *Server) decide(sess *authz.Session, req map[string]any) (verdict, *apiError) {
	in, aerr := input(req)
	if aerr != nil {
		return verdict{}, aerr
	}
	v, _, err := sess.Eval(s.decision, in)
	if err != nil {
		return verdict{}, engineError(err)
	}
	out, err := shapeDecision(v)
	if err != nil {
		return verdict{}, &apiError{status: http.StatusInternalServerError, code: "internal", message: err.Error()}
	}
	return out, nil
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
	out, aerr := s.decide(sess, req)
	if aerr != nil {
		return nil, aerr
	}
	if out.Context == nil {
		out.Context = map[string]any{}
	}
	out.Context["gatehouse"] = stamp(sess)
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
	out := make([]verdict, 0, len(items))
	for i, it := range items {
		v, aerr := s.item(sess, req, it)
		if aerr != nil {
			if aerr.status >= 500 {
				s.logger.Error("authzen: cannot decide an evaluation; answered as a deny", "index", i, "err", aerr.message)
			}
			v = verdict{Context: map[string]any{"error": map[string]any{"status": aerr.status, "message": aerr.message}}}
		}
		out = append(out, v)
		if (semantic == DenyOnFirstDeny && !v.Decision) || (semantic == PermitOnFirstPermit && v.Decision) {
			break
		}
	}
	return map[string]any{"evaluations": out, "context": map[string]any{"gatehouse": stamp(sess)}}, nil
}

// item merges one batch item with the defaults and decides it. An item
// replaces a default entity whole, except that a required field it lacks
// (type, id, name) comes from the default; its context replaces the
// default context.
func (s *Server) item(sess *authz.Session, defaults map[string]any, it any) (verdict, *apiError) {
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
	return s.decide(sess, req)
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
