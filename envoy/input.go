// input.go is long (about 620 lines) on purpose: it is the whole
// CheckRequest → input mapping (SPEC §4), field by field, built for the
// policy's Need; every field's rendering is in one place.

package envoy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// PartialBodyHeader is set by Envoy to "true" when it forwarded only part of
// the request body (with_request_body.allow_partial_message).
const PartialBodyHeader = "x-envoy-auth-partial-body"

var (
	keyAttributes    = ast.InternedTerm("attributes")
	keyParsedPath    = ast.InternedTerm("parsed_path")
	keyParsedQuery   = ast.InternedTerm("parsed_query")
	keyParsedBody    = ast.InternedTerm("parsed_body")
	keyTruncatedBody = ast.InternedTerm("truncated_body")
	keyVersion       = ast.InternedTerm("version")
	keySourcePrinc   = ast.InternedTerm("source_principal")
	keyHeaders       = ast.InternedTerm("headers")

	versionV3 = ast.NewTerm(ast.NewObject(
		ast.Item(ast.InternedTerm("ext_authz"), ast.InternedTerm("v3")),
		ast.Item(ast.InternedTerm("encoding"), ast.InternedTerm("protojson")),
	))
)

// ErrMalformedRequest is returned by Prepare for a CheckRequest without HTTP
// request attributes, with a path or query string that cannot be parsed, or
// with a string that is not UTF-8 (also once percent-decoded). It is client
// input: Decide answers it with a 400 deny (reason bad_request), never
// with "cannot decide".
var ErrMalformedRequest = errors.New("malformed CheckRequest")

// BodyError is returned by Prepare when the request body cannot be parsed as
// its content type says. The server answers it with a 400 deny without
// evaluating, as opa-envoy-plugin does.
type BodyError struct{ Err error }

func (e *BodyError) Error() string { return "malformed request body: " + e.Err.Error() }

// Unwrap returns the parse error.
func (e *BodyError) Unwrap() error { return e.Err }

// Input builds the policy input document (SPEC §3) for req: the CheckRequest
// rendered with protojson's names and value encodings, plus parsed_path,
// parsed_query, parsed_body, truncated_body, source_principal and version.
// The engine adds token and tenancy_revision.
func Input(req *authv3.CheckRequest) (ast.Object, error) {
	p, err := Prepare(req)
	if err != nil {
		return nil, err
	}
	return p.Input(authz.NeedAll), nil
}

// Prepared is a CheckRequest whose path and body have been checked and
// parsed, ready to render the parts of the input a policy can read.
type Prepared struct {
	req         *authv3.CheckRequest
	http        *authv3.AttributeContext_HttpRequest
	headers     map[string]string
	parsedPath  *ast.Term
	parsedQuery *ast.Term
	body        *ast.Term
	truncated   bool
	memo        *InputMemo // nil: none
}

// Prepare validates req: HTTP attributes present, its strings (method,
// path, host, headers, context extensions, ...) valid UTF-8, a path and
// query that parse and decode to UTF-8 (else ErrMalformedRequest), a body
// that parses as its content type says (else *BodyError). These checks do
// not depend on the policy.
func Prepare(req *authv3.CheckRequest) (*Prepared, error) { return prepare(req, nil) }

// Prepare is Prepare keeping the peers' renderings in m.
func (m *InputMemo) Prepare(req *authv3.CheckRequest) (*Prepared, error) { return prepare(req, m) }

// prepare is Prepare with the peers' renderings kept in memo (nil: none).
func prepare(req *authv3.CheckRequest, memo *InputMemo) (*Prepared, error) {
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	if httpReq == nil {
		return nil, fmt.Errorf("%w: attributes.request.http is missing", ErrMalformedRequest)
	}
	p := &Prepared{req: req, http: httpReq, headers: RequestHeaders(httpReq), memo: memo}
	if err := checkUTF8(httpReq, p.headers, req.GetAttributes().GetContextExtensions()); err != nil {
		return nil, err
	}
	var err error
	p.parsedPath, p.parsedQuery, err = parsePath(httpReq.GetPath())
	if err != nil {
		return nil, fmt.Errorf("%w: path %q: %v", ErrMalformedRequest, httpReq.GetPath(), err)
	}
	p.body, p.truncated, err = parseBody(p.headers, httpReq.GetBody(), httpReq.GetRawBody())
	if err != nil {
		return nil, &BodyError{Err: err}
	}
	return p, nil
}

