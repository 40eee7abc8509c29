package envoy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// evaluated418 answers every request it evaluates with 418: a check that
// reaches the policy is told apart from one Gatehouse denies before.
const evaluated418 = `package envoy.authz
allow := {"allowed": false, "http_status": 418, "body": "evaluated"}
`

// rawCodec sends pre-encoded request bytes (which may hold what a Go
// client refuses to encode: invalid UTF-8) and decodes the response.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

func (rawCodec) Name() string { return "proto" }

// checkRaw sends encoded CheckRequest bytes over conn.
func checkRaw(ctx context.Context, conn *grpc.ClientConn, raw []byte) (*authv3.CheckResponse, error) {
	resp := &authv3.CheckResponse{}
	err := conn.Invoke(ctx, "/envoy.service.auth.v3.Authorization/Check", raw, resp, grpc.ForceCodecV2(rawCodec{}))
	return resp, err
}

// marker stands for a client string while a request is encoded; it is then
// replaced by bytes of the same length (the encoding stays well formed).
const marker = "zzmarkzz"

// Client strings that are not UTF-8, each as long as marker.
var notUTF8 = map[string]string{
	"invalid bytes":   "a\xff\xfeb\xc3(cd",
	"lone surrogates": "\xed\xa0\x80\xed\xbf\xbfab", // U+D800, U+DFFF encoded
	"overlong slash":  "\xc0\xafabcdef",
}

// rawHTTP writes req to the HTTP service on a new connection and reads
// the answer.
func rawHTTP(tb testing.TB, addr, req string) (*http.Response, string) {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		tb.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		tb.Fatalf("read answer to %.80q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// rawRequest renders r as an HTTP/1.1 request as Envoy's http_service
// forwards it, with its bytes as given (nothing is escaped or checked).
// extra are further header lines ("Name: value").
func rawRequest(r testutil.Request, extra ...string) string {
	if r.Method == "" {
		r.Method = "GET"
	}
	if r.Path == "" {
		r.Path = "/"
	}
	if r.Host == "" {
		r.Host = "api.example.com"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", r.Method, r.Path, r.Host)
	keys := make([]string, 0, len(r.Headers))
	for k := range r.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %s\r\n", k, r.Headers[k])
	}
	for k, v := range r.ContextExtensions {
		fmt.Fprintf(&b, "%s%s: %s\r\n", envoy.HeaderContextPrefix, k, v)
	}
	for _, l := range extra {
		b.WriteString(l + "\r\n")
	}
	if r.Body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(r.Body))
	}
	b.WriteString("\r\n" + r.Body)
	return b.String()
}

