package envoy_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// startPolicy serves one policy module as policy.rego.
func startPolicy(tb testing.TB, rego string, opts testutil.Options) *testutil.Sidecar {
	tb.Helper()
	opts.Policies = map[string]string{"policy.rego": rego}
	return testutil.StartSidecar(tb, opts)
}

// wantGRPCCode fails unless err is a gRPC status error with c (and so no
// CheckResponse: Envoy applies its failure mode).
func wantGRPCCode(tb testing.TB, resp *authv3.CheckResponse, err error, c codes.Code) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("Check answered %v, want a %v error", resp, c)
	}
	if got := status.Code(err); got != c {
		tb.Fatalf("Check error %v, want code %v", err, c)
	}
}

// TestCheckNotReady: before any policy compiles, Check cannot decide.
func TestCheckNotReady(t *testing.T) {
	t.Parallel()
	sc := testutil.StartSidecar(t, testutil.Options{NoPolicy: true})
	resp, err := sc.Check(t.Context(), testutil.Request{Path: "/public"})
	wantGRPCCode(t, resp, err, codes.Unavailable)
	h := sc.CheckHTTP(t, t.Context(), testutil.Request{Path: "/public"})
	if h.Status != http.StatusServiceUnavailable {
		t.Errorf("HTTP status %d, want 503", h.Status)
	}
	if got := testutil.MetricValue(t, sc.Registry, "gatehouse_checks_total", map[string]string{"outcome": "error"}); got != 1 {
		t.Errorf("gatehouse_checks_total{outcome=error} = %v per transport, want 1", got)
	}
}

// TestCheckCannotDecide: a decision of the wrong shape or an evaluation
// error is INTERNAL over gRPC and 500 over HTTP, never an allow.
func TestCheckCannotDecide(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"string":                  `allow := "yes"`,
		"number":                  `allow := 1`,
		"set":                     `allow := {"allowed"}`,
		"array":                   `allow := [true]`,
		"object without allowed":  `allow := {"headers": {"x": "y"}}`,
		"allowed is a string":     `allow := {"allowed": "yes"}`,
		"http_status 700":         `allow := {"allowed": false, "http_status": 700}`,
		"http_status 199":         `allow := {"allowed": false, "http_status": 199}`,
		"http_status a string":    `allow := {"allowed": false, "http_status": "401"}`,
		"http_status fractional":  `allow := {"allowed": false, "http_status": 401.5}`,
		"headers a number":        `allow := {"allowed": true, "headers": 5}`,
		"header value a number":   `allow := {"allowed": true, "headers": {"x": 5}}`,
		"body a number":           `allow := {"allowed": false, "body": 5}`,
		"dynamic_metadata array":  `allow := {"allowed": true, "dynamic_metadata": [1]}`,
		"query_parameters_to_set": `allow := {"allowed": true, "query_parameters_to_set": ["a"]}`,
		"headers_to_remove mixed": `allow := {"allowed": true, "request_headers_to_remove": ["a", 1]}`,
		"conflicting complete rule": `
allow if input.parsed_path[0] == "x"
allow := false if count(input.parsed_path) > 0`,
		"conflicting object keys": `
allow := {"allowed": true, "headers": h}
h[k] := v if { some k, v in {"x": "1"} }
h[k] := v if { some k, v in {"x": "2"} }`,
		"builtin error with strict division": `allow := {"allowed": 1 / count(input.parsed_path) > 0, "http_status": to_number("x")}`,
	}
	for name, rule := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sc := startPolicy(t, "package envoy.authz\n"+rule+"\n", testutil.Options{})
			req := testutil.Request{Path: "/x/y"}
			resp, err := sc.Check(t.Context(), req)
			if name == "builtin error with strict division" {
				// Built-in errors are not strict: to_number("x") is
				// undefined, so the whole rule is, and that is a plain 403.
				if err != nil || resp.GetDeniedResponse().GetStatus().GetCode() != 403 {
					t.Fatalf("Check = %v, %v; want a plain 403", resp, err)
				}
				return
			}
			wantGRPCCode(t, resp, err, codes.Internal)
			h := sc.CheckHTTP(t, t.Context(), req)
			if h.Status != http.StatusInternalServerError {
				t.Errorf("HTTP status %d, want 500 (body %q)", h.Status, h.Body)
			}
		})
	}
}

