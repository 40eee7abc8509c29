package envoy

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// randomRequest fills a CheckRequest's attributes with a random subset of
// fields, common and rare.
func randomRequest(r *rand.Rand) *authv3.CheckRequest {
	pick := func() bool { return r.IntN(2) == 0 }
	s := func() string {
		if pick() {
			return ""
		}
		return fmt.Sprintf("v%d\u00e9\"%d", r.IntN(100), r.IntN(9))
	}
	addr := func() *corev3.Address {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/s"}}}
		case 2:
			return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Protocol: corev3.SocketAddress_UDP, Address: s(), PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: "http"}}}}
		}
		sa := &corev3.SocketAddress{Address: s()}
		if pick() {
			sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(r.IntN(70000))}
		}
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: sa}}
	}
	peer := func() *authv3.AttributeContext_Peer {
		if pick() {
			return nil
		}
		p := &authv3.AttributeContext_Peer{Address: addr(), Service: s(), Principal: s(), Certificate: s()}
		if pick() {
			p.Labels = map[string]string{"a": s(), "b": "x"}
		}
		return p
	}
	h := &authv3.AttributeContext_HttpRequest{
		Id: s(), Method: s(), Path: s(), Host: s(), Scheme: s(), Query: s(), Fragment: s(),
		Protocol: s(), Body: s(),
	}
	if pick() {
		h.Size = r.Int64N(1 << 40)
	}
	if pick() {
		h.Headers = map[string]string{":path": s(), "authorization": s(), "x-a": "1"}
	}
	if pick() {
		h.RawBody = []byte(s())
	}
	if pick() {
		h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "k", Value: s()}, {Key: "raw", RawValue: []byte("rv")}}}
	}
	req := &authv3.AttributeContext_Request{Http: h}
	if pick() {
		req.Time = timestamppb.New(timestamppb.Now().AsTime().Add(-1))
	}
	a := &authv3.AttributeContext{Source: peer(), Destination: peer(), Request: req}
	if pick() {
		a.ContextExtensions = map[string]string{"project": s(), "roles": "a,b"}
	}
	if pick() {
		st, _ := structpb.NewStruct(map[string]any{"n": 1.5, "s": "x", "l": []any{true, nil}, "o": map[string]any{"k": "v"}})
		a.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.jwt_authn": st}}
	}
	if pick() {
		a.TlsSession = &authv3.AttributeContext_TLSSession{Sni: s()}
	}
	return &authv3.CheckRequest{Attributes: a}
}

func TestFastInputEqualsGenericRendering(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		req := randomRequest(r)
		fast := attributesValue(req.Attributes, authz.NeedAll, &termArena{}, nil)
		generic := messageValue(req.Attributes.ProtoReflect())
		if fast.Compare(generic) != 0 {
			t.Fatalf("request %d differs:\nfast    %v\ngeneric %v", i, fast, generic)
		}
		// Built differently (shared and arena terms, whole-object
		// construction), the values must also hash and look up alike.
		if fast.Hash() != generic.Hash() {
			t.Fatalf("request %d: hash %d vs %d", i, fast.Hash(), generic.Hash())
		}
		if !sameLookups(fast, generic) {
			t.Fatalf("request %d: a key of the generic rendering is not found alike in the fast one", i)
		}
	}
}

// sameLookups reports whether every key of want, at every depth, is found
// in got with an equal value.
func sameLookups(got, want ast.Value) bool {
	wo, ok := want.(ast.Object)
	if !ok {
		return got.Compare(want) == 0
	}
	gotObj, ok := got.(ast.Object)
	if !ok || gotObj.Len() != wo.Len() {
		return false
	}
	same := true
	wo.Foreach(func(k, v *ast.Term) {
		g := gotObj.Get(k)
		same = same && g != nil && sameLookups(g.Value, v.Value)
	})
	return same
}

// TestGenericRenderingEqualsProtojson: the input's attributes are exactly
// protojson's rendering of the request, as opa-envoy-plugin documents it.
func TestGenericRenderingEqualsProtojson(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 2000 {
		req := randomRequest(r)
		b, err := protojson.Marshal(req.Attributes)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ast.ValueFromReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if got := messageValue(req.Attributes.ProtoReflect()); got.Compare(want) != 0 {
			t.Fatalf("request %d differs:\nours      %v\nprotojson %v", i, got, want)
		}
	}
}