// Headers returns the request headers by lowercase name.
func (p *Prepared) Headers() map[string]string { return p.headers }

// Input renders the parts of the input document need asks for (a policy
// cannot read anything else, so the decision is the same as on the whole
// document).
func (p *Prepared) Input(need *authz.Need) ast.Object {
	var ar termArena
	// One block for the whole input, usually: the fixed fields, the
	// headers, the context extensions.
	ar.reserve(32 + 2*len(p.headers) + 2*len(p.req.GetAttributes().GetContextExtensions()))
	var items [7][2]*ast.Term
	n := 0
	add := func(k, v *ast.Term) {
		items[n] = ast.Item(k, v)
		n++
	}
	if c := need.Child("attributes"); c != nil {
		attrs := attributesValue(p.req.GetAttributes(), c, &ar, p.memo)
		if len(p.http.GetHeaders()) == 0 && len(p.headers) > 0 {
			// Envoy with encode_raw_headers sends header_map instead of
			// headers; policies always see input...http.headers.
			if hn := c.Child("request").Child("http").Child("headers"); hn != nil {
				if h, ok := attrs.Get(termRequest).Value.(ast.Object); ok {
					if hh, ok := h.Get(termHTTP).Value.(ast.Object); ok {
						hh.Insert(keyHeaders, ast.NewTerm(stringMapNeed(p.headers, hn, &ar)))
					}
				}
			}
		}
		add(keyAttributes, ar.term(attrs))
	}
	if need.Child("parsed_path") != nil {
		add(keyParsedPath, p.parsedPath)
	}
	if need.Child("parsed_query") != nil {
		add(keyParsedQuery, p.parsedQuery)
	}
	if need.Child("parsed_body") != nil {
		add(keyParsedBody, p.body)
	}
	if need.Child("truncated_body") != nil {
		add(keyTruncatedBody, ast.InternedTerm(p.truncated))
	}
	if need.Child("version") != nil {
		add(keyVersion, versionV3)
	}
	if pr := p.req.GetAttributes().GetSource().GetPrincipal(); pr != "" && need.Child("source_principal") != nil {
		add(keySourcePrinc, ar.str(pr))
	}
	return ast.NewObject(items[:n]...)
}

// RequestHeaders returns the request headers by lowercase name: the headers
// map, or, when Envoy sent header_map (encode_raw_headers), its entries with
// repeated names joined by ",".
func RequestHeaders(h *authv3.AttributeContext_HttpRequest) map[string]string {
	if len(h.GetHeaders()) > 0 || len(h.GetHeaderMap().GetHeaders()) == 0 {
		return h.GetHeaders()
	}
	out := make(map[string]string, len(h.GetHeaderMap().GetHeaders()))
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		k := strings.ToLower(hv.GetKey())
		v := hv.GetValue()
		if v == "" && len(hv.GetRawValue()) > 0 {
			v = string(hv.GetRawValue())
		}
		if prev, ok := out[k]; ok {
			v = prev + "," + v
		}
		out[k] = v
	}
	return out
}

// checkUTF8 reports the first string of the HTTP request attributes, its
// headers or the context extensions that is not valid UTF-8. Over gRPC the
// protobuf decoder has checked most of them already; header_map raw values,
// the HTTP service mode and hand-built requests are checked here.
func checkUTF8(h *authv3.AttributeContext_HttpRequest, headers, ext map[string]string) error {
	for _, f := range [...]struct{ name, v string }{
		{"method", h.GetMethod()}, {"path", h.GetPath()}, {"host", h.GetHost()}, {"scheme", h.GetScheme()},
		{"protocol", h.GetProtocol()}, {"id", h.GetId()}, {"query", h.GetQuery()}, {"fragment", h.GetFragment()},
		{"body", h.GetBody()},
	} {
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrMalformedRequest, f.name)
		}
	}
	for k, v := range headers {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: header %q is not valid UTF-8", ErrMalformedRequest, k)
		}
	}
	for k, v := range ext {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: context extension %q is not valid UTF-8", ErrMalformedRequest, k)
		}
	}
	return nil
}

// stringMapNeed renders the entries of m that need asks for.
func stringMapNeed(m map[string]string, need *authz.Need, ar *termArena) ast.Object {
	if need.All {
		return stringMap(m, ar)
	}
	keys := need.Keys()
	items := make([][2]*ast.Term, 0, len(keys))
	for _, k := range keys {
		if v, ok := m[k]; ok {
			items = append(items, ast.Item(ar.str(k), ar.str(v)))
		}
	}
	return ast.NewObject(items...)
}

