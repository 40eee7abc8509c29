package envoy

import (
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// HeaderHeadersToRemove tells Envoy (HTTP service mode) which request
// headers to remove before the request goes upstream.
const HeaderHeadersToRemove = "x-envoy-auth-headers-to-remove"

// ServeHTTP answers Envoy's ext_authz HTTP service: the forwarded request
// becomes the same CheckRequest the gRPC API would carry; 200 allows, any
// other status denies, a 5xx means "cannot decide".
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req := s.CheckRequestFromHTTP(r)
	d, headers, err := s.decide(r.Context(), req)
	if errors.Is(err, ErrMalformedRequest) {
		d, err = badRequest(s.engine, err), nil
	}
	if err != nil {
		s.metrics.observe(transportHTTP, outcomeError, time.Since(start).Seconds())
		code := http.StatusInternalServerError
		var de *authz.DecideError
		if errors.As(err, &de) && de.Code == authz.CodeUnavailable {
			code = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), code)
		return
	}
	h := w.Header()
	h.Set(HeaderDecisionID, d.ID)
	h.Set(HeaderPolicyRevision, d.PolicyRevision)
	h.Set(HeaderTenancyRevision, strconv.FormatUint(d.TenancyRevision, 10))
	if d.Allowed {
		for _, hv := range d.Headers {
			h.Add(hv.Key, hv.Value)
		}
		for _, hv := range d.ResponseHeadersToAdd {
			h.Add(hv.Key, hv.Value)
		}
		if rm := headersToRemove(d, withContextHeaders(headers, r.Header)); len(rm) > 0 {
			h.Set(HeaderHeadersToRemove, strings.Join(rm, ","))
		}
		w.WriteHeader(http.StatusOK)
	} else {
		for _, hv := range d.Headers {
			h.Add(hv.Key, hv.Value)
		}
		w.WriteHeader(d.Status())
		_, _ = io.WriteString(w, d.Body)
	}
	s.record(transportHTTP, d, start)
}

// withContextHeaders adds to headers the x-gatehouse-context-* names of the
// forwarded request. CheckRequestFromHTTP moves them into the context
// extensions, but they are Gatehouse headers all the same: a client's own
// copies must not reach the upstream.
func withContextHeaders(headers map[string]string, h http.Header) map[string]string {
	var out map[string]string
	for k := range h {
		lk := strings.ToLower(k)
		if !strings.HasPrefix(lk, HeaderContextPrefix) {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(headers)+1)
			maps.Copy(out, headers)
		}
		out[lk] = ""
	}
	if out == nil {
		return headers
	}
	return out
}

// CheckRequestFromHTTP builds the CheckRequest Envoy's gRPC client would
// have sent for the request forwarded by its HTTP client: method, path (with
// query, minus HTTPPathPrefix), host, lowercase headers with pseudo-headers,
// x-gatehouse-context-* headers as context extensions, and the body.
func (s *Server) CheckRequestFromHTTP(r *http.Request) *authv3.CheckRequest {
	path := r.RequestURI
	if path == "" || path == "*" {
		path = r.URL.RequestURI()
	}
	if p := s.cfg.HTTPPathPrefix; p != "" {
		if rest, ok := strings.CutPrefix(path, p); ok {
			path = rest
			if !strings.HasPrefix(path, "/") {
				path = "/" + path
			}
		}
	}
	headers := make(map[string]string, len(r.Header)+3)
	ext := map[string]string{}
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		if name, ok := strings.CutPrefix(lk, HeaderContextPrefix); ok && name != "" {
			ext[name] = strings.Join(vs, ",")
			continue
		}
		headers[lk] = strings.Join(vs, ",")
	}
	headers[":authority"] = r.Host
	headers[":method"] = r.Method
	headers[":path"] = path
	body := ""
	if r.Body != nil && r.ContentLength != 0 {
		b, _ := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
		if int64(len(b)) > s.cfg.MaxBodyBytes {
			b = b[:s.cfg.MaxBodyBytes]
			headers[PartialBodyHeader] = "true"
		}
		body = string(b)
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if xf := headers["x-forwarded-proto"]; xf != "" {
		scheme = xf
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: peer(r.RemoteAddr),
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:       headers["x-request-id"],
				Method:   r.Method,
				Headers:  headers,
				Path:     path,
				Host:     r.Host,
				Scheme:   scheme,
				Protocol: r.Proto,
				Body:     body,
				Size:     r.ContentLength,
			},
		},
		ContextExtensions: ext,
	}}
}

func peer(remote string) *authv3.AttributeContext_Peer {
	host, port, err := net.SplitHostPort(remote)
	if err != nil {
		return nil
	}
	p, _ := strconv.ParseUint(port, 10, 32)
	return &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}},
	}}}
}
