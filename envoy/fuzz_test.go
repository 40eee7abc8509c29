package envoy_test

// Fuzz targets of the ext_authz front ends: the CheckRequest → input
// builder (FuzzCheckRequest) and the HTTP service's request reader
// (FuzzHTTPService). Both run through a real envoy.Server and authz.Engine
// whose policy allows every request that reaches evaluation, so that the
// one thing deciding "deny" is Gatehouse's own handling of malformed client
// input: a malformed request must be denied (400), never allowed and never
// answered with an error; a well-formed one must be allowed.
//
// `go test` runs the seeds (f.Add and testdata/fuzz/<target>/); `make fuzz`
// runs each target for $(FUZZTIME).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// fuzzRevision is the tenancy revision the fuzzed sidecar serves: a minimum
// revision above it cannot be reached.
const fuzzRevision = 3

// fuzzPolicy allows whatever reaches evaluation, reading the whole input
// (so the whole input document is built for every request) and checking
// the shapes SPEC §3 promises.
const fuzzPolicy = `package envoy.authz

default allow := false

allow if {
	walk(input, _)
	is_array(input.parsed_path)
	every s in input.parsed_path { is_string(s) }
	is_object(input.parsed_query)
	every k, vs in input.parsed_query {
		is_string(k)
		every v in vs { is_string(v) }
	}
	is_boolean(input.truncated_body)
	input.version.ext_authz == "v3"
	is_object(input.attributes.request.http)
	is_number(input.tenancy_revision)
	is_object(input.token)
}
`

const fuzzIssuer = "https://idp.fuzz.test/"

// startFuzzSidecar serves fuzzPolicy over a tenancy store at fuzzRevision,
// with an RS256 issuer so that fuzzed tokens are really verified. A minimum
// revision waits at most a millisecond.
func startFuzzSidecar(tb testing.TB) (*testutil.Sidecar, string) {
	tb.Helper()
	key := testutil.RSAKey(tb, "fuzz")
	pem := testutil.PolicyDir(tb, map[string]string{"public.pem": string(testutil.PublicKeyPEM(tb, &key.PublicKey))})
	sc := testutil.StartSidecar(tb, testutil.Options{
		Policies: map[string]string{"policy.rego": fuzzPolicy},
		Issuers:  []token.IssuerConfig{{Issuer: fuzzIssuer, Audiences: []string{"api"}, PublicKeyFile: pem + "/public.pem"}},
		Engine:   authz.Config{MinRevisionWait: time.Millisecond},
		Tenancy:  testutil.NewTenancy(fuzzRevision, nil),
		Logger:   slog.New(slog.DiscardHandler),
	})
	tok := testutil.MintJWT(tb, jwt.SigningMethodRS256, key, "", testutil.Claims(fuzzIssuer, "alice", nil))
	return sc, tok
}

// verdict is what a request must get, judged from the request alone.
type verdict struct {
	// malformed: a client-controlled part does not parse (SPEC §2): the
	// answer must be a 400 deny.
	malformed bool
	// stale: a well-formed minimum revision above fuzzRevision: the answer
	// must be a 429 deny (unless the request is also malformed).
	stale bool
	// ambiguous: a part the SPEC does not classify (a ';' in a query, a
	// content type that merely contains a parsed one, a multipart body, a
	// content-length that is not a number): allow or a 400 deny, never an
	// error.
	ambiguous bool
	why       string
}

func (v *verdict) bad(why string) {
	if !v.malformed {
		v.malformed, v.why = true, why
	}
}

func (v *verdict) unsure(why string) {
	if !v.ambiguous {
		v.ambiguous = true
		if v.why == "" {
			v.why = why
		}
	}
}

// judge classifies a request independently of the code under test: path
// (with query), lowercase headers, body and context extensions.
func judge(path string, headers map[string]string, body string, ext map[string]string) verdict {
	var v verdict
	// Every string a client sends must be UTF-8 (SPEC §2: a deny 400),
	// raw and, for the path and query, percent-decoded.
	if !utf8.ValidString(path) {
		v.bad("path is not UTF-8")
	}
	for k, val := range headers {
		if !utf8.ValidString(k) || !utf8.ValidString(val) {
			v.bad("header " + strconv.Quote(k) + " is not UTF-8")
		}
	}
	for k, val := range ext {
		if !utf8.ValidString(k) || !utf8.ValidString(val) {
			v.bad("context extension " + strconv.Quote(k) + " is not UTF-8")
		}
	}
	rawPath, rawQuery, _ := strings.Cut(path, "?")
	if p, err := url.PathUnescape(rawPath); err != nil {
		v.bad("path does not percent-decode")
	} else if !utf8.ValidString(p) {
		v.bad("path decodes to invalid UTF-8")
	}
	judgeQuery(&v, "query", rawQuery)
	judgeBody(&v, headers, body)
	for _, s := range []string{headers[envoy.HeaderMinRevision], ext["min_revision"]} {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !allDigits(s) {
			v.bad("min revision " + strconv.Quote(s) + " is not a number")
			continue
		}
		r, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			v.bad("min revision " + strconv.Quote(s) + " overflows")
			continue
		}
		if r > fuzzRevision {
			v.stale = true
			if v.why == "" {
				v.why = "min revision above the served one"
			}
		}
	}
	return v
}

