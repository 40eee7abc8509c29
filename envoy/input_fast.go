package envoy

import (
	"encoding/base64"
	"slices"
	"strconv"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// The fields every CheckRequest carries are rendered by hand (the generic
// reflection walk costs several times more); every other populated field
// still goes through messageValue, so the result is always exactly the
// generic rendering (a test asserts it on randomized requests).

var (
	termSource      = ast.InternedTerm("source")
	termDestination = ast.InternedTerm("destination")
	termRequest     = ast.InternedTerm("request")
	termContextExt  = ast.InternedTerm("contextExtensions")
	termAddress     = ast.InternedTerm("address")
	termSocketAddr  = ast.InternedTerm("socketAddress")
	termPortValue   = ast.InternedTerm("portValue")
	termPrincipal   = ast.InternedTerm("principal")
	termTime        = ast.InternedTerm("time")
	termHTTP        = ast.InternedTerm("http")
	termID          = ast.InternedTerm("id")
	termMethod      = ast.InternedTerm("method")
	termPath        = ast.InternedTerm("path")
	termHost        = ast.InternedTerm("host")
	termScheme      = ast.InternedTerm("scheme")
	termQuery       = ast.InternedTerm("query")
	termFragment    = ast.InternedTerm("fragment")
	termSize        = ast.InternedTerm("size")
	termProtocol    = ast.InternedTerm("protocol")
	termBody        = ast.InternedTerm("body")
	termRawBody     = ast.InternedTerm("rawBody")
	termRequestID   = commonTerms["x-request-id"]
	termPathHeader  = commonTerms[":path"]
	termAuthority   = commonTerms[":authority"]
)

// termArena hands out the input's terms from blocks allocated together:
// one allocation per block instead of one per term. A string every request
// carries (a common header name, a method, a scheme) gets its one shared
// term. The terms of an input document are never modified once built.
type termArena struct{ free []ast.Term }

// reserve makes room for n more terms in one block.
func (a *termArena) reserve(n int) {
	if len(a.free) < n {
		a.free = make([]ast.Term, max(n, 16))
	}
}

// term returns a term of v.
func (a *termArena) term(v ast.Value) *ast.Term {
	a.reserve(1)
	t := &a.free[0]
	a.free = a.free[1:]
	t.Value = v
	return t
}

// str returns a string term of s.
func (a *termArena) str(s string) *ast.Term {
	if t, ok := commonTerms[s]; ok {
		return t
	}
	return a.term(ast.String(s))
}

// commonTerms are the shared terms of strings most CheckRequests carry:
// header names Envoy and browsers send, methods, schemes, protocols.
var commonTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, s := range []string{
		":authority", ":method", ":path", ":scheme", "accept", "accept-encoding", "accept-language",
		"authorization", "cache-control", "connection", "content-length", "content-type", "cookie",
		"forwarded", "grpc-timeout", "host", "if-modified-since", "if-none-match", "origin", "pragma",
		"referer", "sec-fetch-dest", "sec-fetch-mode", "sec-fetch-site", "te", "traceparent", "tracestate",
		"user-agent", "x-b3-parentspanid", "x-b3-sampled", "x-b3-spanid", "x-b3-traceid",
		"x-envoy-attempt-count", "x-envoy-expected-rq-timeout-ms", "x-envoy-external-address",
		"x-envoy-internal", "x-envoy-original-path", "x-forwarded-client-cert", "x-forwarded-for",
		"x-forwarded-host", "x-forwarded-port", "x-forwarded-proto", "x-real-ip", "x-request-id",
		PartialBodyHeader,
		"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
		"http", "https", "HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3",
		"true", "false", "*/*", "application/json", "gzip", "gzip, deflate", "gzip, deflate, br", "no-cache",
		"", "api", "v1", "v2",
	} {
		m[s] = ast.StringTerm(s)
	}
	return m
}()

// rest renders the populated fields of m among fields (the ones its type's
// renderer leaves to the generic rendering) that need asks for,
// generically (a field that is needed at all is rendered whole): the usual
// request (none of them set) costs a few Has calls and no allocation.
// skip (0: none) is one more field the caller rendered for this message.
func rest(obj ast.Object, m protoreflect.Message, need *authz.Need, fields []protoreflect.FieldDescriptor, skip protoreflect.FieldNumber) {
	for _, fd := range fields {
		if fd.Number() != skip && m.Has(fd) && need.Child(fd.JSONName()) != nil {
			obj.Insert(ast.StringTerm(fd.JSONName()), ast.NewTerm(fieldValue(fd, m.Get(fd))))
		}
	}
}