// wantGRPCDeny fails unless the Check answered a deny with status and
// reason (and retry-after: 1 for a 429).
func wantGRPCDeny(tb testing.TB, resp *authv3.CheckResponse, err error, status int, reason string) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("Check error %v, want a %d %s deny", err, status, reason)
	}
	d := resp.GetDeniedResponse()
	if d == nil || code.Code(resp.GetStatus().GetCode()) != code.Code_PERMISSION_DENIED || int(d.GetStatus().GetCode()) != status {
		tb.Fatalf("CheckResponse %v, want a %d deny", resp, status)
	}
	hs := map[string]string{}
	for _, h := range d.GetHeaders() {
		hs[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	wantDenyBody(tb, d.GetBody(), hs["retry-after"], status, reason)
}

// wantHTTPDeny is wantGRPCDeny for the HTTP service: the status, the JSON
// body, a decision id (the request reached Gatehouse's answer, not Go's).
func wantHTTPDeny(tb testing.TB, resp *http.Response, body string, status int, reason string) {
	tb.Helper()
	if resp.StatusCode != status {
		tb.Fatalf("HTTP %d %q, want %d %s", resp.StatusCode, body, status, reason)
	}
	if resp.Header.Get(envoy.HeaderDecisionID) == "" {
		tb.Errorf("HTTP %d without %s: not Gatehouse's answer", resp.StatusCode, envoy.HeaderDecisionID)
	}
	wantDenyBody(tb, body, resp.Header.Get("retry-after"), status, reason)
}

func wantDenyBody(tb testing.TB, body, retryAfter string, status int, reason string) {
	tb.Helper()
	if reason == "" { // the policy's own answer
		if body != "evaluated" {
			tb.Errorf("body %q, want the policy's", body)
		}
		return
	}
	var b struct{ Error, Reason string }
	if err := json.Unmarshal([]byte(body), &b); err != nil || b.Reason != reason || b.Error == "" {
		tb.Errorf("body %q (%v), want {\"error\", \"reason\": %q}", body, err, reason)
	}
	if want := map[bool]string{true: "1"}[status == http.StatusTooManyRequests]; retryAfter != want {
		tb.Errorf("retry-after %q, want %q", retryAfter, want)
	}
}

// TestClientInputIsNeverCannotDecide: whatever a client controls — the
// path, query, headers, host, body, minimum revision (header or the
// route's context extension), request size — is answered with a deny
// (400 bad_request, 413 request_too_large, 429 stale) over both transports,
// never with a gRPC error or a 5xx that Envoy's failure_mode_allow would
// turn into an allow (SPEC §2). The policy would answer 418: these are
// decided before it runs.
func TestClientInputIsNeverCannotDecide(t *testing.T) {
	t.Parallel()
	const limit = 128 << 10
	sc := startPolicy(t, evaluated418, testutil.Options{
		Engine: authz.Config{MinRevisionWait: 30 * time.Millisecond},
		Server: envoy.Config{MaxRequestBytes: limit, MaxBodyBytes: limit},
	})
	httpAddr := sc.Server.HTTPAddr().String()
	withHeader := func(k, v string) testutil.Request {
		return testutil.Request{Path: "/a", Headers: map[string]string{k: v}}
	}
	withExt := func(k, v string) testutil.Request {
		return testutil.Request{Path: "/a", ContextExtensions: map[string]string{k: v}}
	}
	tenThousandAndOne := "/a?" + strings.Repeat("p=1&", 10_000) + "p=1"
	type result struct {
		status int
		reason string // "" = the policy answered (418 "evaluated")
	}
	tests := map[string]struct {
		req   testutil.Request
		extra []string // further raw header lines (HTTP service)
		want  result
		http  *result // when the HTTP service answers otherwise
	}{
		"min revision abc":               {req: withHeader("x-gatehouse-min-revision", "abc"), want: result{400, "bad_request"}},
		"min revision -1":                {req: withHeader("x-gatehouse-min-revision", "-1"), want: result{400, "bad_request"}},
		"min revision 1e30":              {req: withHeader("x-gatehouse-min-revision", "1e30"), want: result{400, "bad_request"}},
		"min revision +5":                {req: withHeader("x-gatehouse-min-revision", "+5"), want: result{400, "bad_request"}},
		"min revision 0x10":              {req: withHeader("x-gatehouse-min-revision", "0x10"), want: result{400, "bad_request"}},
		"min revision beyond uint64":     {req: withHeader("x-gatehouse-min-revision", "99999999999999999999999"), want: result{400, "bad_request"}},
		"min revision two values":        {req: withHeader("x-gatehouse-min-revision", "5,6"), want: result{400, "bad_request"}},
		"min revision max uint64":        {req: withHeader("x-gatehouse-min-revision", "18446744073709551615"), want: result{429, "stale"}},
		"min revision not reached":       {req: withHeader("x-gatehouse-min-revision", "5"), want: result{429, "stale"}},
		"min revision empty":             {req: withHeader("x-gatehouse-min-revision", ""), want: result{418, ""}},
		"min revision 0":                 {req: withHeader("x-gatehouse-min-revision", " 0 "), want: result{418, ""}},
		"min revision header twice":      {req: testutil.Request{Path: "/a"}, extra: []string{"x-gatehouse-min-revision: 1", "x-gatehouse-min-revision: 2"}, want: result{400, "bad_request"}},
		"context min_revision abc":       {req: withExt("min_revision", "abc"), want: result{400, "bad_request"}},
		"context min_revision -1":        {req: withExt("min_revision", "-1"), want: result{400, "bad_request"}},
		"context min_revision 1e3":       {req: withExt("min_revision", "1e3"), want: result{400, "bad_request"}},
		"context min_revision huge":      {req: withExt("min_revision", "1"+strings.Repeat("0", 40)), want: result{400, "bad_request"}},
		"context min_revision unreached": {req: withExt("min_revision", "7"), want: result{429, "stale"}},
		// Go's HTTP server refuses a request target with a bad escape itself (400)
		"path %zz":                      {req: testutil.Request{Path: "/a%zz"}, want: result{400, "bad_request"}, http: &result{400, ""}},
		"path %":                        {req: testutil.Request{Path: "/a%"}, want: result{400, "bad_request"}, http: &result{400, ""}},
		"path %0":                       {req: testutil.Request{Path: "/a%0"}, want: result{400, "bad_request"}, http: &result{400, ""}},
		"path %ff decodes to non-UTF-8": {req: testutil.Request{Path: "/a/%ff"}, want: result{400, "bad_request"}},
		"path encoded lone surrogate":   {req: testutil.Request{Path: "/a/%ED%A0%80"}, want: result{400, "bad_request"}},
		"path encoded overlong":         {req: testutil.Request{Path: "/a/%C0%AF"}, want: result{400, "bad_request"}},
		"query %zz":                     {req: testutil.Request{Path: "/a?x=%zz"}, want: result{400, "bad_request"}},
		"query name %zz":                {req: testutil.Request{Path: "/a?%zz=1"}, want: result{400, "bad_request"}},
		"query %":                       {req: testutil.Request{Path: "/a?x=%"}, want: result{400, "bad_request"}},
		"query %ff":                     {req: testutil.Request{Path: "/a?x=%ff"}, want: result{400, "bad_request"}},
		"query semicolon":               {req: testutil.Request{Path: "/a?x=1;y=2"}, want: result{400, "bad_request"}},
		"query 10,001 parameters":       {req: testutil.Request{Path: tenThousandAndOne}, want: result{400, "bad_request"}},
		"query 10,000 parameters":       {req: testutil.Request{Path: "/a?" + strings.Repeat("p=1&", 9_999) + "p=1"}, want: result{418, ""}},
		"JSON body malformed": {req: testutil.Request{Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "application/json"}, Body: `{"a":`},
			want: result{400, "bad_request"}},
		"JSON body lone surrogate escape": {req: testutil.Request{Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "application/json"}, Body: `{"a":"\ud800"}`},
			want: result{418, ""}}, // JSON escapes decode to U+FFFD: valid
		"form body %zz": {req: testutil.Request{Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "application/x-www-form-urlencoded"}, Body: "a=%zz"},
			want: result{400, "bad_request"}},
		"form body %ff": {req: testutil.Request{Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "application/x-www-form-urlencoded"}, Body: "a=%ff"},
			want: result{400, "bad_request"}},
		"multipart without a closing boundary": {req: testutil.Request{Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "multipart/form-data; boundary=X"}, Body: "--X\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb"},
			want: result{400, "bad_request"}},
		"content-length not a number": {req: testutil.Request{Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "application/json", "content-length": "x"}, Body: "{}"},
			want: result{400, "bad_request"}, http: &result{400, ""}}, // Go refuses the request itself
		"path over the limit":   {req: testutil.Request{Path: "/" + strings.Repeat("a", limit)}, want: result{413, "request_too_large"}},
		"header over the limit": {req: withHeader("x-big", strings.Repeat("b", limit)), want: result{413, "request_too_large"}},
		"headers over the limit": {req: func() testutil.Request {
			h := map[string]string{}
			for i := range 4000 {
				h[fmt.Sprintf("x-h%04d", i)] = strings.Repeat("v", 32)
			}
			return testutil.Request{Path: "/a", Headers: h}
		}(), want: result{413, "request_too_large"}},
		"body over the limit": {req: testutil.Request{Method: "POST", Path: "/a", Headers: map[string]string{"content-type": "text/plain"}, Body: strings.Repeat("x", limit)},
			want: result{413, "request_too_large"}, http: &result{418, ""}}, // HTTP: passed on as partial, as Envoy's allow_partial_message
	}
	for name, tc := range tests {
		t.Run(name+"/grpc", func(t *testing.T) {
			t.Parallel()
			req := testutil.CheckRequest(tc.req)
			if len(tc.extra) > 0 {
				var vs []string
				for _, l := range tc.extra {
					_, v, _ := strings.Cut(l, ": ")
					vs = append(vs, v)
				}
				req.Attributes.Request.Http.Headers["x-gatehouse-min-revision"] = strings.Join(vs, ",")
			}
			resp, err := sc.Client.Check(t.Context(), req)
			wantGRPCDeny(t, resp, err, tc.want.status, tc.want.reason)
		})
		t.Run(name+"/http", func(t *testing.T) {
			t.Parallel()
			want := tc.want
			if tc.http != nil {
				want = *tc.http
			}
			resp, body := rawHTTP(t, httpAddr, rawRequest(tc.req, tc.extra...))
			if want.reason == "" && want.status != 418 { // Go's own refusal
				if resp.StatusCode != want.status {
					t.Fatalf("HTTP %d %q, want %d", resp.StatusCode, body, want.status)
				}
				return
			}
			wantHTTPDeny(t, resp, body, want.status, want.reason)
		})
	}
	t.Run("no HTTP attributes/grpc", func(t *testing.T) {
		t.Parallel()
		for _, req := range []*authv3.CheckRequest{{}, {Attributes: &authv3.AttributeContext{}}, {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}} {
			resp, err := sc.Client.Check(t.Context(), req)
			wantGRPCDeny(t, resp, err, 400, "bad_request")
		}
	})
	t.Run("header_map raw value not UTF-8/grpc", func(t *testing.T) {
		t.Parallel()
		req := testutil.CheckRequest(testutil.Request{Path: "/a"})
		h := req.Attributes.Request.Http
		h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":path", RawValue: []byte("/a")}, {Key: "x-a", RawValue: []byte("\xff")}}}
		h.Headers = nil
		resp, err := sc.Client.Check(t.Context(), req)
		wantGRPCDeny(t, resp, err, 400, "bad_request")
	})
	t.Run("not a CheckRequest/grpc", func(t *testing.T) {
		t.Parallel()
		for _, raw := range [][]byte{{0xff}, {0x0a, 0x05, 0x01}, []byte("not protobuf at all")} {
			resp, err := checkRaw(t.Context(), sc.Conn, raw)
			wantGRPCDeny(t, resp, err, 400, "bad_request")
		}
	})
	if got := testutil.MetricValue(t, sc.Registry, "gatehouse_checks_total", map[string]string{"outcome": "error"}); got != 0 {
		t.Errorf("gatehouse_checks_total{outcome=error} = %v, want 0", got)
	}
}