// judgeQuery checks an application/x-www-form-urlencoded string: every key
// and value must percent-decode; ';' separators are ambiguous (Go refuses
// them, opa-envoy-plugin drops the pair).
func judgeQuery(v *verdict, what, q string) {
	for pair := range strings.SplitSeq(q, "&") {
		if strings.Contains(pair, ";") {
			v.unsure(what + " has a ';'")
			continue
		}
		k, val, _ := strings.Cut(pair, "=")
		if dk, err := url.QueryUnescape(k); err != nil {
			v.bad(what + " key does not percent-decode")
		} else if !utf8.ValidString(dk) {
			v.bad(what + " key decodes to invalid UTF-8")
		}
		if dv, err := url.QueryUnescape(val); err != nil {
			v.bad(what + " value does not percent-decode")
		} else if !utf8.ValidString(dv) {
			v.bad(what + " value decodes to invalid UTF-8")
		}
	}
}

// judgeBody: a body is parsed when it has a content type, is not marked
// partial and is not shorter than its content-length (SPEC §3).
func judgeBody(v *verdict, headers map[string]string, body string) {
	ct, ok := headers["content-type"]
	if !ok || body == "" || headers[envoy.PartialBodyHeader] == "true" {
		return
	}
	if cl, ok := headers["content-length"]; ok {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil {
			v.unsure("content-length is not a number")
			return
		}
		if n != -1 && n > int64(len(body)) {
			return // truncated: not parsed
		}
	}
	mt, _, err := mime.ParseMediaType(ct)
	jsonish := strings.Contains(ct, "application/json")
	formish := strings.Contains(ct, "application/x-www-form-urlencoded")
	multi := strings.Contains(ct, "multipart/form-data")
	parsed := 0
	for _, b := range []bool{jsonish, formish, multi} {
		if b {
			parsed++
		}
	}
	switch {
	case parsed > 1:
		v.unsure("content type names several parsed types")
	case err != nil && parsed > 0:
		v.unsure("content type does not parse")
	case jsonish && mt == "application/json":
		if !utf8.ValidString(body) || !json.Valid([]byte(body)) {
			v.bad("JSON body does not parse")
		}
	case formish && mt == "application/x-www-form-urlencoded":
		judgeQuery(v, "form body", body)
	case parsed > 0, mt == "application/json", mt == "application/x-www-form-urlencoded", mt == "multipart/form-data":
		v.unsure("content type " + strconv.Quote(ct) + " is parsed by substring, differs in case, or is multipart")
	}
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// outcome is how the sidecar answered: allowed, or a deny with its status.
type outcome struct {
	allowed bool
	status  int
}

// checkOutcome fails unless the answer is one v permits.
func checkOutcome(t *testing.T, v verdict, got outcome) {
	t.Helper()
	switch {
	case v.malformed:
		if got.allowed || (got.status != http.StatusBadRequest && !(v.stale && got.status == http.StatusTooManyRequests)) {
			t.Fatalf("malformed request (%s) answered %+v, want a 400 deny", v.why, got)
		}
	case v.stale:
		if got.allowed || got.status != http.StatusTooManyRequests && !(v.ambiguous && got.status == http.StatusBadRequest) {
			t.Fatalf("request for an unreachable minimum revision answered %+v, want a 429 deny", got)
		}
	case v.ambiguous:
		if !got.allowed && got.status != http.StatusBadRequest {
			t.Fatalf("request (%s) answered %+v, want an allow or a 400 deny", v.why, got)
		}
	default:
		if !got.allowed {
			t.Fatalf("well-formed request answered %+v, want an allow (the policy allows everything)", got)
		}
	}
}

// parseBlock splits "k<sep>v" lines into a map (first separator; later
// lines win); lower lowercases the keys, as Envoy sends header names.
func parseBlock(block string, sep string, lower bool) map[string]string {
	out := map[string]string{}
	for line := range strings.SplitSeq(block, "\n") {
		k, v, ok := strings.Cut(line, sep)
		if !ok || k == "" {
			continue
		}
		if lower {
			k = strings.ToLower(k)
		}
		out[k] = v
	}
	return out
}

// FuzzCheckRequest fuzzes the HTTP attributes of a gRPC CheckRequest
// (method, path with query, host, headers, body or raw body, context
// extensions) through envoy.Server.Check. Properties: no panic; the input
// document is valid for OPA (JSON-serializable, its attributes exactly
// protojson's rendering); a malformed request is a 400 deny, an
// unreachable minimum revision a 429 deny, anything else an allow — never a
// gRPC error for what the client controls.
func FuzzCheckRequest(f *testing.F) {
	sc, tok := startFuzzSidecar(f)
	auth := "authorization:Bearer " + tok
	f.Add("GET", "/t/acme/items?x=1&y=2", "api.example.com", auth+"\nx-request-id:1", "", "project=p1", false)
	f.Add("POST", "/items", "api.example.com", "content-type:application/json", `{"a":[1,2,{"b":null}]}`, "", false)
	f.Add("POST", "/items", "h", "content-type:application/json", `{"a":`, "", false)
	f.Add("POST", "/items", "h", "content-type:application/json", `{} trailing`, "", false)
	f.Add("POST", "/items", "h", "content-type:application/json\ncontent-length:100", `{"a":`, "", false)
	f.Add("POST", "/items", "h", "content-type:application/json\nx-envoy-auth-partial-body:true", `{"a":`, "", true)
	f.Add("POST", "/form", "h", "content-type:application/x-www-form-urlencoded", "a=1&b=%zz", "", false)
	f.Add("POST", "/form", "h", "content-type:application/x-www-form-urlencoded; charset=utf-8", "a=1&b=2&a=3", "", true)
	f.Add("POST", "/up", "h", "content-type:multipart/form-data; boundary=XX", "--XX\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n--XX--\r\n", "", false)
	f.Add("GET", "/bad%zzpath", "h", "", "", "", false)
	f.Add("GET", "/ok?bad=%z1", "h", "", "", "", false)
	f.Add("GET", "/ok?a=1;b=2", "h", "", "", "", false)
	f.Add("GET", "/", "h", "x-gatehouse-min-revision:2", "", "", false)
	f.Add("GET", "/", "h", "x-gatehouse-min-revision:99", "", "", false)
	f.Add("GET", "/", "h", "x-gatehouse-min-revision:-1", "", "", false)
	f.Add("GET", "/", "h", "", "", "min_revision=abc", false)
	f.Add("GET", "/", "h", "authorization:Bearer a.b.c\ncontent-length:x", "", "", false)
	f.Add("", "", "", "", "", "", false)

	f.Fuzz(func(t *testing.T, method, path, host, headerBlock, body, extBlock string, raw bool) {
		// grpc-go refuses strings that are not UTF-8 before any handler
		// runs; what reaches Check is always valid.
		method, path, host, headerBlock, extBlock = validUTF8(method), validUTF8(path), validUTF8(host), validUTF8(headerBlock), validUTF8(extBlock)
		body = validUTF8(body)
		headers := parseBlock(headerBlock, ":", true)
		ext := parseBlock(extBlock, "=", false)
		headers[":method"], headers[":path"], headers[":authority"] = method, path, host
		r := testutil.CheckRequest(testutil.Request{Method: method, Path: path, Host: host, Headers: headers, ContextExtensions: ext})
		h := r.Attributes.Request.Http
		h.Method, h.Path, h.Host = method, path, host // no defaults
		h.Headers = headers
		if raw {
			h.RawBody = []byte(body)
		} else {
			h.Body = body
		}
		v := judge(path, headers, body, ext)

		checkInput(t, r, v)

		resp, err := sc.Server.Check(t.Context(), r)
		if err != nil {
			t.Fatalf("Check answered a gRPC error (%v) for a client-controlled request (%s): want a deny", status.Convert(err), v.why)
		}
		got := outcome{allowed: resp.GetStatus().GetCode() == int32(code.Code_OK)}
		if !got.allowed {
			got.status = int(resp.GetDeniedResponse().GetStatus().GetCode())
		}
		checkOutcome(t, v, got)
	})
}

func validUTF8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// checkInput builds the input document the way the engine does and checks
// that OPA can take it: the whole document serializes to JSON, and its
// attributes are exactly protojson's rendering of the request.
func checkInput(t *testing.T, r *authv3.CheckRequest, v verdict) {
	t.Helper()
	in, err := envoy.Input(r)
	if err != nil {
		if !v.malformed && !v.ambiguous {
			t.Fatalf("Input refused a well-formed request: %v", err)
		}
		return
	}
	doc, err := ast.JSON(in)
	if err != nil {
		t.Fatalf("input is not JSON-serializable: %v", err)
	}
	if _, err := json.Marshal(doc); err != nil {
		t.Fatalf("input does not marshal: %v", err)
	}
	b, err := protojson.Marshal(r.Attributes)
	if err != nil {
		return // protojson refuses some strings; grpc-go would have too
	}
	want, err := ast.ValueFromReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("protojson output does not parse: %v", err)
	}
	got := in.Get(ast.StringTerm("attributes"))
	if got == nil || got.Value.Compare(want) != 0 {
		t.Fatalf("input.attributes differ from protojson's rendering:\n got %v\nwant %v", got, want)
	}
}