// TestCheckMalformedRequest: a request Envoy never sends (no HTTP
// attributes) or one whose path or minimum revision does not parse is a
// 400 deny over gRPC as over HTTP, not an evaluation and not an error
// status (SPEC §2; it used to be INVALID_ARGUMENT). The whole class is in
// TestClientInputIsNeverCannotDecide.
func TestCheckMalformedRequest(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, "package envoy.authz\nallow := true\n", testutil.Options{})
	withHTTP := func(mut func(*authv3.AttributeContext_HttpRequest)) *authv3.CheckRequest {
		r := testutil.CheckRequest(testutil.Request{Path: "/a"})
		mut(r.Attributes.Request.Http)
		return r
	}
	tests := map[string]*authv3.CheckRequest{
		"no attributes":             {},
		"no request":                {Attributes: &authv3.AttributeContext{}},
		"no http":                   {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}},
		"min revision not a number": withHTTP(func(h *authv3.AttributeContext_HttpRequest) { h.Headers["x-gatehouse-min-revision"] = "latest" }),
		"min revision negative":     withHTTP(func(h *authv3.AttributeContext_HttpRequest) { h.Headers["x-gatehouse-min-revision"] = "-1" }),
		"min revision extension": func() *authv3.CheckRequest {
			r := withHTTP(func(*authv3.AttributeContext_HttpRequest) {})
			r.Attributes.ContextExtensions = map[string]string{"min_revision": "1e3"}
			return r
		}(),
		"bad percent encoding": withHTTP(func(h *authv3.AttributeContext_HttpRequest) { h.Path = "/a%zz" }),
	}
	for name, req := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			resp, err := sc.Client.Check(t.Context(), req)
			wantGRPCDeny(t, resp, err, http.StatusBadRequest, envoy.ReasonBadRequest)
		})
	}
	t.Run("HTTP bad min revision is a 400 deny", func(t *testing.T) {
		t.Parallel()
		h := sc.CheckHTTP(t, t.Context(), testutil.Request{Path: "/a", Headers: map[string]string{"x-gatehouse-min-revision": "latest"}})
		if h.Status != http.StatusBadRequest || !strings.Contains(h.Body, "bad_request") {
			t.Errorf("HTTP %d %q, want 400 bad_request", h.Status, h.Body)
		}
	})
}

// TestCheckMinRevision: a request asking for data newer than the sidecar
// has waits (bounded) and then is denied 429 stale with retry-after: 1 (the
// revision is client input: it used to be UNAVAILABLE / 503, which
// failure_mode_allow turns into an allow); data arriving in time lets it
// decide on that revision.
func TestCheckMinRevision(t *testing.T) {
	t.Parallel()
	const policy = "package envoy.authz\nallow := true\n"
	t.Run("never reached", func(t *testing.T) {
		t.Parallel()
		const wait = 100 * time.Millisecond
		sc := startPolicy(t, policy, testutil.Options{Engine: authz.Config{MinRevisionWait: wait}})
		for name, req := range map[string]testutil.Request{
			"header":    {Headers: map[string]string{"x-gatehouse-min-revision": "5"}},
			"extension": {ContextExtensions: map[string]string{"min_revision": "5"}},
		} {
			start := time.Now()
			resp, err := sc.Check(t.Context(), req)
			wantGRPCDeny(t, resp, err, http.StatusTooManyRequests, envoy.ReasonStale)
			if el := time.Since(start); el < wait || el > wait+5*time.Second {
				t.Errorf("%s: answered after %v, want about %v", name, el, wait)
			}
			if h := sc.CheckHTTP(t, t.Context(), req); h.Status != http.StatusTooManyRequests || h.Header.Get("retry-after") != "1" ||
				!strings.Contains(h.Body, `"reason":"stale"`) {
				t.Errorf("%s: HTTP %d %v %q, want 429 stale with retry-after: 1", name, h.Status, h.Header, h.Body)
			}
		}
		// Revision 0 (what EmptyTenancy has) is always reached.
		resp, err := sc.Check(t.Context(), testutil.Request{Headers: map[string]string{"x-gatehouse-min-revision": "0"}})
		if err != nil || resp.GetOkResponse() == nil {
			t.Errorf("min revision 0: %v, %v; want allowed", resp, err)
		}
	})
	t.Run("reached while waiting", func(t *testing.T) {
		t.Parallel()
		ten := testutil.NewTenancy(3, nil)
		sc := startPolicy(t, policy, testutil.Options{Tenancy: ten, Engine: authz.Config{MinRevisionWait: time.Minute}})
		type result struct {
			resp *authv3.CheckResponse
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, err := sc.Check(t.Context(), testutil.Request{Headers: map[string]string{"x-gatehouse-min-revision": "5"}})
			done <- result{resp, err}
		}()
		select {
		case r := <-done:
			t.Fatalf("answered before revision 5 existed: %v, %v", r.resp, r.err)
		case <-time.After(50 * time.Millisecond):
		}
		ten.Set(authz.TenancyState{Present: true, Revision: 5, SyncedAt: time.Now()})
		r := <-done
		if r.err != nil || r.resp.GetOkResponse() == nil {
			t.Fatalf("Check = %v, %v; want allowed", r.resp, r.err)
		}
		if got := r.resp.GetDynamicMetadata().GetFields()["tenancy_revision"].GetNumberValue(); got != 5 {
			t.Errorf("tenancy_revision %v, want 5", got)
		}
	})
}