// TestClientStringsNotUTF8: a string that is not UTF-8 anywhere a client
// puts one (path, query, header name and value, host, method, body,
// context extension) is a 400 deny over gRPC, where the protobuf decoder
// refuses it (it used to be INTERNAL), and over the HTTP service, where Go
// accepts the bytes (or refuses the request itself with a 400).
func TestClientStringsNotUTF8(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, evaluated418, testutil.Options{})
	httpAddr := sc.Server.HTTPAddr().String()
	places := map[string]struct {
		place func(r *testutil.Request, s string)
		// http is the HTTP service's answer: 400 bad_request, a 400 from
		// Go itself (goRefuses), or the policy's (a body that is not
		// UTF-8 goes to the policy as raw_body, as pack_as_bytes sends it).
		goRefuses, evaluated bool
	}{
		"path":         {place: func(r *testutil.Request, s string) { r.Path = "/a/" + s }},
		"query":        {place: func(r *testutil.Request, s string) { r.Path = "/a?x=" + s }},
		"query name":   {place: func(r *testutil.Request, s string) { r.Path = "/a?" + s + "=1" }},
		"header value": {place: func(r *testutil.Request, s string) { r.Headers = map[string]string{"x-v": s} }},
		"header name":  {place: func(r *testutil.Request, s string) { r.Headers = map[string]string{"x-" + s: "v"} }, goRefuses: true},
		"host":         {place: func(r *testutil.Request, s string) { r.Host = "h" + s }, goRefuses: true},
		"method":       {place: func(r *testutil.Request, s string) { r.Method = "P" + s }, goRefuses: true},
		"context":      {place: func(r *testutil.Request, s string) { r.ContextExtensions = map[string]string{"project": s} }},
		"JSON body": {place: func(r *testutil.Request, s string) {
			r.Method, r.Headers, r.Body = "POST", map[string]string{"content-type": "application/json"}, `{"a":"`+s+`"}`
		}},
		"text body": {place: func(r *testutil.Request, s string) {
			r.Method, r.Headers, r.Body = "POST", map[string]string{"content-type": "text/plain"}, s
		}, evaluated: true},
	}
	for pname, pl := range places {
		for bname, bad := range notUTF8 {
			t.Run(pname+"/"+bname+"/grpc", func(t *testing.T) {
				t.Parallel()
				var r testutil.Request
				pl.place(&r, marker)
				raw, err := proto.Marshal(testutil.CheckRequest(r))
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Count(raw, []byte(marker)) == 0 {
					t.Fatal("marker not encoded")
				}
				raw = bytes.ReplaceAll(raw, []byte(marker), []byte(bad))
				resp, err := checkRaw(t.Context(), sc.Conn, raw)
				wantGRPCDeny(t, resp, err, 400, "bad_request")
			})
			t.Run(pname+"/"+bname+"/http", func(t *testing.T) {
				t.Parallel()
				var r testutil.Request
				pl.place(&r, bad)
				resp, body := rawHTTP(t, httpAddr, rawRequest(r))
				switch {
				case pl.goRefuses:
					if resp.StatusCode != 400 {
						t.Fatalf("HTTP %d %q, want Go's 400", resp.StatusCode, body)
					}
				case pl.evaluated:
					wantHTTPDeny(t, resp, body, 418, "")
				default:
					wantHTTPDeny(t, resp, body, 400, "bad_request")
				}
			})
		}
	}
}

