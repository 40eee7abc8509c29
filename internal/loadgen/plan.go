package loadgen

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// PlanOptions are the inputs of NewPlan besides the scenario.
type PlanOptions struct {
	// SigningKey signs the "valid" and "expired" tokens; required only
	// when the scenario has such requests.
	SigningKey *rsa.PrivateKey
	// HMACSecret, when set, signs the tokens with HS256 instead (for a
	// peer that verifies tokens in Rego with a shared secret).
	HMACSecret []byte
	// Now is the time tokens are minted at; zero means time.Now().
	Now time.Time
	// ExpectAll, when non-nil, replaces every request's expectation (the
	// no-op floor allows everything, yet must be sent the same bytes).
	ExpectAll *Outcome
	// TokenCache, when set, is a file of tokens minted earlier: a "valid"
	// token of the same signing key and claims with at least
	// TokenCacheMinValidity left is reused rather than signed again, and
	// the tokens signed are added to it (valid for TokenCacheValidity).
	// Tokens whose claims set exp or iat are never cached.
	TokenCache string
}

// Plan is a scenario prepared for sending: each request's CheckRequest is
// built, its token minted and its wire encoding computed once. A Plan is
// immutable and safe for concurrent use.
type Plan struct {
	// Names are the request names, in scenario order.
	Names []string
	// Expect is the expected outcome of each request (Allow or Deny).
	Expect []Outcome
	// Requests are the CheckRequests, as Envoy would send them.
	Requests []*authv3.CheckRequest

	// DistinctRequests counts the requests that differ in anything but
	// their x-request-id and source port: method, host, path, headers,
	// context extensions or token.
	DistinctRequests int
	// DistinctTokens counts the distinct bearer tokens sent.
	DistinctTokens int
	// MintedTokens counts the tokens signed to build the plan (the others
	// were shared with an earlier request or read from the token cache).
	MintedTokens int

	wire  []wireRequest // encoded Requests, same index
	order []int         // weighted, shuffled send order (indices into Requests)
}

// NewPlan builds the CheckRequests of a validated scenario.
func NewPlan(sc *Scenario, opts PlanOptions) (*Plan, error) {
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	m, err := newMinter(sc, opts.SigningKey, opts.HMACSecret, now, opts.TokenCache)
	if err != nil {
		return nil, err
	}
	p := &Plan{}
	distinct := make(map[string]struct{}, len(sc.Requests))
	tokens := map[string]struct{}{}
	for i := range sc.Requests {
		r := &sc.Requests[i]
		tok, err := m.token(r)
		if err != nil {
			return nil, err
		}
		if tok != "" {
			tokens[tok] = struct{}{}
		}
		id, err := requestIdentity(r, tok)
		if err != nil {
			return nil, err
		}
		distinct[id] = struct{}{}
		req := buildCheckRequest(r, i, tok, now)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("encode request %q: %w", r.Name, err)
		}
		want, _ := ParseOutcome(r.Expect) // validated above
		if opts.ExpectAll != nil {
			want = *opts.ExpectAll
		}
		p.Names = append(p.Names, r.Name)
		p.Expect = append(p.Expect, want)
		p.Requests = append(p.Requests, req)
		p.wire = append(p.wire, newWireRequest(b))
		for range max(r.Weight, 1) {
			p.order = append(p.order, i)
		}
	}
	if err := m.save(); err != nil {
		return nil, err
	}
	p.DistinctRequests, p.DistinctTokens, p.MintedTokens = len(distinct), len(tokens), m.minted
	// A fixed seed: every run sends the same sequence.
	rng := mrand.New(mrand.NewPCG(0x6761746568, 0x6f757365))
	rng.Shuffle(len(p.order), func(i, j int) { p.order[i], p.order[j] = p.order[j], p.order[i] })
	return p, nil
}

// requestIdentity is what a server may decide on: everything of the request
// but its generated id and source port.
func requestIdentity(r *Request, token string) (string, error) {
	method := strings.ToUpper(r.Method)
	if method == "" {
		method = "GET"
	}
	headers := make(map[string]string, len(r.Headers))
	for k, v := range r.Headers {
		headers[strings.ToLower(k)] = v
	}
	b, err := json.Marshal([]any{method, r.Host, r.Path, headers, r.ContextExtensions, token})
	if err != nil {
		return "", fmt.Errorf("%w: request %q: %w", ErrScenario, r.Name, err)
	}
	return string(b), nil
}

// buildCheckRequest builds the CheckRequest Envoy's ext_authz filter would
// send for r: lowercase headers including the pseudo-headers, the bearer
// token, a request id, socket addresses and the route's context extensions.
func buildCheckRequest(r *Request, index int, token string, now time.Time) *authv3.CheckRequest {
	method := r.Method
	if method == "" {
		method = "GET"
	}
	method = strings.ToUpper(method)
	host := r.Host
	if host == "" {
		host = "localhost"
	}
	id := newRequestID()
	headers := make(map[string]string, len(r.Headers)+8)
	for k, v := range r.Headers {
		headers[strings.ToLower(k)] = v
	}
	headers[":authority"] = host
	headers[":method"] = method
	headers[":path"] = r.Path
	headers[":scheme"] = "http"
	headers["x-request-id"] = id
	headers["x-forwarded-proto"] = "http"
	if _, ok := headers["user-agent"]; !ok {
		headers["user-agent"] = "gatehouse-loadgen/1"
	}
	if token != "" {
		headers["authorization"] = "Bearer " + token
	}
	var ext map[string]string
	if len(r.ContextExtensions) > 0 {
		ext = make(map[string]string, len(r.ContextExtensions))
		for k, v := range r.ContextExtensions {
			ext[k] = v
		}
	}
	return &authv3.CheckRequest{
		Attributes: &authv3.AttributeContext{
			Source:      &authv3.AttributeContext_Peer{Address: socketAddress("127.0.0.1", uint32(40000+index%20000))},
			Destination: &authv3.AttributeContext_Peer{Address: socketAddress("127.0.0.1", 8000)},
			Request: &authv3.AttributeContext_Request{
				Time: timestamppb.New(now),
				Http: &authv3.AttributeContext_HttpRequest{
					Id:       id,
					Method:   method,
					Headers:  headers,
					Path:     r.Path,
					Host:     host,
					Scheme:   "http",
					Protocol: "HTTP/1.1",
				},
			},
			ContextExtensions: ext,
		},
	}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// newRequestID returns a random UUID (version 4) as Envoy generates for
// x-request-id.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
