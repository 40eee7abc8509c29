package decisionlog

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
)

// inputPath is the way down to the request headers in the input.
var inputPath = [...]string{"attributes", "request", "http"}

// JSON writes a record's JSON straight into a reused buffer: strings are
// escaped as encoding/json escapes them (HTML characters included), so a
// secret's escaped form is the same wherever it appears, and scrubbed of
// the record's secrets before they are escaped (a replacement never cuts
// an escape sequence). Writing an input document, it leaves out the
// secret request headers and header_map (whose raw values would carry
// them base64-encoded; http.headers has the same headers) as it meets
// them, and notes the JSON pointer of each.
//
// A front end that can write its input document without building it
// writes it member by member (Key, then one value) with the methods below
// (see InputWriter). A JSON is used by one goroutine; its buffers and
// callbacks are reused, so writing costs no allocation once warm.
type JSON struct {
	b      []byte
	first  bool   // the open container has no member yet
	key    bool   // a key was written: the next value is its value
	firsts []bool // first of the enclosing containers
	depth  int    // containers open
	// Erasing the secret headers (track): on is the depth of the deepest
	// open object on the way to the headers, next that the value about
	// to be written is the next one on that way.
	track  bool
	on     int
	next   bool
	erased []string
	// secrets are replaced in every string written; a string shorter
	// than minSecret cannot contain one.
	secrets   []string
	minSecret int

	itemFn func(k, t *ast.Term)
	elemFn func(t *ast.Term)
}

func newJSON() *JSON {
	w := &JSON{}
	w.itemFn, w.elemFn = w.item, w.elem
	return w
}

// reset starts a new value in b (its contents kept), scrubbed of secrets;
// with input, the value is an input document whose secret headers are
// erased.
func (w *JSON) reset(b []byte, secrets []string, input bool) {
	w.b, w.first, w.key, w.firsts, w.depth = b, true, false, w.firsts[:0], 0
	w.track, w.on, w.next, w.erased = input, 0, input, w.erased[:0]
	w.secrets, w.minSecret = secrets, minLen(secrets)
}

func minLen(ss []string) int {
	if len(ss) == 0 {
		return int(^uint(0) >> 1)
	}
	n := len(ss[0])
	for _, s := range ss[1:] {
		n = min(n, len(s))
	}
	return n
}

// sep writes the comma before a value or a key, unless it is a key's value
// or the first member.
func (w *JSON) sep() {
	if w.key {
		w.key = false
		return
	}
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
}

// BeginObject opens an object.
func (w *JSON) BeginObject() {
	w.sep()
	w.firsts = append(w.firsts, w.first)
	w.b, w.first = append(w.b, '{'), true
	w.depth++
	if w.next {
		w.on, w.next = w.depth, false
	}
}

// EndObject closes the object.
func (w *JSON) EndObject() {
	w.b = append(w.b, '}')
	if w.on == w.depth {
		w.on--
	}
	w.depth--
	w.first, w.firsts = w.firsts[len(w.firsts)-1], w.firsts[:len(w.firsts)-1]
}

// BeginArray opens an array.
func (w *JSON) BeginArray() {
	w.sep()
	w.next = false
	w.firsts = append(w.firsts, w.first)
	w.b, w.first = append(w.b, '['), true
	w.depth++
}

// EndArray closes the array.
func (w *JSON) EndArray() {
	w.b = append(w.b, ']')
	w.depth--
	w.first, w.firsts = w.firsts[len(w.firsts)-1], w.firsts[:len(w.firsts)-1]
}

// Key writes the key of the next member of the open object and reports
// whether its value is to be written: false when the member is erased (a
// secret request header, header_map); then write no value.
func (w *JSON) Key(k string) bool {
	if w.track && w.on == w.depth && w.on > 0 {
		switch level := w.depth - 1; {
		case level < len(inputPath):
			w.next = k == inputPath[level]
		case level == len(inputPath): // in input.attributes.request.http
			switch k {
			case "headerMap":
				w.erased = append(w.erased, "/input/attributes/request/http/headerMap")
				return false
			case "headers":
				w.next = true
			}
		case level == len(inputPath)+1: // in its headers
			if isSecretHeader(k) {
				w.erased = append(w.erased, erasedHeader(k))
				return false
			}
		}
	}
	w.sep()
	w.b = appendString(w.b, w.scrub(k))
	w.b = append(w.b, ':')
	w.key = true
	return true
}

// String writes a string.
func (w *JSON) String(s string) {
	w.sep()
	w.next = false
	w.b = appendString(w.b, w.scrub(s))
}

