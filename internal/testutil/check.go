package testutil

import (
	"context"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Request describes one downstream HTTP request, as Envoy sees it.
type Request struct {
	// Method defaults to GET.
	Method string
	// Path is the path with query; default "/".
	Path string
	// Host defaults to "api.example.com".
	Host string
	// Headers by lowercase name (pseudo-headers are added).
	Headers map[string]string
	// Body is the (possibly partial) request body Envoy buffered.
	Body string
	// ContextExtensions are the route's per-filter context_extensions.
	ContextExtensions map[string]string
	// SourceAddress is the downstream address; default "10.0.0.7".
	SourceAddress string
	// SourcePrincipal is the downstream certificate's principal, if any.
	SourcePrincipal string
}

func (r Request) withDefaults() Request {
	if r.Method == "" {
		r.Method = http.MethodGet
	}
	if r.Path == "" {
		r.Path = "/"
	}
	if r.Host == "" {
		r.Host = "api.example.com"
	}
	if r.SourceAddress == "" {
		r.SourceAddress = "10.0.0.7"
	}
	return r
}

// CheckRequest builds the CheckRequest Envoy's ext_authz filter sends for r:
// lowercase headers plus the pseudo-headers :authority, :method and :path,
// source and destination peers, the request time, and the body.
func CheckRequest(r Request) *authv3.CheckRequest {
	r = r.withDefaults()
	headers := map[string]string{}
	for k, v := range r.Headers {
		headers[strings.ToLower(k)] = v
	}
	headers[":authority"] = r.Host
	headers[":method"] = r.Method
	headers[":path"] = r.Path
	if _, ok := headers["x-request-id"]; !ok {
		headers["x-request-id"] = "8b1a9953-c461-4296-8a1c-5f8e9b1f2c3d"
	}
	var size int64 = -1
	if cl, ok := headers["content-length"]; ok {
		size, _ = strconv.ParseInt(cl, 10, 64)
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      peer(r.SourceAddress, 51234, r.SourcePrincipal),
		Destination: peer("10.0.0.2", 8080, ""),
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:       headers["x-request-id"],
				Method:   r.Method,
				Headers:  headers,
				Path:     r.Path,
				Host:     r.Host,
				Scheme:   "http",
				Protocol: "HTTP/1.1",
				Size:     size,
				Body:     r.Body,
			},
		},
		ContextExtensions: maps.Clone(r.ContextExtensions),
	}}
}

func peer(addr string, port uint32, principal string) *authv3.AttributeContext_Peer {
	return &authv3.AttributeContext_Peer{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}},
		Principal: principal,
	}
}

// HTTPResponse is an answer of the HTTP service mode, body read.
type HTTPResponse struct {
	Status int
	Header http.Header
	Body   string
}

// DoHTTP sends r to the ext_authz HTTP service at base (http://host:port) as
// Envoy's http_service would forward it: same method, path with query, host,
// headers and body; the route's context extensions as
// x-gatehouse-context-<key> headers.
func DoHTTP(tb testing.TB, ctx context.Context, client *http.Client, base string, r Request) HTTPResponse {
	tb.Helper()
	r = r.withDefaults()
	var body io.Reader
	if r.Body != "" {
		body = strings.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, base+r.Path, body)
	if err != nil {
		tb.Fatalf("build HTTP request: %v", err)
	}
	req.Host = r.Host
	for k, v := range r.Headers {
		if strings.EqualFold(k, "content-length") {
			continue // the client sets it from the body
		}
		req.Header.Set(k, v)
	}
	for k, v := range r.ContextExtensions {
		req.Header.Set("x-gatehouse-context-"+k, v)
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatalf("HTTP check: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("read HTTP check answer: %v", err)
	}
	return HTTPResponse{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
}