// The fields each hand-written renderer leaves to rest, listed once from
// the message descriptors (fixed tables, never modified).
var (
	attributesRest = unhandledFields(&authv3.AttributeContext{}, func(n protoreflect.FieldNumber) bool {
		return n == 1 || n == 2 || n == 4 || n == 10 // source, destination, request, context_extensions
	})
	peerRest    = unhandledFields(&authv3.AttributeContext_Peer{}, func(n protoreflect.FieldNumber) bool { return n == 4 }) // principal; the address when simple
	requestRest = unhandledFields(&authv3.AttributeContext_Request{}, func(n protoreflect.FieldNumber) bool { return n == 1 || n == 2 })
	httpRest    = unhandledFields(&authv3.AttributeContext_HttpRequest{}, func(n protoreflect.FieldNumber) bool {
		return n >= 1 && n <= 12 // id..raw_body; header_map (13) and newer fields stay generic
	})
)

// unhandledFields lists the fields of m's type, in number order, not in
// handled.
func unhandledFields(m protoreflect.ProtoMessage, handled func(protoreflect.FieldNumber) bool) []protoreflect.FieldDescriptor {
	var out []protoreflect.FieldDescriptor
	fields := m.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		if fd := fields.Get(i); !handled(fd.Number()) {
			out = append(out, fd)
		}
	}
	slices.SortFunc(out, func(a, b protoreflect.FieldDescriptor) int { return int(a.Number()) - int(b.Number()) })
	return out
}

// attributesValue renders (what need asks for of) an AttributeContext;
// memo (nil: none) keeps the last peers rendered.
func attributesValue(a *authv3.AttributeContext, need *authz.Need, ar *termArena, memo *InputMemo) ast.Object {
	var items [4][2]*ast.Term
	n := 0
	if c := need.Child("source"); a.Source != nil && c != nil {
		items[n] = ast.Item(termSource, ar.term(memoPeerValue(a.Source, c, ar, memo.source())))
		n++
	}
	if c := need.Child("destination"); a.Destination != nil && c != nil {
		items[n] = ast.Item(termDestination, ar.term(memoPeerValue(a.Destination, c, ar, memo.destination())))
		n++
	}
	if c := need.Child("request"); a.Request != nil && c != nil {
		items[n] = ast.Item(termRequest, ar.term(requestValue(a.Request, c, ar)))
		n++
	}
	if c := need.Child("contextExtensions"); len(a.ContextExtensions) > 0 && c != nil {
		items[n] = ast.Item(termContextExt, ar.term(stringMapNeed(a.ContextExtensions, c, ar)))
		n++
	}
	obj := ast.NewObject(items[:n]...)
	rest(obj, a.ProtoReflect(), need, attributesRest, 0)
	return obj
}

// peerMemo is the rendering of a simple peer (a socket address with a port,
// and a principal; nothing else set) for one need. The destination is the
// sidecar's listener for every request, the source the same for every
// request of a downstream connection: the last rendering of each is kept
// and shared (input values are never modified once built).
type peerMemo struct {
	addr, principal string
	port            uint32
	need            *authz.Need
	value           ast.Object
}

// InputMemo keeps the input renderings of the last source and destination
// peers, shared by the inputs of the requests that carry the same ones (the
// destination is the sidecar's listener for every request, the source the
// same for every request of a downstream connection). Each Server keeps
// one; the zero value is ready, a nil *InputMemo keeps nothing.
type InputMemo struct {
	lastSource, lastDestination atomic.Pointer[peerMemo]
}

func (m *InputMemo) source() *atomic.Pointer[peerMemo] {
	if m == nil {
		return nil
	}
	return &m.lastSource
}

func (m *InputMemo) destination() *atomic.Pointer[peerMemo] {
	if m == nil {
		return nil
	}
	return &m.lastDestination
}

// memoPeerValue is peerValue, answered from memo when p is the same simple
// peer as last time (memo nil: rendered every time).
func memoPeerValue(p *authv3.AttributeContext_Peer, need *authz.Need, ar *termArena, memo *atomic.Pointer[peerMemo]) ast.Object {
	if memo == nil {
		return peerValue(p, need, ar)
	}
	addr, port, ok := simplePeer(p)
	if !ok {
		return peerValue(p, need, ar)
	}
	if m := memo.Load(); m != nil && m.need == need && m.addr == addr && m.port == port && m.principal == p.Principal {
		return m.value
	}
	v := peerValue(p, need, &termArena{}) // its own terms: kept past this input
	memo.Store(&peerMemo{addr: addr, principal: p.Principal, port: port, need: need, value: v})
	return v
}

// simplePeer reports whether p has a simple socket address with a port and
// no field but the address and the principal set, and returns the address.
func simplePeer(p *authv3.AttributeContext_Peer) (string, uint32, bool) {
	sa, ok := p.GetAddress().GetAddress().(*corev3.Address_SocketAddress)
	if !ok || !simpleSocketAddress(sa.SocketAddress) {
		return "", 0, false
	}
	pv, ok := sa.SocketAddress.PortSpecifier.(*corev3.SocketAddress_PortValue)
	if !ok {
		return "", 0, false
	}
	m := p.ProtoReflect()
	for _, fd := range peerRest {
		if fd.Number() != 1 && m.Has(fd) {
			return "", 0, false
		}
	}
	if len(p.GetAddress().ProtoReflect().GetUnknown()) > 0 || len(m.GetUnknown()) > 0 {
		return "", 0, false
	}
	return sa.SocketAddress.Address, pv.PortValue, true
}

