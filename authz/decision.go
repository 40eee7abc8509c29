package authz

import (
	"fmt"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/token"
)

// Pair is one name and value of a header or a query parameter. A name may
// appear more than once: every value is kept.
type Pair struct {
	Key   string
	Value string
}

// Decision is the transport-neutral answer of the engine. Its fields follow
// the decision document of opa-envoy-plugin (SPEC §4).
type Decision struct {
	// ID identifies the decision in logs and in Envoy's dynamic metadata.
	ID string
	// Allowed is the verdict.
	Allowed bool
	// Defined is false when the decision rule was undefined (a plain 403).
	Defined bool
	// Object is true when the policy returned an object (not a boolean).
	Object bool
	// HTTPStatus is the deny status (0 = not set: 403). Allowed decisions
	// ignore it.
	HTTPStatus int
	// Headers go to the upstream on allow, to the client on deny.
	Headers []Pair
	// ResponseHeadersToAdd go to the client on allow.
	ResponseHeadersToAdd []Pair
	// RequestHeadersToRemove are removed from the request on allow.
	RequestHeadersToRemove []string
	// Body is the deny body.
	Body string
	// DynamicMetadata is the policy's dynamic metadata.
	DynamicMetadata Metadata
	// QueryParametersToSet and QueryParametersToRemove rewrite the query on allow.
	QueryParametersToSet    []Pair
	QueryParametersToRemove []string
	// Reason is the optional "reason" string of an object decision (a
	// Gatehouse extension, used in logs and explanations).
	Reason string
	// PolicyRevision and TenancyRevision say what the decision used.
	PolicyRevision  string
	TenancyRevision uint64
	// Subject is the verified token subject, "" without a valid token.
	Subject string
	// TokenError is the token verification code, "" when valid.
	TokenError token.TokenError
	// Duration is the time Decide took.
	Duration time.Duration
	// Token is the verified token the decision was made on (input.token),
	// nil for answers made without evaluating. For decision logs.
	Token *token.Token
	// Cache is how the decision cache took part: CacheHit, CacheMiss
	// (evaluated, also when the cached entry was stale) or CacheBypass
	// (evaluated, not cacheable); "" for answers made without evaluating.
	Cache string
}

// Values of Decision.Cache.
const (
	CacheHit    = "hit"
	CacheMiss   = "miss"
	CacheBypass = "bypass"
)

// Status returns the HTTP status the decision answers with.
func (d *Decision) Status() int {
	switch {
	case d.Allowed:
		return 200
	case d.HTTPStatus != 0:
		return d.HTTPStatus
	}
	return 403
}

// shape fills d from the decision value v. v == nil means undefined.
func (d *Decision) shape(v ast.Value) error {
	if v == nil {
		return nil
	}
	d.Defined = true
	switch v := v.(type) {
	case ast.Boolean:
		d.Allowed = bool(v)
		return nil
	case ast.Object:
		d.Object = true
		return d.shapeObject(v)
	}
	return fmt.Errorf("%w: the decision is a %s, want a boolean or an object", ErrBadDecision, ast.ValueName(v))
}

func (d *Decision) shapeObject(obj ast.Object) error {
	t := obj.Get(ast.InternedTerm("allowed"))
	if t == nil {
		return fmt.Errorf("%w: the decision object has no \"allowed\" field", ErrBadDecision)
	}
	allowed, ok := t.Value.(ast.Boolean)
	if !ok {
		return fmt.Errorf("%w: \"allowed\" is a %s, want a boolean", ErrBadDecision, ast.ValueName(t.Value))
	}
	d.Allowed = bool(allowed)
	// Iter, not Foreach: the callback returns the error instead of
	// writing a captured variable (one allocation less per decision).
	return obj.Iter(func(k, t *ast.Term) error {
		key, ok := k.Value.(ast.String)
		if !ok {
			return nil
		}
		var err error
		switch string(key) {
		case "http_status":
			d.HTTPStatus, err = httpStatus(t.Value)
		case "headers":
			d.Headers, err = headerList("headers", t.Value)
		case "response_headers_to_add":
			d.ResponseHeadersToAdd, err = headerList("response_headers_to_add", t.Value)
		case "request_headers_to_remove":
			d.RequestHeadersToRemove, err = stringList("request_headers_to_remove", t.Value)
		case "body":
			d.Body, err = stringField("body", t.Value)
		case "reason":
			d.Reason, err = stringField("reason", t.Value)
		case "dynamic_metadata":
			d.DynamicMetadata, err = metadataField("dynamic_metadata", t.Value)
		case "query_parameters_to_set":
			d.QueryParametersToSet, err = paramList(t.Value)
		case "query_parameters_to_remove":
			d.QueryParametersToRemove, err = stringList("query_parameters_to_remove", t.Value)
		}
		return err
	})
}