// TestCheckStaleData: data older than max_staleness cannot decide.
func TestCheckStaleData(t *testing.T) {
	t.Parallel()
	ten := testutil.NewTenancy(7, nil)
	ten.Set(authz.TenancyState{Present: true, Revision: 7, SyncedAt: time.Now().Add(-time.Hour)})
	sc := startPolicy(t, "package envoy.authz\nallow := true\n", testutil.Options{Tenancy: ten, Engine: authz.Config{MaxStaleness: time.Minute}})
	resp, err := sc.Check(t.Context(), testutil.Request{})
	wantGRPCCode(t, resp, err, codes.Unavailable)
	ten.Set(authz.TenancyState{Present: true, Revision: 8, SyncedAt: time.Now()})
	if resp, err := sc.Check(t.Context(), testutil.Request{}); err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("fresh data: %v, %v; want allowed", resp, err)
	}
}

// TestCheckPlainDenies: false and undefined are a plain 403 with an empty
// body over both transports.
func TestCheckPlainDenies(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"false":     "package envoy.authz\ndefault allow := false\n",
		"undefined": "package envoy.authz\nallow if input.parsed_path[0] == \"never\"\n",
	}
	for name, rego := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sc := startPolicy(t, rego, testutil.Options{})
			req := testutil.Request{Path: "/a", Headers: map[string]string{"x-gatehouse-user": "mallory"}}
			resp, err := sc.Check(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			d := resp.GetDeniedResponse()
			if code.Code(resp.GetStatus().GetCode()) != code.Code_PERMISSION_DENIED || d.GetStatus().GetCode() != 403 || d.GetBody() != "" || len(d.GetHeaders()) != 0 {
				t.Errorf("CheckResponse %v, want a plain 403", resp)
			}
			h := sc.CheckHTTP(t, t.Context(), req)
			if h.Status != http.StatusForbidden || h.Body != "" || h.Header.Get("x-envoy-auth-headers-to-remove") != "" {
				t.Errorf("HTTP %d %q %v, want a plain 403", h.Status, h.Body, h.Header)
			}
		})
	}
}

