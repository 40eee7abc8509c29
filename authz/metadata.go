package authz

import (
	"encoding/json"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Metadata is a decision's dynamic metadata: the object the policy
// returned, kept as evaluated. Converting it to Go maps for every decision
// cost a dozen allocations per check, and a cached decision held both
// forms; readers now convert only what they use. The zero Metadata is
// none. A Metadata is immutable and may be shared (the decision cache
// hands the same one to every hit).
type Metadata struct{ obj ast.Object }

// MetadataOf converts decoded JSON values (strings, json.Number, float64,
// bool, nil, []any, map[string]any) to a Metadata; an empty or nil m is
// none.
func MetadataOf(m map[string]any) (Metadata, error) {
	if len(m) == 0 {
		return Metadata{}, nil
	}
	v, err := ast.InterfaceToValue(m)
	if err != nil {
		return Metadata{}, err
	}
	return Metadata{obj: v.(ast.Object)}, nil
}

// StringMetadata is the Metadata of string keys and values, given as
// alternating pairs (key, value, key, value...).
func StringMetadata(kv ...string) Metadata {
	obj := ast.NewObjectWithCapacity(len(kv) / 2)
	for i := 0; i+1 < len(kv); i += 2 {
		obj.Insert(ast.StringTerm(kv[i]), ast.StringTerm(kv[i+1]))
	}
	return Metadata{obj: obj}
}

// detached returns a copy of m made of terms of its own (see Engine.fill).
func (m Metadata) detached() Metadata {
	if m.obj == nil {
		return m
	}
	return Metadata{obj: m.obj.Copy()}
}

// Len is the number of keys.
func (m Metadata) Len() int {
	if m.obj == nil {
		return 0
	}
	return m.obj.Len()
}

// Object is the metadata as an OPA object (nil for none). Callers must not
// modify it.
func (m Metadata) Object() ast.Object { return m.obj }

// String returns the string value of key, if it is one.
func (m Metadata) String(key string) (string, bool) {
	if m.obj == nil {
		return "", false
	}
	t := m.obj.Get(ast.StringTerm(key))
	if t == nil {
		return "", false
	}
	s, ok := t.Value.(ast.String)
	return string(s), ok
}

// Map returns the metadata as decoded JSON values (numbers as json.Number,
// sets as arrays, non-string keys as their JSON text), a fresh copy the
// caller owns; nil for none.
func (m Metadata) Map() map[string]any {
	if m.obj == nil {
		return nil
	}
	x, err := ast.JSON(m.obj)
	if err != nil {
		return nil // unreachable: evaluation results are ground
	}
	out, _ := x.(map[string]any)
	return out
}

// MarshalJSON writes Map.
func (m Metadata) MarshalJSON() ([]byte, error) {
	if m.obj == nil {
		return []byte("null"), nil
	}
	return json.Marshal(m.Map())
}

// metadataBytes is the accounted size of the metadata a cached decision
// holds: its strings and numbers plus a per-term overhead (a Term, its
// boxed value and the object slot), counted without converting it.
func metadataBytes(m Metadata) int {
	if m.obj == nil {
		return 0
	}
	return valueBytes(m.obj)
}

func valueBytes(v ast.Value) int {
	const term = 64
	switch x := v.(type) {
	case ast.String:
		return term + len(x)
	case ast.Number:
		return term + len(x)
	case ast.Object:
		n := term + 64
		x.Foreach(func(k, e *ast.Term) { n += 32 + valueBytes(k.Value) + valueBytes(e.Value) })
		return n
	case *ast.Array:
		n := term + 24
		x.Foreach(func(e *ast.Term) { n += 8 + valueBytes(e.Value) })
		return n
	case ast.Set:
		n := term + 64
		x.Foreach(func(e *ast.Term) { n += 32 + valueBytes(e.Value) })
		return n
	}
	return term
}