func stringMap(m map[string]string, ar *termArena) ast.Object {
	items := make([][2]*ast.Term, 0, len(m))
	ar.reserve(2 * len(m))
	for k, v := range m {
		items = append(items, ast.Item(ar.str(k), ar.str(v)))
	}
	return ast.NewObject(items...)
}

// parsePath splits the percent-decoded path and parses the query, as
// opa-envoy-plugin does: "/a/b?x=1" → ["a","b"], {"x": ["1"]}. A bad
// percent escape, a query Go refuses (";" separators, more than 10,000
// parameters) or a decoded string that is not UTF-8 is an error.
func parsePath(path string) (*ast.Term, *ast.Term, error) {
	rawPath, rawQuery, _ := strings.Cut(path, "?")
	decoded, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, nil, err
	}
	if !utf8.ValidString(decoded) {
		return nil, nil, errors.New("the decoded path is not valid UTF-8")
	}
	rest := strings.TrimLeft(decoded, "/")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, nil, fmt.Errorf("query: %v", err)
	}
	var ar termArena
	nsegs := strings.Count(rest, "/") + 1
	ar.reserve(nsegs + 2 + valuesTerms(query)) // one block for both
	terms := make([]*ast.Term, 0, nsegs)
	for seg := range strings.SplitSeq(rest, "/") {
		terms = append(terms, ar.str(seg))
	}
	q, err := valuesObject(query, &ar)
	if err != nil {
		return nil, nil, fmt.Errorf("query: %v", err)
	}
	return ar.term(ast.NewArray(terms...)), ar.term(q), nil
}

// valuesTerms is the number of terms valuesObject takes from its arena.
func valuesTerms(v url.Values) int {
	n := 2 * len(v)
	for _, vals := range v {
		n += len(vals)
	}
	return n
}

// valuesObject renders decoded query or form values; a name or value that
// is not UTF-8 is an error.
func valuesObject(v url.Values, ar *termArena) (ast.Object, error) {
	total := 0
	for _, vals := range v {
		total += len(vals)
	}
	items := make([][2]*ast.Term, 0, len(v))
	all := make([]*ast.Term, total) // every value array's elements, in one block
	ar.reserve(valuesTerms(v))
	for k, vals := range v {
		if !utf8.ValidString(k) {
			return nil, fmt.Errorf("parameter %q is not valid UTF-8", k)
		}
		terms := all[:len(vals):len(vals)]
		all = all[len(vals):]
		for i, s := range vals {
			if !utf8.ValidString(s) {
				return nil, fmt.Errorf("the value of parameter %q is not valid UTF-8", k)
			}
			terms[i] = ar.str(s)
		}
		items = append(items, ast.Item(ar.str(k), ar.term(ast.NewArray(terms...))))
	}
	return ast.NewObject(items...), nil
}

var nullTerm = ast.NullTerm()

// parseBody parses JSON, form and multipart bodies. A body Envoy marked as
// partial, or shorter than its content-length, is not parsed: truncated.
func parseBody(headers map[string]string, body string, raw []byte) (*ast.Term, bool, error) {
	if headers[PartialBodyHeader] == "true" {
		return nullTerm, true, nil
	}
	ct, ok := headers["content-type"]
	if !ok {
		return nullTerm, false, nil
	}
	payload := body
	if payload == "" {
		payload = string(raw)
	}
	if payload == "" {
		return nullTerm, false, nil
	}
	if cl, ok := headers["content-length"]; ok {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("content-length %q: %v", cl, err)
		}
		if n != -1 && n > int64(len(payload)) {
			return nullTerm, true, nil
		}
	}
	switch {
	case strings.Contains(ct, "application/json"):
		if !utf8.ValidString(payload) {
			// RFC 8259 §8.1; Go's decoder would turn the bytes into U+FFFD.
			return nil, false, errors.New("JSON: not valid UTF-8")
		}
		v, err := parseJSONValue(payload)
		if err != nil {
			return nil, false, fmt.Errorf("JSON: %v", err)
		}
		return ast.NewTerm(v), false, nil
	case strings.Contains(ct, "application/x-www-form-urlencoded"):
		vals, err := url.ParseQuery(payload)
		if err != nil {
			return nil, false, fmt.Errorf("form: %v", err)
		}
		obj, err := valuesObject(vals, &termArena{})
		if err != nil {
			return nil, false, fmt.Errorf("form: %v", err)
		}
		return ast.NewTerm(obj), false, nil
	case strings.Contains(ct, "multipart/form-data"):
		return parseMultipart(ct, payload)
	}
	return nullTerm, false, nil
}

