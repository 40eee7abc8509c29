package envoy

import (
	"encoding/base64"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// The decision log writes a request's whole input document as JSON
// straight from the CheckRequest (no OPA value built for it): the same
// renderers as Input's hand-written ones, field by field, with every
// other populated field still rendered generically. The result is the
// JSON of Input(req) (TestInputJSONEqualsInput).

// InputJSON returns the decision log's writer of req's input document
// (see authz.InputWriter); req must not be modified afterwards.
func InputJSON(req *authv3.CheckRequest) authz.InputWriter { return (*logRequest)(req) }

// logRequest is a CheckRequest whose input a record writes.
type logRequest authv3.CheckRequest

// WriteInput writes the members of the input document (Input's) to w.
func (r *logRequest) WriteInput(w authz.JSONWriter) error {
	p, err := Prepare((*authv3.CheckRequest)(r))
	if err != nil {
		return err
	}
	return p.WriteInput(w)
}

// WriteInput writes the members of p's input document (Input's) to w: a
// Prepared request is an authz.InputWriter.
func (p *Prepared) WriteInput(w authz.JSONWriter) error {
	if w.Key("attributes") {
		p.writeAttributes(w, p.req.GetAttributes())
	}
	if w.Key("parsed_path") {
		w.Value(p.parsedPath.Value)
	}
	if w.Key("parsed_query") {
		w.Value(p.parsedQuery.Value)
	}
	if w.Key("parsed_body") {
		w.Value(p.body.Value)
	}
	if w.Key("truncated_body") {
		w.Bool(p.truncated)
	}
	if w.Key("version") {
		w.Value(versionV3.Value)
	}
	if pr := p.req.GetAttributes().GetSource().GetPrincipal(); pr != "" && w.Key("source_principal") {
		w.String(pr)
	}
	return nil
}

func (p *Prepared) writeAttributes(w authz.JSONWriter, a *authv3.AttributeContext) {
	w.BeginObject()
	if a.Source != nil && w.Key("source") {
		writePeer(w, a.Source)
	}
	if a.Destination != nil && w.Key("destination") {
		writePeer(w, a.Destination)
	}
	if a.Request != nil && w.Key("request") {
		p.writeRequest(w, a.Request)
	}
	if len(a.ContextExtensions) > 0 && w.Key("contextExtensions") {
		writeStringMap(w, a.ContextExtensions)
	}
	writeRest(w, a.ProtoReflect(), attributesRest, 0)
	w.EndObject()
}

func writePeer(w authz.JSONWriter, p *authv3.AttributeContext_Peer) {
	w.BeginObject()
	var skip protoreflect.FieldNumber
	if sa, ok := p.GetAddress().GetAddress().(*corev3.Address_SocketAddress); ok && simpleSocketAddress(sa.SocketAddress) {
		skip = 1 // address
		if w.Key("address") {
			w.BeginObject()
			if w.Key("socketAddress") {
				w.BeginObject()
				if sa.SocketAddress.Address != "" && w.Key("address") {
					w.String(sa.SocketAddress.Address)
				}
				if pv, ok := sa.SocketAddress.PortSpecifier.(*corev3.SocketAddress_PortValue); ok && w.Key("portValue") {
					w.Uint(uint64(pv.PortValue))
				}
				w.EndObject()
			}
			w.EndObject()
		}
	}
	if p.Principal != "" && w.Key("principal") {
		w.String(p.Principal)
	}
	writeRest(w, p.ProtoReflect(), peerRest, skip)
	w.EndObject()
}

func (p *Prepared) writeRequest(w authz.JSONWriter, r *authv3.AttributeContext_Request) {
	w.BeginObject()
	if r.Time != nil && w.Key("time") {
		w.String(formatTimestamp(r.Time))
	}
	if r.Http != nil && w.Key("http") {
		p.writeHTTP(w, r.Http)
	}
	writeRest(w, r.ProtoReflect(), requestRest, 0)
	w.EndObject()
}

func (p *Prepared) writeHTTP(w authz.JSONWriter, h *authv3.AttributeContext_HttpRequest) {
	w.BeginObject()
	str := func(k, v string) {
		if v != "" && w.Key(k) {
			w.String(v)
		}
	}
	str("id", h.Id)
	str("method", h.Method)
	if len(h.Headers) > 0 && w.Key("headers") {
		writeStringMap(w, h.Headers)
	}
	str("path", h.Path)
	str("host", h.Host)
	str("scheme", h.Scheme)
	str("query", h.Query)
	str("fragment", h.Fragment)
	if h.Size != 0 && w.Key("size") {
		w.String(strconv.FormatInt(h.Size, 10))
	}
	str("protocol", h.Protocol)
	str("body", h.Body)
	if len(h.RawBody) > 0 && w.Key("rawBody") {
		w.String(base64.StdEncoding.EncodeToString(h.RawBody))
	}
	writeRest(w, h.ProtoReflect(), httpRest, 0)
	if len(h.Headers) == 0 && len(p.headers) > 0 && w.Key("headers") {
		// header_map's headers, as Input renders them
		writeStringMap(w, p.headers)
	}
	w.EndObject()
}

func writeStringMap(w authz.JSONWriter, m map[string]string) {
	w.BeginObject()
	for k, v := range m {
		if w.Key(k) {
			w.String(v)
		}
	}
	w.EndObject()
}

// writeRest writes the populated fields among fields generically (see
// rest); an erased one (header_map) is not rendered at all.
func writeRest(w authz.JSONWriter, m protoreflect.Message, fields []protoreflect.FieldDescriptor, skip protoreflect.FieldNumber) {
	for _, fd := range fields {
		if fd.Number() != skip && m.Has(fd) && w.Key(fd.JSONName()) {
			w.Value(fieldValue(fd, m.Get(fd)))
		}
	}
}
