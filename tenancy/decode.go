package tenancy

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Decoding stored documents on the hot path. Stored values are written by
// this package with encoding/json (entities, role lists, chains), so they
// are compact JSON objects of strings, string lists and string maps. The
// decoders below read them straight from the bytes without reflection:
// strings without escapes are copied as they are; a string holding an
// escape is decoded by encoding/json (rare: ids and roles cannot hold one).
// Unknown fields are skipped, as DecodeStored ignores them. Anything that
// is not well-formed JSON of the expected shape is an error (the caller
// reports damage).

var errSyntax = errors.New("not the JSON document expected")

// decoder walks one JSON document.
type decoder struct {
	b []byte
	i int
}

func (d *decoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte (0 at the end).
func (d *decoder) peek() byte {
	d.ws()
	if d.i < len(d.b) {
		return d.b[d.i]
	}
	return 0
}

func (d *decoder) expect(c byte) error {
	if d.peek() != c {
		return fmt.Errorf("%w: want %q at offset %d", errSyntax, c, d.i)
	}
	d.i++
	return nil
}

// literal consumes one of the words true, false, null.
func (d *decoder) literal(word string) bool {
	if len(d.b)-d.i >= len(word) && string(d.b[d.i:d.i+len(word)]) == word {
		d.i += len(word)
		return true
	}
	return false
}

// rawStr decodes a string (the next value must be one) and returns its
// bytes: a slice of the document when it holds no escape, a decoded copy
// otherwise.
func (d *decoder) rawStr() ([]byte, error) {
	if d.peek() != '"' {
		return nil, fmt.Errorf("%w: want a string at offset %d", errSyntax, d.i)
	}
	start := d.i
	d.i++
	escaped := false
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			d.i++
			if !escaped {
				return d.b[start+1 : d.i-1], nil
			}
			var s string
			if err := json.Unmarshal(d.b[start:d.i], &s); err != nil {
				return nil, fmt.Errorf("%w: %v", errSyntax, err)
			}
			return []byte(s), nil
		case c == '\\':
			escaped = true
			d.i += 2
		case c < 0x20:
			return nil, fmt.Errorf("%w: control character in a string at offset %d", errSyntax, d.i)
		default:
			d.i++
		}
	}
	return nil, fmt.Errorf("%w: unterminated string", errSyntax)
}

// str decodes a string (the next value must be one).
func (d *decoder) str() (string, error) {
	b, err := d.rawStr()
	return string(b), err
}

// strOrNull decodes a string or null ("").
func (d *decoder) strOrNull() (string, error) {
	if d.peek() == 'n' {
		if d.literal("null") {
			return "", nil
		}
	}
	return d.str()
}

// strings decodes a list of strings, or null (nil).
func (d *decoder) strings() ([]string, error) {
	if d.peek() == 'n' && d.literal("null") {
		return nil, nil
	}
	if err := d.expect('['); err != nil {
		return nil, err
	}
	out := []string{}
	if d.peek() == ']' {
		d.i++
		return out, nil
	}
	for {
		s, err := d.str()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
		switch d.peek() {
		case ',':
			d.i++
		case ']':
			d.i++
			return out, nil
		default:
			return nil, fmt.Errorf("%w: want , or ] at offset %d", errSyntax, d.i)
		}
	}
}

// stringMap decodes an object of strings, or null (nil).
func (d *decoder) stringMap() (map[string]string, error) {
	if d.peek() == 'n' && d.literal("null") {
		return nil, nil
	}
	out := map[string]string{}
	err := d.object(func(key []byte) error {
		v, err := d.str()
		out[string(key)] = v
		return err
	})
	return out, err
}

// object walks the members of an object, calling field for each key with
// the decoder positioned at its value; field must consume the value. The
// key is only valid during the call.
func (d *decoder) object(field func(key []byte) error) error {
	if err := d.expect('{'); err != nil {
		return err
	}
	if d.peek() == '}' {
		d.i++
		return nil
	}
	for {
		key, err := d.rawStr()
		if err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		if err := field(key); err != nil {
			return err
		}
		switch d.peek() {
		case ',':
			d.i++
		case '}':
			d.i++
			return nil
		default:
			return fmt.Errorf("%w: want , or } at offset %d", errSyntax, d.i)
		}
	}
}

// document is object over the whole of d: the object, then nothing but
// white space after it.
func (d *decoder) document(field func(key []byte) error) error {
	if err := d.object(field); err != nil {
		return err
	}
	return d.end()
}