func httpStatus(v ast.Value) (int, error) {
	n, ok := v.(ast.Number)
	if !ok {
		return 0, fmt.Errorf("%w: http_status is a %s, want a number", ErrBadDecision, ast.ValueName(v))
	}
	i, ok := n.Int()
	if !ok || i < 200 || i > 599 {
		return 0, fmt.Errorf("%w: http_status %v is outside 200-599", ErrBadDecision, n)
	}
	return i, nil
}

func stringField(name string, v ast.Value) (string, error) {
	s, ok := v.(ast.String)
	if !ok {
		return "", fmt.Errorf("%w: %s is a %s, want a string", ErrBadDecision, name, ast.ValueName(v))
	}
	return string(s), nil
}

func stringList(name string, v ast.Value) ([]string, error) {
	var out []string
	var err error
	each := func(t *ast.Term) {
		if err != nil {
			return
		}
		s, ok := t.Value.(ast.String)
		if !ok {
			err = fmt.Errorf("%w: %s has a %s element, want strings", ErrBadDecision, name, ast.ValueName(t.Value))
			return
		}
		out = append(out, string(s))
	}
	switch v := v.(type) {
	case *ast.Array:
		v.Foreach(each)
	case ast.Set:
		v.Foreach(each)
	default:
		return nil, fmt.Errorf("%w: %s is a %s, want an array of strings", ErrBadDecision, name, ast.ValueName(v))
	}
	return out, err
}

// metadataField accepts an object, kept as it is (see Metadata).
func metadataField(name string, v ast.Value) (Metadata, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return Metadata{}, fmt.Errorf("%w: %s is a %s, want an object", ErrBadDecision, name, ast.ValueName(v))
	}
	if obj.Len() == 0 {
		return Metadata{}, nil
	}
	return Metadata{obj: obj}, nil
}

// headerList accepts an object of string or string-array values, or an
// array of such objects (opa-envoy-plugin's forms).
func headerList(name string, v ast.Value) ([]Pair, error) {
	var out []Pair
	switch v := v.(type) {
	case ast.Object:
		return appendHeaders(out, name, v)
	case *ast.Array:
		var err error
		for i := 0; i < v.Len() && err == nil; i++ {
			obj, ok := v.Elem(i).Value.(ast.Object)
			if !ok {
				return nil, fmt.Errorf("%w: %s[%d] is a %s, want an object", ErrBadDecision, name, i, ast.ValueName(v.Elem(i).Value))
			}
			out, err = appendHeaders(out, name, obj)
		}
		return out, err
	}
	return nil, fmt.Errorf("%w: %s is a %s, want an object", ErrBadDecision, name, ast.ValueName(v))
}

func appendHeaders(out []Pair, name string, obj ast.Object) ([]Pair, error) {
	// The result is built in a heap-allocated slice header the callback
	// reaches by pointer: one allocation, not two (closure + captured out).
	dst := &headerAcc{out: out}
	err := obj.Iter(dst.add(name))
	return dst.out, err
}

// headerAcc accumulates the headers of appendHeaders.
type headerAcc struct{ out []Pair }

func (a *headerAcc) add(name string) func(k, t *ast.Term) error {
	return func(k, t *ast.Term) error {
		key, ok := k.Value.(ast.String)
		if !ok || key == "" {
			return fmt.Errorf("%w: %s has a key %v, want a non-empty string", ErrBadDecision, name, k)
		}
		switch val := t.Value.(type) {
		case ast.String:
			a.out = append(a.out, Pair{Key: string(key), Value: string(val)})
		case *ast.Array:
			for i := 0; i < val.Len(); i++ {
				s, ok := val.Elem(i).Value.(ast.String)
				if !ok {
					return fmt.Errorf("%w: %s[%q] has a %s element, want strings", ErrBadDecision, name, string(key), ast.ValueName(val.Elem(i).Value))
				}
				a.out = append(a.out, Pair{Key: string(key), Value: string(s)})
			}
		default:
			return fmt.Errorf("%w: %s[%q] is a %s, want a string or an array of strings", ErrBadDecision, name, string(key), ast.ValueName(t.Value))
		}
		return nil
	}
}

func paramList(v ast.Value) ([]Pair, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, fmt.Errorf("%w: query_parameters_to_set is a %s, want an object", ErrBadDecision, ast.ValueName(v))
	}
	return appendHeaders(nil, "query_parameters_to_set", obj)
}

// HeaderSet reports whether the decision sets header name (case-insensitive)
// among its upstream headers.
func (d *Decision) HeaderSet(name string) bool {
	for _, h := range d.Headers {
		if strings.EqualFold(h.Key, name) {
			return true
		}
	}
	return false
}
