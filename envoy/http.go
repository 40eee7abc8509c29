package envoy

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	var (
		req  *authv3.CheckRequest
		prep *Prepared
	)
	d, headers, err := s.decideHTTP(w, r, &req, &prep)
	d, err = s.observe(r.Context(), transportHTTP, req, prep, d, err, start)
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

// bodyReadTimeout bounds reading a body in HTTP service mode (Envoy has
// buffered it before it calls): a client trickling one cannot hold its
// admitted bytes for long.
const bodyReadTimeout = 5 * time.Second

// decideHTTP is decide for the HTTP service: the size of the request's
// head is checked and admitted before its body is read.
func (s *Server) decideHTTP(w http.ResponseWriter, r *http.Request, out **authv3.CheckRequest, prepOut **Prepared) (*authz.Decision, map[string]string, error) {
	ctx := r.Context()
	head := headBytes(r)
	if head > s.cfg.MaxRequestBytes {
		return tooLarge(s.engine, head, s.cfg.MaxRequestBytes), nil, nil
	}
	weight := head
	if r.ContentLength != 0 {
		weight += s.bodyLimit(head)
	}
	deadline := waitUntil(ctx, time.Now(), queueWait)
	taken := s.admit.acquire(ctx, weight, deadline)
	if taken == 0 {
		return overloaded(s.engine), nil, nil
	}
	defer s.admit.release(taken)
	if r.ContentLength != 0 {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	}
	req, err := s.CheckRequestFromHTTP(r)
	if err != nil {
		return badRequest(s.engine, err), nil, nil
	}
	*out = req
	return decide(ctx, s.engine, req, nil, s.pool, deadline, &s.memo, prepOut)
}

// headBytes is the size of r without its body: method, request target,
// host and headers.
func headBytes(r *http.Request) int64 {
	n := len(r.Method) + len(r.RequestURI) + len(r.Host)
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return int64(n)
}

// bodyLimit is how much of a body is read: MaxBodyBytes, and no more than
// leaves the request within MaxRequestBytes.
func (s *Server) bodyLimit(head int64) int64 {
	return max(0, min(s.cfg.MaxBodyBytes, s.cfg.MaxRequestBytes-head))
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
// x-gatehouse-context-* headers as context extensions, and the body (up to
// MaxBodyBytes and what MaxRequestBytes leaves; a longer body is passed on
// as partial; a body that is not UTF-8 as raw_body, as Envoy's
// pack_as_bytes sends it). An error (the body cannot be read) wraps
// ErrMalformedRequest.
func (s *Server) CheckRequestFromHTTP(r *http.Request) (*authv3.CheckRequest, error) {
	path := requestPath(r)
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
	body, raw := "", []byte(nil)
	if r.Body != nil && r.ContentLength != 0 {
		limit := s.bodyLimit(headBytes(r))
		b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
		if err != nil {
			return nil, fmt.Errorf("%w: read body: %v", ErrMalformedRequest, err)
		}
		if int64(len(b)) > limit {
			b = cutPartialRune(b[:limit])
			headers[PartialBodyHeader] = "true"
		}
		if utf8.Valid(b) {
			body = string(b)
		} else {
			raw = b
		}
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
				RawBody:  raw,
				Size:     r.ContentLength,
			},
		},
		ContextExtensions: ext,
	}}, nil
}

// requestPath is the path with query of r's request target, as Envoy's
// :path carries it: the origin form as sent; an absolute URI without its
// scheme and authority; "*" (OPTIONS *) as it is; "" for CONNECT's
// host:port.
func requestPath(r *http.Request) string {
	uri := r.RequestURI
	switch {
	case uri == "": // a request built by hand, not read from a connection
		return r.URL.RequestURI()
	case uri == "*" || strings.HasPrefix(uri, "/"):
		return uri
	case r.URL.Scheme != "":
		_, rest, _ := strings.Cut(uri, "://")
		i := strings.IndexAny(rest, "/?")
		switch {
		case i < 0:
			return "/"
		case rest[i] == '?':
			return "/" + rest[i:]
		}
		return rest[i:]
	}
	return "" // CONNECT host:port
}

// cutPartialRune drops an incomplete UTF-8 sequence that a cut left at the
// end of b.
func cutPartialRune(b []byte) []byte {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return b[:i]
			}
			break
		}
	}
	return b
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