func peerValue(p *authv3.AttributeContext_Peer, need *authz.Need, ar *termArena) ast.Object {
	var items [2][2]*ast.Term
	n := 0
	handledAddr := false
	if need.Child("address") == nil {
		handledAddr = true // not needed: rest must not render it either
	} else if sa, ok := p.GetAddress().GetAddress().(*corev3.Address_SocketAddress); ok && simpleSocketAddress(sa.SocketAddress) {
		items[n] = ast.Item(termAddress, ar.term(ast.NewObject(
			ast.Item(termSocketAddr, ar.term(socketAddressValue(sa.SocketAddress, ar))),
		)))
		n++
		handledAddr = true
	}
	if p.Principal != "" && need.Child("principal") != nil {
		items[n] = ast.Item(termPrincipal, ar.str(p.Principal))
		n++
	}
	obj := ast.NewObject(items[:n]...)
	var skip protoreflect.FieldNumber
	if handledAddr {
		skip = 1 // address
	}
	rest(obj, p.ProtoReflect(), need, peerRest, skip)
	return obj
}

// simpleSocketAddress: only address and port_value set (the usual case).
func simpleSocketAddress(sa *corev3.SocketAddress) bool {
	_, port := sa.PortSpecifier.(*corev3.SocketAddress_PortValue)
	return sa.Protocol == 0 && sa.ResolverName == "" && !sa.Ipv4Compat && sa.NetworkNamespaceFilepath == "" &&
		(port || sa.PortSpecifier == nil)
}

func socketAddressValue(sa *corev3.SocketAddress, ar *termArena) ast.Object {
	var items [2][2]*ast.Term
	n := 0
	if sa.Address != "" {
		items[n] = ast.Item(termAddress, ar.str(sa.Address))
		n++
	}
	if pv, ok := sa.PortSpecifier.(*corev3.SocketAddress_PortValue); ok {
		items[n] = ast.Item(termPortValue, ast.UIntNumberTerm(uint64(pv.PortValue)))
		n++
	}
	return ast.NewObject(items[:n]...)
}

func requestValue(r *authv3.AttributeContext_Request, need *authz.Need, ar *termArena) ast.Object {
	var items [2][2]*ast.Term
	n := 0
	if r.Time != nil && need.Child("time") != nil {
		items[n] = ast.Item(termTime, ar.str(formatTimestamp(r.Time)))
		n++
	}
	if c := need.Child("http"); r.Http != nil && c != nil {
		items[n] = ast.Item(termHTTP, ar.term(httpValue(r.Http, c, ar)))
		n++
	}
	obj := ast.NewObject(items[:n]...)
	rest(obj, r.ProtoReflect(), need, requestRest, 0)
	return obj
}

func httpValue(h *authv3.AttributeContext_HttpRequest, need *authz.Need, ar *termArena) ast.Object {
	var items [12][2]*ast.Term
	n := 0
	add := func(k, v *ast.Term) {
		items[n] = ast.Item(k, v)
		n++
	}
	var headers ast.Object
	// str adds field k when set and needed; Envoy repeats the id, path and
	// host in the x-request-id, :path and :authority headers: the header's
	// term is used when it holds the same string.
	str := func(k *ast.Term, v string, header *ast.Term) {
		if v == "" || need.Child(string(k.Value.(ast.String))) == nil {
			return
		}
		if header != nil && headers != nil {
			if t := headers.Get(header); t != nil {
				if s, ok := t.Value.(ast.String); ok && string(s) == v {
					add(k, t)
					return
				}
			}
		}
		add(k, ar.str(v))
	}
	if c := need.Child("headers"); len(h.Headers) > 0 && c != nil {
		headers = stringMapNeed(h.Headers, c, ar)
	}
	str(termID, h.Id, termRequestID)
	str(termMethod, h.Method, nil)
	if headers != nil {
		add(keyHeaders, ar.term(headers))
	}
	str(termPath, h.Path, termPathHeader)
	str(termHost, h.Host, termAuthority)
	str(termScheme, h.Scheme, nil)
	str(termQuery, h.Query, nil)
	str(termFragment, h.Fragment, nil)
	if h.Size != 0 && need.Child("size") != nil {
		add(termSize, ar.str(strconv.FormatInt(h.Size, 10)))
	}
	str(termProtocol, h.Protocol, nil)
	str(termBody, h.Body, nil)
	if len(h.RawBody) > 0 && need.Child("rawBody") != nil {
		add(termRawBody, ar.str(base64.StdEncoding.EncodeToString(h.RawBody)))
	}
	obj := ast.NewObject(items[:n]...)
	rest(obj, h.ProtoReflect(), need, httpRest, 0)
	return obj
}