// TestPartialInputAgreesOnNeededPaths: rendering only what a policy can read
// gives the same value as the whole input at every path the policy reads.
func TestPartialInputAgreesOnNeededPaths(t *testing.T) {
	t.Parallel()
	candidates := []string{
		`input`, `input.attributes`, `input.attributes.contextExtensions`, `input.attributes.contextExtensions.project`,
		`input.attributes.request.http`, `input.attributes.request.http.headers`, `input.attributes.request.http.headers["x-a"]`,
		`input.attributes.request.http.headers.authorization`, `input.attributes.request.http.host`, `input.attributes.request.http.method`,
		`input.attributes.request.http.size`, `input.attributes.request.http.rawBody`, `input.attributes.request.http.headerMap`,
		`input.attributes.request.time`, `input.attributes.source`, `input.attributes.source.address`,
		`input.attributes.source.address.socketAddress.portValue`, `input.attributes.source.labels`, `input.attributes.destination.principal`,
		`input.attributes.metadataContext`, `input.attributes.tlsSession.sni`, `input.parsed_path`, `input.parsed_path[1]`,
		`input.parsed_query`, `input.parsed_body`, `input.truncated_body`, `input.version`, `input.source_principal`,
	}
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 2000 {
		req := randomRequest(r)
		if req.Attributes.Request.Http.Path == "" {
			req.Attributes.Request.Http.Path = "/t/acme/x?y=1"
		}
		var paths []ast.Ref
		for _, c := range candidates {
			if r.IntN(6) == 0 {
				paths = append(paths, ast.MustParseRef(c))
			}
		}
		prep, err := Prepare(req)
		if err != nil {
			continue // a random path that does not parse: both forms refuse it
		}
		full := prep.Input(authz.NeedAll)
		part := prep.Input(authz.NeedFor(paths))
		for _, p := range paths {
			a, b := lookup(full, p), lookup(part, p)
			if (a == nil) != (b == nil) || a != nil && a.Compare(b) != 0 {
				t.Fatalf("request %d, path %v: whole input %v, partial %v", i, p, a, b)
			}
		}
	}
}

func lookup(v ast.Value, p ast.Ref) ast.Value {
	for _, t := range p[1:] {
		switch x := v.(type) {
		case ast.Object:
			c := x.Get(t)
			if c == nil {
				return nil
			}
			v = c.Value
		case *ast.Array:
			n, _ := t.Value.(ast.Number).Int()
			if n >= x.Len() {
				return nil
			}
			v = x.Elem(n).Value
		default:
			return nil
		}
	}
	return v
}

// TestPeerMemo: a peer rendered as the last one was is answered from the
// memo; any difference (address, port, principal, another field, what the
// policy needs) renders it anew. Every rendering equals the generic one.
func TestPeerMemo(t *testing.T) {
	peer := func(addr string, port uint32, principal string) *authv3.AttributeContext_Peer {
		return &authv3.AttributeContext_Peer{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
			}}},
			Principal: principal,
		}
	}
	withService := peer("10.0.0.1", 443, "")
	withService.Service = "svc"
	withLabels := peer("10.0.0.1", 443, "")
	withLabels.Labels = map[string]string{"k": "v"}
	namedPort := peer("10.0.0.1", 0, "")
	namedPort.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "https"}
	seq := []*authv3.AttributeContext_Peer{
		peer("10.0.0.1", 443, ""), peer("10.0.0.1", 443, ""), peer("10.0.0.1", 444, ""), peer("10.0.0.2", 444, ""),
		peer("10.0.0.2", 444, "spiffe://a"), peer("10.0.0.2", 444, "spiffe://b"), peer("10.0.0.2", 444, ""),
		withService, peer("10.0.0.1", 443, ""), withLabels, peer("10.0.0.1", 443, ""), namedPort, peer("10.0.0.1", 443, ""),
	}
	needs := map[string]*authz.Need{
		"all":       authz.NeedAll,
		"principal": authz.NeedFor([]ast.Ref{ast.MustParseRef("input.attributes.source.principal"), ast.MustParseRef("input.attributes.destination.principal")}),
	}
	memo := &InputMemo{}
	for _, run := range []struct {
		name string
		memo *InputMemo
	}{{"all", memo}, {"principal", memo}, {"all", memo}, {"all", nil}} {
		name, memo := run.name, run.memo
		need := needs[name]
		for i, p := range seq {
			for _, a := range []*authv3.AttributeContext{{Source: p}, {Destination: p}} {
				got := attributesValue(a, need.Child("attributes"), &termArena{}, memo)
				want := messageValue(a.ProtoReflect())
				if name == "principal" {
					want = filterPrincipal(t, want)
				}
				if got.Compare(want) != 0 || got.Hash() != want.Hash() {
					t.Fatalf("need %s, peer %d: got %v, want %v", name, i, got, want)
				}
			}
		}
	}
}

// filterPrincipal keeps only source/destination principals of a rendering.
func filterPrincipal(tb testing.TB, v ast.Object) ast.Object {
	tb.Helper()
	out := ast.NewObject()
	v.Foreach(func(k, peer *ast.Term) {
		obj := ast.NewObject()
		if p := peer.Value.(ast.Object).Get(ast.StringTerm("principal")); p != nil {
			obj.Insert(ast.StringTerm("principal"), p)
		}
		out.Insert(k, ast.NewTerm(obj))
	})
	return out
}

// TestPeerMemoIsPerServer: the last peers rendered are kept by each
// server (an InputMemo), not in package state shared by every server and
// every Evaluate call of the process.
func TestPeerMemoIsPerServer(t *testing.T) {
	t.Parallel()
	a := &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "10.0.0.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8443},
		}}},
	}}
	var one, other InputMemo
	attributesValue(a, authz.NeedAll.Child("attributes"), &termArena{}, &one)
	if one.lastSource.Load() == nil {
		t.Fatal("the server's memo did not keep the source it rendered")
	}
	if other.lastSource.Load() != nil || other.lastDestination.Load() != nil {
		t.Error("another server's memo holds a peer it never rendered")
	}
}