// TestCheckBooleanAllowStripsSpoofedHeaders: even a bare `true` removes the
// x-gatehouse-* headers a client sent.
func TestCheckBooleanAllowStripsSpoofedHeaders(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, "package envoy.authz\nallow := true\n", testutil.Options{})
	req := testutil.Request{Headers: map[string]string{"X-Gatehouse-User": "mallory", "x-gatehouse-roles": "admin", "x-user": "kept"}}
	resp, err := sc.Check(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"x-gatehouse-roles", "x-gatehouse-user"}
	if got := resp.GetOkResponse().GetHeadersToRemove(); !slices.Equal(got, want) {
		t.Errorf("headers_to_remove %q, want %q", got, want)
	}
	h := sc.CheckHTTP(t, t.Context(), req)
	if got := h.Header.Get(envoy.HeaderHeadersToRemove); got != strings.Join(want, ",") {
		t.Errorf("HTTP %s = %q, want %q", envoy.HeaderHeadersToRemove, got, strings.Join(want, ","))
	}
}

// echoInput answers a deny whose body is a part of the input.
const echoInput = `package envoy.authz
allow := {"allowed": false, "http_status": 418, "body": json.marshal({
	"parsed_path": input.parsed_path,
	"parsed_query": input.parsed_query,
	"parsed_body": input.parsed_body,
	"truncated_body": input.truncated_body,
	"context": object.get(input.attributes, "contextExtensions", {}),
	"method": input.attributes.request.http.method,
	"authority": input.attributes.request.http.headers[":authority"],
	"version": input.version,
	"tenancy_revision": input.tenancy_revision,
})}
`

func echoed(tb testing.TB, body string) map[string]any {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		tb.Fatalf("echo body %q: %v", body, err)
	}
	return m
}

// TestHTTPServiceInput: the HTTP service builds the input the gRPC API
// would: prefix stripped, context extensions from x-gatehouse-context-*
// headers, bodies over the limit passed on as truncated.
func TestHTTPServiceInput(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, echoInput, testutil.Options{Server: envoy.Config{HTTPPathPrefix: "/authz", MaxBodyBytes: 16}})
	tests := map[string]struct {
		req  testutil.Request
		want map[string]any
	}{
		"prefix stripped and query parsed": {
			req: testutil.Request{Method: "DELETE", Path: "/authz/t/acme/items%2F1?x=1&x=2", Host: "acme.example.com",
				ContextExtensions: map[string]string{"project": "p1", "roles": "reader,writer"}},
			want: map[string]any{
				"parsed_path": []any{"t", "acme", "items", "1"}, "parsed_query": map[string]any{"x": []any{"1", "2"}},
				"context": map[string]any{"project": "p1", "roles": "reader,writer"}, "method": "DELETE",
				"authority": "acme.example.com", "parsed_body": nil, "truncated_body": false,
			},
		},
		"body within the limit": {
			req:  testutil.Request{Method: "POST", Path: "/authz/x", Headers: map[string]string{"content-type": "application/json"}, Body: `{"a":[1,2]}`},
			want: map[string]any{"parsed_body": map[string]any{"a": []any{1.0, 2.0}}, "truncated_body": false},
		},
		"body over the limit": {
			req:  testutil.Request{Method: "POST", Path: "/authz/x", Headers: map[string]string{"content-type": "application/json"}, Body: `{"a":"0123456789abcdef"}`},
			want: map[string]any{"parsed_body": nil, "truncated_body": true},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := sc.CheckHTTP(t, t.Context(), tc.req)
			if h.Status != 418 {
				t.Fatalf("HTTP %d %q, want 418", h.Status, h.Body)
			}
			got := echoed(t, h.Body)
			for k, want := range tc.want {
				g, _ := json.Marshal(got[k])
				w, _ := json.Marshal(want)
				if string(g) != string(w) {
					t.Errorf("input.%s = %s, want %s", k, g, w)
				}
			}
			if v, _ := json.Marshal(got["version"]); string(v) != `{"encoding":"protojson","ext_authz":"v3"}` {
				t.Errorf("input.version = %s", v)
			}
		})
	}
}

