package tenancy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// CheckKeys reports the first object key of the JSON document data that is
// duplicated in its object, or that is not exactly the name of a field of
// the Go type v decodes into (at every level: nested structs, slices and
// maps of them). encoding/json matches field names case-insensitively and
// lets the last of duplicated keys win; the control API must not: a key
// that two readers could see differently ("ID" beside "id", "Owner", the
// Kelvin sign for "k") is refused. Keys of maps (labels) may be anything
// but must not repeat. Values decoded as json.RawMessage or interfaces are
// checked for duplicates only. Structs are matched through their json tags
// (embedded structs are not looked into: their fields count as unknown).
//
// data must be valid JSON (json.Valid); the error is an *Error of code
// invalid (422) naming the key and where it is.
func CheckKeys(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := walkKeys(dec, reflect.TypeOf(v), ""); err != nil {
		if e, ok := err.(*Error); ok {
			return e
		}
		return malformed("%v", err)
	}
	return nil
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

// walkKeys reads one JSON value from dec, checking its keys against t
// (nil: any keys, checked for duplicates only). path names the value in
// errors.
func walkKeys(dec *json.Decoder, t reflect.Type, path string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == rawMessageType || (t != nil && t.Kind() == reflect.Interface) {
		t = nil
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil // a scalar
	}
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := walkKeys(dec, elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case '{':
		var fields map[string]reflect.Type
		var elem reflect.Type
		switch {
		case t == nil:
		case t.Kind() == reflect.Struct:
			fields = jsonFields(t)
		case t.Kind() == reflect.Map:
			elem = t.Elem()
		default:
			t = nil // a type mismatch: json.Unmarshal reports it
		}
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
			at := key
			if path != "" {
				at = path + "." + key
			}
			if seen[key] {
				return invalid("field %q appears twice", at)
			}
			seen[key] = true
			next := elem
			if fields != nil {
				ft, ok := fields[key]
				if !ok {
					return unknownField(at, key, fields)
				}
				next = ft
			}
			if err := walkKeys(dec, next, at); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// unknownField is the error of a key that names no field, with a hint
// when it differs from one only in case.
func unknownField(at, key string, fields map[string]reflect.Type) *Error {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return invalid("unknown field %q (field names are case-sensitive: %q)", at, name)
		}
	}
	return invalid("unknown field %q", at)
}

// jsonFields maps the JSON names of a struct's exported fields to their
// types, as encoding/json names them (the tag's name, else the Go name).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || f.Anonymous {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