// parseJSONValue parses exactly one JSON value (numbers kept exact): trailing
// data after it is an error, as for opa-envoy-plugin's body parser, so a
// body an upstream would refuse is never half-read into parsed_body.
func parseJSONValue(payload string) (ast.Value, error) {
	dec := util.NewJSONDecoder(strings.NewReader(payload))
	var x any
	if err := dec.Decode(&x); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("trailing data after the JSON value")
		}
		return nil, err
	}
	return ast.InterfaceToValue(x)
}

func parseMultipart(ct, payload string) (*ast.Term, bool, error) {
	_, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return nil, false, fmt.Errorf("multipart content-type: %v", err)
	}
	boundary, ok := params["boundary"]
	if !ok {
		return nullTerm, false, nil
	}
	values := map[string][]*ast.Term{}
	var order []string
	mr := multipart.NewReader(strings.NewReader(payload), boundary)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, false, fmt.Errorf("multipart: %v", err)
		}
		name := p.FormName()
		if name == "" {
			continue
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return nil, false, fmt.Errorf("multipart part %q: %v", name, err)
		}
		var t *ast.Term
		if strings.Contains(p.Header.Get("Content-Type"), "application/json") {
			v, err := parseJSONValue(string(b))
			if err != nil {
				return nil, false, fmt.Errorf("multipart part %q: JSON: %v", name, err)
			}
			t = ast.NewTerm(v)
		} else {
			t = ast.StringTerm(string(b))
		}
		if _, seen := values[name]; !seen {
			order = append(order, name)
		}
		values[name] = append(values[name], t)
	}
	obj := ast.NewObjectWithCapacity(len(order))
	for _, k := range order {
		obj.Insert(ast.StringTerm(k), ast.ArrayTerm(values[k]...))
	}
	return ast.NewTerm(obj), false, nil
}

// messageValue renders a message as protojson would, directly as an OPA
// object: JSON field names, populated fields only, 64-bit integers as
// strings, bytes as base64, enums by name, well-known types in their JSON
// form.
func messageValue(m protoreflect.Message) ast.Object {
	obj := ast.NewObjectWithCapacity(m.Descriptor().Fields().Len())
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		obj.Insert(ast.StringTerm(fd.JSONName()), ast.NewTerm(fieldValue(fd, v)))
		return true
	})
	return obj
}

func fieldValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) ast.Value {
	switch {
	case fd.IsMap():
		mv := v.Map()
		obj := ast.NewObjectWithCapacity(mv.Len())
		vd := fd.MapValue()
		mv.Range(func(k protoreflect.MapKey, val protoreflect.Value) bool {
			obj.Insert(ast.StringTerm(k.String()), ast.NewTerm(singular(vd, val)))
			return true
		})
		return obj
	case fd.IsList():
		l := v.List()
		terms := make([]*ast.Term, l.Len())
		for i := range terms {
			terms[i] = ast.NewTerm(singular(fd, l.Get(i)))
		}
		return ast.NewArray(terms...)
	}
	return singular(fd, v)
}

func singular(fd protoreflect.FieldDescriptor, v protoreflect.Value) ast.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return ast.Boolean(v.Bool())
	case protoreflect.StringKind:
		return ast.String(v.String())
	case protoreflect.BytesKind:
		return ast.String(base64.StdEncoding.EncodeToString(v.Bytes()))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return ast.Number(strconv.FormatInt(v.Int(), 10))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return ast.Number(strconv.FormatUint(v.Uint(), 10))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return ast.String(strconv.FormatInt(v.Int(), 10))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return ast.String(strconv.FormatUint(v.Uint(), 10))
	case protoreflect.FloatKind:
		return floatValue(v.Float(), 32)
	case protoreflect.DoubleKind:
		return floatValue(v.Float(), 64)
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return ast.String(ev.Name())
		}
		return ast.Number(strconv.FormatInt(int64(v.Enum()), 10))
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return wellKnownOrMessage(v.Message())
	}
	return ast.Null{}
}

