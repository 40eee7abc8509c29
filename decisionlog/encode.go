package decisionlog

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
)

// appendJSON appends v as JSON, escaping as encoding/json does (HTML
// characters included), so that a secret's escaped form is the same
// wherever it appears in a record. erase, when set, is called for each
// object key at the given depth with the keys above it: it reports keys to
// leave out.
func appendJSON(b []byte, v ast.Value, path []string, erase func(path []string, key string) bool) []byte {
	switch x := v.(type) {
	case ast.Null:
		return append(b, "null"...)
	case ast.Boolean:
		return strconv.AppendBool(b, bool(x))
	case ast.Number:
		return append(b, x...)
	case ast.String:
		return appendString(b, string(x))
	case *ast.Array:
		b = append(b, '[')
		for i := range x.Len() {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, x.Elem(i).Value, nil, nil)
		}
		return append(b, ']')
	case ast.Set:
		b = append(b, '[')
		first := true
		x.Foreach(func(t *ast.Term) {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendJSON(b, t.Value, nil, nil)
		})
		return append(b, ']')
	case ast.Object:
		b = append(b, '{')
		first := true
		x.Foreach(func(k, t *ast.Term) {
			ks, ok := k.Value.(ast.String)
			if !ok {
				ks = ast.String(k.String())
			}
			if erase != nil && erase(path, string(ks)) {
				return
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, string(ks))
			b = append(b, ':')
			var sub []string
			if erase != nil && len(path) < 4 {
				sub = append(path[:len(path):len(path)], string(ks))
			}
			if sub == nil {
				b = appendJSON(b, t.Value, nil, nil)
			} else {
				b = appendJSON(b, t.Value, sub, erase)
			}
		})
		return append(b, '}')
	}
	j, err := ast.JSON(v)
	if err != nil {
		return append(b, "null"...)
	}
	out, err := json.Marshal(j)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, out...)
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

// eraseSecretHeaders leaves the secret headers out of
// input.attributes.request.http.headers, and header_map (whose raw values
// would carry them base64-encoded) entirely: http.headers has its values.
func eraseSecretHeaders(path []string, key string) bool {
	if len(path) != 4 && len(path) != 3 {
		return false
	}
	if path[0] != "attributes" || path[1] != "request" || path[2] != "http" {
		return false
	}
	if len(path) == 3 {
		return key == "headerMap"
	}
	return path[3] == "headers" && isSecretHeader(key)
}

// scrubBytes replaces every secret, raw or JSON-escaped, in an encoded
// record.
func scrubBytes(b []byte, secrets []string) []byte {
	// A secret that JSON escapes appears only in its escaped form (its
	// raw form could span a delimiter).
	for _, s := range secrets {
		esc := appendString(nil, s)
		if esc = esc[1 : len(esc)-1]; bytes.Contains(b, esc) {
			b = bytes.ReplaceAll(b, esc, []byte(redacted))
		}
	}
	return b
}