// FuzzHTTPService writes raw bytes to the HTTP service's real listener, as
// Envoy's HTTP client (or anything else) could. Properties: no panic; an
// answer from Gatehouse (one carrying x-gatehouse-decision-id) is never a
// 5xx, is 200 only for a well-formed request and 400 for a malformed one;
// an answer without a decision id (net/http refusing the bytes itself) is a
// 4xx.
func FuzzHTTPService(f *testing.F) {
	sc, tok := startFuzzSidecar(f)
	addr := sc.Server.HTTPAddr().String()
	seeds := []string{
		"GET /t/acme/items?x=1 HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer " + tok + "\r\nX-Gatehouse-Context-Project: p1\r\n\r\n",
		"POST /items HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n",
		"POST /items HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\":",
		"POST /items HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"a\":",
		"POST /items HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}x\r\n0\r\n\r\n",
		"POST /f HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\na=%zz&b",
		"GET /bad%zz HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /q?a=%g0 HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /q?a=1;b=2 HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX-Gatehouse-Min-Revision: 12x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX-Gatehouse-Min-Revision: 7\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX-Gatehouse-Context-Min_revision: 1\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET http://other.example/abs?x HTTP/1.1\r\nHost: h\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
		"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil || req.ProtoMajor != 1 {
			return // net/http refuses it before any handler: not ours to judge
		}
		body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20+1))
		if err != nil {
			// an incomplete body: the server would wait for the rest, as
			// for any client; Envoy always forwards complete requests
			return
		}
		v := judgeHTTP(req, body)

		resp := roundTrip(t, addr, raw)
		if resp == nil {
			return
		}
		if resp.StatusCode >= 500 {
			t.Fatalf("HTTP service answered %d (cannot decide) for a client-controlled request (%s): want a deny", resp.StatusCode, v.why)
		}
		if resp.Header.Get(envoy.HeaderDecisionID) == "" {
			if resp.StatusCode < 400 {
				// Envoy allows on 200; any answer net/http makes without
				// asking the policy (OPTIONS *, ServeMux's redirects of
				// non-clean paths) is not Gatehouse's decision
				t.Fatalf("HTTP service answered %d without a decision (no %s): the request never reached the policy", resp.StatusCode, envoy.HeaderDecisionID)
			}
			return // net/http refused the request itself
		}
		checkOutcome(t, v, outcome{allowed: resp.StatusCode == http.StatusOK, status: resp.StatusCode})
	})
}