func floatValue(f float64, bits int) ast.Value {
	switch {
	case math.IsNaN(f):
		return ast.String("NaN")
	case math.IsInf(f, 1):
		return ast.String("Infinity")
	case math.IsInf(f, -1):
		return ast.String("-Infinity")
	}
	return ast.Number(strconv.FormatFloat(f, 'g', -1, bits))
}

func wellKnownOrMessage(m protoreflect.Message) ast.Value {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Timestamp":
		if ts, ok := m.Interface().(*timestamppb.Timestamp); ok {
			return ast.String(formatTimestamp(ts))
		}
	case "google.protobuf.Duration":
		if d, ok := m.Interface().(*durationpb.Duration); ok {
			return ast.String(formatDuration(d))
		}
	case "google.protobuf.Struct":
		if s, ok := m.Interface().(*structpb.Struct); ok {
			return structValue(s)
		}
	case "google.protobuf.Value":
		if s, ok := m.Interface().(*structpb.Value); ok {
			return valueValue(s)
		}
	case "google.protobuf.ListValue":
		if s, ok := m.Interface().(*structpb.ListValue); ok {
			return listValue(s)
		}
	case "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
		"google.protobuf.Int32Value", "google.protobuf.UInt32Value", "google.protobuf.Int64Value",
		"google.protobuf.UInt64Value", "google.protobuf.FloatValue", "google.protobuf.DoubleValue":
		fd := m.Descriptor().Fields().ByName("value")
		return singular(fd, m.Get(fd))
	case "google.protobuf.Any", "google.protobuf.FieldMask", "google.protobuf.Empty":
		// Rare in CheckRequests: let protojson render them exactly.
		b, err := protojson.Marshal(m.Interface())
		if err != nil {
			return ast.Null{}
		}
		v, err := ast.ValueFromReader(strings.NewReader(string(b)))
		if err != nil {
			return ast.Null{}
		}
		return v
	}
	return messageValue(m)
}

func structValue(s *structpb.Struct) ast.Object {
	obj := ast.NewObjectWithCapacity(len(s.GetFields()))
	for k, v := range s.GetFields() {
		obj.Insert(ast.StringTerm(k), ast.NewTerm(valueValue(v)))
	}
	return obj
}

func listValue(l *structpb.ListValue) *ast.Array {
	terms := make([]*ast.Term, len(l.GetValues()))
	for i, v := range l.GetValues() {
		terms[i] = ast.NewTerm(valueValue(v))
	}
	return ast.NewArray(terms...)
}

func valueValue(v *structpb.Value) ast.Value {
	switch k := v.GetKind().(type) {
	case *structpb.Value_BoolValue:
		return ast.Boolean(k.BoolValue)
	case *structpb.Value_StringValue:
		return ast.String(k.StringValue)
	case *structpb.Value_NumberValue:
		return floatValue(k.NumberValue, 64)
	case *structpb.Value_StructValue:
		return structValue(k.StructValue)
	case *structpb.Value_ListValue:
		return listValue(k.ListValue)
	}
	return ast.Null{}
}

// formatTimestamp follows protojson: RFC 3339 in UTC with 0, 3, 6 or 9
// fractional digits.
func formatTimestamp(ts *timestamppb.Timestamp) string {
	t := time.Unix(ts.GetSeconds(), int64(ts.GetNanos())).UTC()
	var buf [40]byte
	b := t.AppendFormat(buf[:0], "2006-01-02T15:04:05.000000000")
	for _, cut := range [...]string{"000", "000", ".000"} {
		if bytes.HasSuffix(b, []byte(cut)) {
			b = b[:len(b)-len(cut)]
		}
	}
	return string(append(b, 'Z'))
}

// formatDuration follows protojson: seconds with 0, 3, 6 or 9 fractional
// digits and an "s" suffix.
func formatDuration(d *durationpb.Duration) string {
	secs, nanos := d.GetSeconds(), d.GetNanos()
	sign := ""
	if secs < 0 || nanos < 0 {
		sign, secs, nanos = "-", -secs, -nanos
	}
	s := fmt.Sprintf("%s%d.%09d", sign, secs, nanos)
	s = strings.TrimSuffix(s, "000")
	s = strings.TrimSuffix(s, "000")
	s = strings.TrimSuffix(s, ".000")
	return s + "s"
}