// TestHTTPServiceRequestForms: every request-target form and method
// reaches a decision on the HTTP service port (raw TCP): OPTIONS * used to
// be answered 200 by Go's global OPTIONS handler, an allow without a
// decision; absolute URIs are seen with the path Envoy's :path would carry.
func TestHTTPServiceRequestForms(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, echoInput, testutil.Options{})
	addr := sc.Server.HTTPAddr().String()
	tests := map[string]struct {
		line       string // request line
		parsedPath []any
		method     string
		authority  string
	}{
		"OPTIONS *":               {"OPTIONS * HTTP/1.1", []any{"*"}, "OPTIONS", "api.example.com"},
		"CONNECT host:port":       {"CONNECT upstream.example.com:443 HTTP/1.1", []any{""}, "CONNECT", "upstream.example.com:443"},
		"absolute URI":            {"GET http://abs.example.com/t/acme/x?q=1 HTTP/1.1", []any{"t", "acme", "x"}, "GET", "abs.example.com"},
		"absolute URI, no path":   {"GET https://abs.example.com HTTP/1.1", []any{""}, "GET", "abs.example.com"},
		"absolute URI, query":     {"GET http://abs.example.com?q=1 HTTP/1.1", []any{""}, "GET", "abs.example.com"},
		"OPTIONS with a path":     {"OPTIONS /t/acme HTTP/1.1", []any{"t", "acme"}, "OPTIONS", "api.example.com"},
		"extension method":        {"PROPFIND /dav/x HTTP/1.1", []any{"dav", "x"}, "PROPFIND", "api.example.com"},
		"TRACE":                   {"TRACE /t HTTP/1.1", []any{"t"}, "TRACE", "api.example.com"},
		"HEAD":                    {"HEAD /t HTTP/1.1", nil, "HEAD", "api.example.com"},
		"double slash":            {"GET //evil.example.com/x HTTP/1.1", []any{"evil.example.com", "x"}, "GET", "api.example.com"},
		"dot segments, unchanged": {"GET /a/../b HTTP/1.1", []any{"a", "..", "b"}, "GET", "api.example.com"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			resp, body := rawHTTP(t, addr, tc.line+"\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
			if resp.StatusCode != 418 || resp.Header.Get(envoy.HeaderDecisionID) == "" {
				t.Fatalf("HTTP %d %v %q, want the policy's 418 with a decision id", resp.StatusCode, resp.Header, body)
			}
			if tc.method == "HEAD" {
				return // no body
			}
			got := echoed(t, body)
			g, _ := json.Marshal(got["parsed_path"])
			w, _ := json.Marshal(tc.parsedPath)
			if string(g) != string(w) || got["method"] != tc.method || got["authority"] != tc.authority {
				t.Errorf("policy saw parsed_path %s method %v authority %v; want %s %s %s", g, got["method"], got["authority"], w, tc.method, tc.authority)
			}
		})
	}
	t.Run("a target decoding to non-UTF-8 is a 400 deny", func(t *testing.T) {
		t.Parallel()
		resp, body := rawHTTP(t, addr, "GET /a%ff HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
		wantHTTPDeny(t, resp, body, 400, "bad_request")
	})
	t.Run("a target Go cannot parse is Go's 400", func(t *testing.T) {
		t.Parallel()
		for _, target := range []string{"/a%zz", "a/b", "%zz"} {
			resp, body := rawHTTP(t, addr, "GET "+target+" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
			if resp.StatusCode != 400 {
				t.Errorf("%s: HTTP %d %q, want 400", target, resp.StatusCode, body)
			}
		}
	})
}

// TestHTTPServiceBodyReadErrors: a body that ends early or is not valid
// chunked encoding is a 400 deny, not an evaluation of what was read.
func TestHTTPServiceBodyReadErrors(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, evaluated418, testutil.Options{})
	addr := sc.Server.HTTPAddr().String()
	t.Run("bad chunk", func(t *testing.T) {
		t.Parallel()
		resp, body := rawHTTP(t, addr, "POST /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
		wantHTTPDeny(t, resp, body, 400, "bad_request")
	})
	t.Run("body shorter than its length", func(t *testing.T) {
		t.Parallel()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nshort")
		_ = conn.(*net.TCPConn).CloseWrite()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		wantHTTPDeny(t, resp, string(b), 400, "bad_request")
	})
}