// TestCheckMalformedBodyIsNotEvaluated: a JSON body that does not parse is
// a 400 deny before the policy runs (this policy would be INTERNAL).
func TestCheckMalformedBodyIsNotEvaluated(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, "package envoy.authz\nallow := {\"allowed\": \"not a boolean\"}\n", testutil.Options{})
	req := testutil.Request{Method: "POST", Headers: map[string]string{"content-type": "application/json"}, Body: `{"a": [1, 2`}
	resp, err := sc.Check(t.Context(), req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	d := resp.GetDeniedResponse()
	if d.GetStatus().GetCode() != 400 || !strings.Contains(d.GetBody(), `"reason":"bad_request"`) {
		t.Fatalf("CheckResponse %v, want a 400 bad_request deny", resp)
	}
	if h := sc.CheckHTTP(t, t.Context(), req); h.Status != http.StatusBadRequest || h.Body != d.GetBody() {
		t.Errorf("HTTP %d %q, want the gRPC deny", h.Status, h.Body)
	}
}

// TestCheckInputForms: the other shapes Envoy may send (raw_body with
// pack_as_bytes, header_map with encode_raw_headers, multipart bodies, a
// source principal) reach the policy as opa-envoy-plugin presents them.
func TestCheckInputForms(t *testing.T) {
	t.Parallel()
	const policy = `package envoy.authz
allow := {"allowed": false, "http_status": 418, "body": json.marshal({
	"parsed_body": input.parsed_body,
	"accept": object.get(input.attributes.request.http.headers, "accept", null),
	"principal": object.get(input, "source_principal", null),
})}
`
	sc := startPolicy(t, policy, testutil.Options{})
	multipart := "--XYZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nsam\r\n" +
		"--XYZ\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"n\":1}\r\n--XYZ--\r\n"
	tests := map[string]struct {
		mutate func(*authv3.CheckRequest)
		want   string
	}{
		"raw_body": {func(r *authv3.CheckRequest) {
			r.Attributes.Request.Http.Headers["content-type"] = "application/json"
			r.Attributes.Request.Http.RawBody = []byte(`{"k":"v"}`)
		}, `{"accept":null,"parsed_body":{"k":"v"},"principal":null}`},
		"header_map with a repeated header": {func(r *authv3.CheckRequest) {
			h := r.Attributes.Request.Http
			var hm []*corev3.HeaderValue
			for k, v := range h.Headers {
				hm = append(hm, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
			}
			hm = append(hm, &corev3.HeaderValue{Key: "Accept", RawValue: []byte("text/html")}, &corev3.HeaderValue{Key: "accept", RawValue: []byte("application/json")})
			h.Headers = nil
			h.HeaderMap = &corev3.HeaderMap{Headers: hm}
		}, `{"accept":"text/html,application/json","parsed_body":null,"principal":null}`},
		"multipart": {func(r *authv3.CheckRequest) {
			r.Attributes.Request.Http.Headers["content-type"] = "multipart/form-data; boundary=XYZ"
			r.Attributes.Request.Http.Body = multipart
		}, `{"accept":null,"parsed_body":{"meta":[{"n":1}],"name":["sam"]},"principal":null}`},
		"source principal": {func(r *authv3.CheckRequest) {
			r.Attributes.Source.Principal = "spiffe://cluster.local/ns/web/sa/frontend"
		}, `{"accept":null,"parsed_body":null,"principal":"spiffe://cluster.local/ns/web/sa/frontend"}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			req := testutil.CheckRequest(testutil.Request{Method: "POST"})
			tc.mutate(req)
			resp, err := sc.Client.Check(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetDeniedResponse().GetBody(); got != tc.want {
				t.Errorf("policy saw %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestHTTPServiceStripsSpoofedContextHeaders: in HTTP mode route settings
// arrive as x-gatehouse-context-* headers; a client's own copies of them are
// Gatehouse headers too and must not reach the upstream.
func TestHTTPServiceStripsSpoofedContextHeaders(t *testing.T) {
	t.Parallel()
	sc := startPolicy(t, allowAll, testutil.Options{})
	h := sc.CheckHTTP(t, t.Context(), testutil.Request{ContextExtensions: map[string]string{"project": "evil"}})
	if h.Status != http.StatusOK {
		t.Fatalf("HTTP %d", h.Status)
	}
	if got := h.Header.Get(envoy.HeaderHeadersToRemove); got != "x-gatehouse-context-project" {
		t.Errorf("%s = %q, want the context header removed upstream", envoy.HeaderHeadersToRemove, got)
	}
}