// judgeHTTP classifies a forwarded request as the HTTP service sees it:
// the raw request URI, lowercase headers joined with ",", the
// x-gatehouse-context-* headers as context extensions, and the body (only
// read when the request announces one; beyond 1 MiB it is partial).
func judgeHTTP(req *http.Request, body []byte) verdict {
	path := req.RequestURI
	if path == "" || path == "*" {
		path = req.URL.RequestURI()
	}
	headers := map[string]string{}
	ext := map[string]string{}
	for k, vs := range req.Header {
		lk := strings.ToLower(k)
		if name, ok := strings.CutPrefix(lk, envoy.HeaderContextPrefix); ok && name != "" {
			ext[name] = strings.Join(vs, ",")
			continue
		}
		headers[lk] = strings.Join(vs, ",")
	}
	if req.ContentLength == 0 {
		body = nil
	}
	if !utf8.ValidString(req.Method) || !utf8.ValidString(req.Host) {
		var v verdict
		v.bad("method or host is not UTF-8")
		return v
	}
	if len(body) > 1<<20 {
		body = body[:1<<20]
		headers[envoy.PartialBodyHeader] = "true"
	}
	return judge(path, headers, string(body), ext)
}

// roundTrip writes raw to the HTTP service and reads the first final
// answer (nil when the server closed without one). The write side stays
// open, as Envoy's connection does: a half-closed connection cancels the
// request's context (the client left), which no answer reaches anyway.
func roundTrip(t *testing.T, addr string, raw []byte) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial the HTTP service: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(raw); err != nil {
		return nil // the server may close early on garbage
	}
	br := bufio.NewReader(conn)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("no answer from the HTTP service within 10s")
			}
			return nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 200 {
			return resp
		}
	}
}
