package envoy_test

import (
	"context"
	"log/slog"
	"net"
	"runtime"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// Read the results as ratios: BenchmarkCheckGRPC / BenchmarkCheckNoop is
// what Gatehouse adds to a bare ext_authz round trip on the same machine;
// BenchmarkCheckSimplePolicy is the in-process share of it, and
// BenchmarkCheckInput the input-building share of that.

const benchIssuer = "https://idp.example.com/"

// benchPolicy is a small, typical policy: a verified token, a method and a
// path prefix, the route's project.
const benchPolicy = `package envoy.authz
default allow := false
allow := {"allowed": true, "headers": {"x-user": input.token.subject}} if {
	input.token.valid
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "api"
	input.attributes.contextExtensions.project == "p1"
}
`

// benchRequest is a typical CheckRequest: a dozen headers, a bearer RS256
// token, a query, context extensions.
func benchRequest(tb testing.TB) *authv3.CheckRequest {
	tb.Helper()
	tok := testutil.MintJWT(tb, jwt.SigningMethodRS256, testutil.RSAKey(tb, "bench"), "k1",
		testutil.Claims(benchIssuer, "alice", map[string]any{"scope": "read write", "tenant": "acme"}))
	return testutil.CheckRequest(testutil.Request{
		Method: "GET",
		Path:   "/api/v1/projects/p1/items?limit=20&after=abc",
		Headers: map[string]string{
			"authorization":     "Bearer " + tok,
			"accept":            "application/json",
			"accept-encoding":   "gzip, deflate, br",
			"user-agent":        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
			"x-forwarded-for":   "203.0.113.7",
			"x-forwarded-proto": "https",
			"x-envoy-internal":  "true",
			"cookie":            "session=0123456789abcdef; theme=dark",
			"traceparent":       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
		ContextExtensions: map[string]string{"project": "p1", "roles": "reader,writer"},
	})
}

func benchIssuers(tb testing.TB) []token.IssuerConfig {
	tb.Helper()
	key := testutil.RSAKey(tb, "bench")
	dir := testutil.PolicyDir(tb, map[string]string{"idp.pem": string(testutil.PublicKeyPEM(tb, &key.PublicKey))})
	return []token.IssuerConfig{{Issuer: benchIssuer, Audiences: []string{"api"}, PublicKeyFile: dir + "/idp.pem"}}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// BenchmarkCheckInput builds the policy input from a typical CheckRequest,
// as a Server does (its InputMemo shares the peers' renderings).
func BenchmarkCheckInput(b *testing.B) {
	req := benchRequest(b)
	var memo envoy.InputMemo
	b.ReportAllocs()
	for b.Loop() {
		prep, err := memo.Prepare(req)
		if err != nil {
			b.Fatal(err)
		}
		prep.Input(authz.NeedAll)
	}
}

// BenchmarkCheckSimplePolicy is one in-process check: input, token (cached
// after the first verification), decision, CheckResponse. "cached" is the
// production default, where a repeated request is a decision-cache hit;
// "evaluated" disables the decision cache, so every check runs the policy.
func BenchmarkCheckSimplePolicy(b *testing.B) {
	for name, entries := range map[string]int{"cached": 0, "evaluated": -1} {
		b.Run(name, func(b *testing.B) { benchSimplePolicy(b, entries) })
	}
}

func benchSimplePolicy(b *testing.B, cacheEntries int) {
	logger := discard()
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: benchIssuers(b)}, logger)
	if err != nil {
		b.Fatal(err)
	}
	e := policyEngine(b, authz.Config{DecisionCacheEntries: cacheEntries}, v, benchPolicy)
	req := benchRequest(b)
	headers := req.GetAttributes().GetRequest().GetHttp().GetHeaders()
	var memo envoy.InputMemo // as a Server renders inputs
	check := func() *authv3.CheckResponse {
		prep, err := memo.Prepare(req)
		if err != nil {
			b.Fatal(err)
		}
		in := prep.Input(authz.NeedAll)
		d, err := e.Decide(context.Background(), &authz.Request{Input: in, Authorization: headers["authorization"]})
		if err != nil {
			b.Fatal(err)
		}
		return envoy.Response(d, headers)
	}
	if check().GetOkResponse() == nil {
		b.Fatal("the benchmark request is not allowed")
	}
	b.ReportAllocs()
	for b.Loop() {
		check()
	}
}

// BenchmarkCheckGRPC is a full Check over a real loopback socket.
func BenchmarkCheckGRPC(b *testing.B) {
	sc := testutil.StartSidecar(b, testutil.Options{
		Policies: map[string]string{"policy.rego": benchPolicy},
		Issuers:  benchIssuers(b),
		Server:   envoy.Config{HTTPAddr: "-"},
		Logger:   discard(),
	})
	req := benchRequest(b)
	if resp, err := sc.Client.Check(b.Context(), req); err != nil || resp.GetOkResponse() == nil {
		b.Fatalf("the benchmark request is not allowed: %v, %v", resp, err)
	}
	benchGRPC(b, sc.Client, req)
}

// noop answers OK to everything: the floor of an ext_authz round trip.
type noop struct {
	authv3.UnimplementedAuthorizationServer
}

var okResponse = &authv3.CheckResponse{
	Status:       &rpcstatus.Status{Code: int32(codes.OK)},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

func (noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse, nil
}

// BenchmarkCheckNoop is BenchmarkCheckGRPC against a server that does
// nothing, with the same server options, socket and client.
func BenchmarkCheckNoop(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))))
	authv3.RegisterAuthorizationServer(srv, noop{})
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(srv.Stop)
	client := authv3.NewAuthorizationClient(testutil.Dial(b, lis.Addr().String()))
	benchGRPC(b, client, benchRequest(b))
}

// benchGRPC measures one caller (latency) and GOMAXPROCS×4 concurrent
// callers (throughput, as Envoy's many workers call).
func benchGRPC(b *testing.B, client authv3.AuthorizationClient, req *authv3.CheckRequest) {
	b.Helper()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := client.Check(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := client.Check(context.Background(), req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// policyEngine is an Engine with cfg and verifier v (nil: none) serving
// policy, loaded from a directory as a sidecar loads it.
func policyEngine(tb testing.TB, cfg authz.Config, v *token.Verifier, policy string) *authz.Engine {
	tb.Helper()
	logger := discard()
	e := authz.New(cfg, v, nil, logger)
	src, err := bundle.NewDirSource(bundle.PolicyConfig{Dir: testutil.PolicyDir(tb, map[string]string{"policy.rego": policy})}, e, logger)
	if err != nil {
		tb.Fatal(err)
	}
	if err := src.Load(); err != nil {
		tb.Fatal(err)
	}
	return e
}
