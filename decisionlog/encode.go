package decisionlog

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
)

// inputPath is the way down to the request headers in the input.
var inputPath = [...]string{"attributes", "request", "http"}

// encoder writes OPA values as JSON, escaping as encoding/json does (HTML
// characters included), so that a secret's escaped form is the same
// wherever it appears in a record. It leaves out the secret request
// headers and header_map (whose raw values would carry them
// base64-encoded; http.headers has the same headers), calling erased with
// the JSON pointer of each. One encoder is reused by one goroutine: its
// callbacks are bound once, so objects cost no allocation.
type encoder struct {
	b      []byte
	first  bool
	depth  int // how far down inputPath the current object is (-1: off it)
	erased func(string)
	// secrets are replaced in every string written (see secretsOf).
	secrets []string

	itemFn func(k, t *ast.Term)
	elemFn func(t *ast.Term)
}

func newEncoder() *encoder {
	e := &encoder{}
	e.itemFn, e.elemFn = e.item, e.elem
	return e
}

// input appends the input document to b, secrets replaced.
func (e *encoder) input(b []byte, v ast.Value, secrets []string, erased func(string)) []byte {
	e.b, e.secrets = b, secrets
	e.value(v, 0, erased)
	b, e.b, e.erased, e.secrets = e.b, nil, nil, nil
	return b
}

func (e *encoder) value(v ast.Value, depth int, erased func(string)) {
	switch x := v.(type) {
	case ast.Null:
		e.b = append(e.b, "null"...)
	case ast.Boolean:
		e.b = strconv.AppendBool(e.b, bool(x))
	case ast.Number:
		e.b = append(e.b, x...)
	case ast.String:
		e.b = appendString(e.b, scrubString(string(x), e.secrets))
	case *ast.Array:
		e.b = append(e.b, '[')
		for i := range x.Len() {
			if i > 0 {
				e.b = append(e.b, ',')
			}
			e.value(x.Elem(i).Value, -1, nil)
		}
		e.b = append(e.b, ']')
	case ast.Set:
		first := e.first
		e.b, e.first = append(e.b, '['), true
		x.Foreach(e.elemFn)
		e.b, e.first = append(e.b, ']'), first
	case ast.Object:
		first, d, er := e.first, e.depth, e.erased
		e.b, e.first, e.depth, e.erased = append(e.b, '{'), true, depth, erased
		x.Foreach(e.itemFn)
		e.b, e.first, e.depth, e.erased = append(e.b, '}'), first, d, er
	default:
		j, err := ast.JSON(v)
		out, err2 := json.Marshal(j)
		if err != nil || err2 != nil {
			e.b = append(e.b, "null"...)
			return
		}
		e.b = append(e.b, out...)
	}
}

func (e *encoder) elem(t *ast.Term) {
	if !e.first {
		e.b = append(e.b, ',')
	}
	e.first = false
	e.value(t.Value, -1, nil)
}

func (e *encoder) item(k, t *ast.Term) {
	ks, ok := k.Value.(ast.String)
	if !ok {
		ks = ast.String(k.String())
	}
	next := -1
	switch {
	case e.erased == nil || e.depth < 0:
	case e.depth < len(inputPath):
		if string(ks) == inputPath[e.depth] {
			next = e.depth + 1
		}
	case e.depth == len(inputPath): // in input.attributes.request.http
		switch string(ks) {
		case "headerMap":
			e.erased("/input/attributes/request/http/headerMap")
			return
		case "headers":
			next = e.depth + 1
		}
	case e.depth == len(inputPath)+1: // in its headers
		if isSecretHeader(string(ks)) {
			e.erased("/input/attributes/request/http/headers/" + escapePointer(string(ks)))
			return
		}
	}
	if !e.first {
		e.b = append(e.b, ',')
	}
	e.first = false
	e.b = appendString(e.b, scrubString(string(ks), e.secrets))
	e.b = append(e.b, ':')
	if next < 0 {
		e.value(t.Value, -1, nil)
	} else {
		e.value(t.Value, next, e.erased)
	}
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, as encoding/json escapes it.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}