// skip consumes any value.
func (d *decoder) skip() error {
	switch c := d.peek(); {
	case c == '"':
		_, err := d.str()
		return err
	case c == '{':
		return d.object(func([]byte) error { return d.skip() })
	case c == '[':
		d.i++
		if d.peek() == ']' {
			d.i++
			return nil
		}
		for {
			if err := d.skip(); err != nil {
				return err
			}
			switch d.peek() {
			case ',':
				d.i++
			case ']':
				d.i++
				return nil
			default:
				return fmt.Errorf("%w: want , or ] at offset %d", errSyntax, d.i)
			}
		}
	case c == 't':
		if d.literal("true") {
			return nil
		}
	case c == 'f':
		if d.literal("false") {
			return nil
		}
	case c == 'n':
		if d.literal("null") {
			return nil
		}
	case c == '-' || (c >= '0' && c <= '9'):
		start := d.i
		for d.i < len(d.b) && (d.b[d.i] == '-' || d.b[d.i] == '+' || d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E' || (d.b[d.i] >= '0' && d.b[d.i] <= '9')) {
			d.i++
		}
		if !json.Valid(d.b[start:d.i]) {
			return fmt.Errorf("%w: bad number at offset %d", errSyntax, start)
		}
		return nil
	}
	return fmt.Errorf("%w: unexpected input at offset %d", errSyntax, d.i)
}

// end checks that nothing but space follows the document.
func (d *decoder) end() error {
	if d.peek() != 0 || d.i != len(d.b) {
		return fmt.Errorf("%w: trailing data at offset %d", errSyntax, d.i)
	}
	return nil
}

func decodeStrings(doc []byte) ([]string, error) {
	d := decoder{b: doc}
	out, err := d.strings()
	if err == nil {
		err = d.end()
	}
	return out, err
}

func decodeUser(doc []byte, u *User) error {
	d := decoder{b: doc}
	err := d.document(func(key []byte) (err error) {
		switch string(key) {
		case "id":
			u.ID, err = d.str()
		case "tenant":
			u.Tenant, err = d.str()
		case "kind":
			u.Kind, err = d.str()
		case "status":
			u.Status, err = d.str()
		case "issuer":
			u.Issuer, err = d.strOrNull()
		case "labels":
			u.Labels, err = d.stringMap()
		default:
			err = d.skip()
		}
		return err
	})
	return err
}

func decodeTenant(doc []byte, t *Tenant) error {
	d := decoder{b: doc}
	err := d.document(func(key []byte) (err error) {
		switch string(key) {
		case "id":
			t.ID, err = d.str()
		case "name":
			t.Name, err = d.str()
		case "parent":
			t.Parent, err = d.strOrNull()
		case "kind":
			t.Kind, err = d.str()
		case "status":
			t.Status, err = d.str()
		case "labels":
			t.Labels, err = d.stringMap()
		default:
			err = d.skip()
		}
		return err
	})
	return err
}

func decodeProject(doc []byte, p *Project) error {
	d := decoder{b: doc}
	err := d.document(func(key []byte) (err error) {
		switch string(key) {
		case "id":
			p.ID, err = d.str()
		case "owner":
			p.Owner, err = d.str()
		case "roles":
			p.Roles, err = d.strings()
		case "labels":
			p.Labels, err = d.stringMap()
		default:
			err = d.skip()
		}
		return err
	})
	return err
}

// Hot-path views: the fields SPEC §6 questions need, as byte slices of the
// document (copies only where a string holds an escape), nothing else
// decoded, nothing allocated otherwise.

// userView is what Decide needs of a stored user.
type userView struct{ tenant, status, issuer []byte }

func viewUser(doc []byte) (u userView, err error) {
	d := decoder{b: doc}
	err = d.document(func(key []byte) (err error) {
		switch string(key) {
		case "tenant":
			u.tenant, err = d.rawStr()
		case "status":
			u.status, err = d.rawStr()
		case "issuer":
			if d.peek() == 'n' && d.literal("null") {
				return nil
			}
			u.issuer, err = d.rawStr()
		default:
			err = d.skip()
		}
		return err
	})
	return u, err
}

// viewStatus returns the status of a stored tenant.
func viewStatus(doc []byte) (status []byte, err error) {
	d := decoder{b: doc}
	err = d.document(func(key []byte) (err error) {
		if string(key) == "status" {
			status, err = d.rawStr()
			return err
		}
		return d.skip()
	})
	return status, err
}

// eachString calls fn with every element of a stored list of strings (or
// null), until fn returns false.
func eachString(doc []byte, fn func(s []byte) bool) error {
	d := decoder{b: doc}
	if d.peek() == 'n' && d.literal("null") {
		return d.end()
	}
	if err := d.expect('['); err != nil {
		return err
	}
	if d.peek() == ']' {
		d.i++
		return d.end()
	}
	more := true
	for {
		s, err := d.rawStr()
		if err != nil {
			return err
		}
		if more {
			more = fn(s)
		}
		switch d.peek() {
		case ',':
			d.i++
		case ']':
			d.i++
			return d.end()
		default:
			return fmt.Errorf("%w: want , or ] at offset %d", errSyntax, d.i)
		}
	}
}
