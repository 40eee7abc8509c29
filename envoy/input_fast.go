package envoy

import (
	"encoding/base64"
	"strconv"

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
)

// rest renders the populated fields of m not in handled that need asks
// for, generically (a field that is needed at all is rendered whole).
func rest(obj ast.Object, m protoreflect.Message, need *authz.Need, handled func(protoreflect.FieldNumber) bool) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if !handled(fd.Number()) && need.Child(fd.JSONName()) != nil {
			obj.Insert(ast.StringTerm(fd.JSONName()), ast.NewTerm(fieldValue(fd, v)))
		}
		return true
	})
}

// attributesValue renders (what need asks for of) an AttributeContext.
func attributesValue(a *authv3.AttributeContext, need *authz.Need) ast.Object {
	obj := ast.NewObjectWithCapacity(4)
	if n := need.Child("source"); a.Source != nil && n != nil {
		obj.Insert(termSource, ast.NewTerm(peerValue(a.Source, n)))
	}
	if n := need.Child("destination"); a.Destination != nil && n != nil {
		obj.Insert(termDestination, ast.NewTerm(peerValue(a.Destination, n)))
	}
	if n := need.Child("request"); a.Request != nil && n != nil {
		obj.Insert(termRequest, ast.NewTerm(requestValue(a.Request, n)))
	}
	if n := need.Child("contextExtensions"); len(a.ContextExtensions) > 0 && n != nil {
		obj.Insert(termContextExt, ast.NewTerm(stringMapNeed(a.ContextExtensions, n)))
	}
	rest(obj, a.ProtoReflect(), need, func(n protoreflect.FieldNumber) bool {
		return n == 1 || n == 2 || n == 4 || n == 10 // source, destination, request, context_extensions
	})
	return obj
}

func peerValue(p *authv3.AttributeContext_Peer, need *authz.Need) ast.Object {
	obj := ast.NewObjectWithCapacity(2)
	handledAddr := false
	if need.Child("address") == nil {
		handledAddr = true // not needed: rest must not render it either
	} else if sa, ok := p.GetAddress().GetAddress().(*corev3.Address_SocketAddress); ok && simpleSocketAddress(sa.SocketAddress) {
		obj.Insert(termAddress, ast.NewTerm(ast.NewObject(
			ast.Item(termSocketAddr, ast.NewTerm(socketAddressValue(sa.SocketAddress))),
		)))
		handledAddr = true
	}
	if p.Principal != "" && need.Child("principal") != nil {
		obj.Insert(termPrincipal, ast.StringTerm(p.Principal))
	}
	rest(obj, p.ProtoReflect(), need, func(n protoreflect.FieldNumber) bool {
		return (n == 1 && handledAddr) || n == 4 // address, principal
	})
	return obj
}

// simpleSocketAddress: only address and port_value set (the usual case).
func simpleSocketAddress(sa *corev3.SocketAddress) bool {
	_, port := sa.PortSpecifier.(*corev3.SocketAddress_PortValue)
	return sa.Protocol == 0 && sa.ResolverName == "" && !sa.Ipv4Compat && sa.NetworkNamespaceFilepath == "" &&
		(port || sa.PortSpecifier == nil)
}

func socketAddressValue(sa *corev3.SocketAddress) ast.Object {
	obj := ast.NewObjectWithCapacity(2)
	if sa.Address != "" {
		obj.Insert(termAddress, ast.StringTerm(sa.Address))
	}
	if pv, ok := sa.PortSpecifier.(*corev3.SocketAddress_PortValue); ok {
		obj.Insert(termPortValue, ast.UIntNumberTerm(uint64(pv.PortValue)))
	}
	return obj
}

func requestValue(r *authv3.AttributeContext_Request, need *authz.Need) ast.Object {
	obj := ast.NewObjectWithCapacity(2)
	if r.Time != nil && need.Child("time") != nil {
		obj.Insert(termTime, ast.StringTerm(formatTimestamp(r.Time)))
	}
	if n := need.Child("http"); r.Http != nil && n != nil {
		obj.Insert(termHTTP, ast.NewTerm(httpValue(r.Http, n)))
	}
	rest(obj, r.ProtoReflect(), need, func(n protoreflect.FieldNumber) bool { return n == 1 || n == 2 })
	return obj
}

func httpValue(h *authv3.AttributeContext_HttpRequest, need *authz.Need) ast.Object {
	obj := ast.NewObjectWithCapacity(10)
	str := func(k *ast.Term, v string) {
		if v != "" && need.Child(string(k.Value.(ast.String))) != nil {
			obj.Insert(k, ast.StringTerm(v))
		}
	}
	str(termID, h.Id)
	str(termMethod, h.Method)
	if n := need.Child("headers"); len(h.Headers) > 0 && n != nil {
		obj.Insert(keyHeaders, ast.NewTerm(stringMapNeed(h.Headers, n)))
	}
	str(termPath, h.Path)
	str(termHost, h.Host)
	str(termScheme, h.Scheme)
	str(termQuery, h.Query)
	str(termFragment, h.Fragment)
	if h.Size != 0 && need.Child("size") != nil {
		obj.Insert(termSize, ast.StringTerm(strconv.FormatInt(h.Size, 10)))
	}
	str(termProtocol, h.Protocol)
	str(termBody, h.Body)
	if len(h.RawBody) > 0 && need.Child("rawBody") != nil {
		obj.Insert(termRawBody, ast.StringTerm(base64.StdEncoding.EncodeToString(h.RawBody)))
	}
	rest(obj, h.ProtoReflect(), need, func(n protoreflect.FieldNumber) bool {
		return n >= 1 && n <= 12 // id..raw_body; header_map (13) and newer fields stay generic
	})
	return obj
}