// Raw writes a value already in JSON (a number).
func (w *JSON) Raw(s string) {
	w.sep()
	w.next = false
	w.b = append(w.b, s...)
}

// Uint writes an unsigned integer.
func (w *JSON) Uint(n uint64) {
	w.sep()
	w.next = false
	w.b = strconv.AppendUint(w.b, n, 10)
}

// Int writes an integer.
func (w *JSON) Int(n int64) {
	w.sep()
	w.next = false
	w.b = strconv.AppendInt(w.b, n, 10)
}

// Bool writes a boolean.
func (w *JSON) Bool(v bool) {
	w.sep()
	w.next = false
	w.b = strconv.AppendBool(w.b, v)
}

// Null writes null.
func (w *JSON) Null() {
	w.sep()
	w.next = false
	w.b = append(w.b, "null"...)
}

// scrub replaces the secrets in s.
func (w *JSON) scrub(s string) string {
	if len(s) < w.minSecret {
		return s
	}
	return scrubString(s, w.secrets)
}

// Value writes an OPA value (sets as arrays).
func (w *JSON) Value(v ast.Value) {
	switch x := v.(type) {
	case ast.Null:
		w.Null()
	case ast.Boolean:
		w.Bool(bool(x))
	case ast.Number:
		w.Raw(string(x))
	case ast.String:
		w.String(string(x))
	case *ast.Array:
		w.BeginArray()
		for i := range x.Len() {
			w.Value(x.Elem(i).Value)
		}
		w.EndArray()
	case ast.Set:
		w.BeginArray()
		x.Foreach(w.elemFn)
		w.EndArray()
	case ast.Object:
		w.BeginObject()
		x.Foreach(w.itemFn)
		w.EndObject()
	default:
		j, err := ast.JSON(v)
		if err != nil {
			w.Null()
			return
		}
		w.Any(j)
	}
}

func (w *JSON) elem(t *ast.Term) { w.Value(t.Value) }

func (w *JSON) item(k, t *ast.Term) {
	ks, ok := k.Value.(ast.String)
	if !ok {
		ks = ast.String(k.String())
	}
	if w.Key(string(ks)) {
		w.Value(t.Value)
	}
}

// Any writes a JSON-like Go value (maps, slices, strings, numbers,
// booleans, nil), as encoding/json would.
func (w *JSON) Any(v any) {
	switch x := v.(type) {
	case nil:
		w.Null()
	case string:
		w.String(x)
	case bool:
		w.Bool(x)
	case json.Number:
		w.Raw(string(x))
	case json.RawMessage:
		v, err := ast.ValueFromReader(bytes.NewReader(x))
		if err != nil {
			w.Null()
			return
		}
		w.Value(v)
	case int:
		w.Int(int64(x))
	case int64:
		w.Int(x)
	case uint64:
		w.Uint(x)
	case map[string]any:
		w.BeginObject()
		for k, e := range x {
			if w.Key(k) {
				w.Any(e)
			}
		}
		w.EndObject()
	case []any:
		w.BeginArray()
		for _, e := range x {
			w.Any(e)
		}
		w.EndArray()
	case []string:
		w.BeginArray()
		for _, e := range x {
			w.String(e)
		}
		w.EndArray()
	default:
		// float64 and anything rarer: as encoding/json writes it, its
		// strings scrubbed through the OPA value.
		if av, err := ast.InterfaceToValue(x); err == nil {
			if _, ok := av.(ast.Number); !ok {
				w.Value(av)
				return
			}
		}
		out, err := json.Marshal(x)
		if err != nil {
			w.Null()
			return
		}
		w.Raw(string(out))
	}
}

const hexDigits = "0123456789abcdef"

// plain are the ASCII bytes a JSON string holds as they are (encoding/json's
// HTML-safe set).
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendString appends s as a JSON string, as encoding/json escapes it.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
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

// erasedHeader is the JSON pointer of erased header k (no allocation for
// the usual lowercase names).
func erasedHeader(k string) string {
	switch k {
	case "authorization":
		return "/input/attributes/request/http/headers/authorization"
	case "proxy-authorization":
		return "/input/attributes/request/http/headers/proxy-authorization"
	}
	return "/input/attributes/request/http/headers/" + escapePointer(k)
}

// pointerEscaper escapes a JSON pointer segment (RFC 6901).
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// escapePointer escapes a JSON pointer segment.
func escapePointer(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return pointerEscaper.Replace(s)
}
