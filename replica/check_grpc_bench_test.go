package replica_test

import (
	"context"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/token"
)

// BenchmarkCheckTenancyGRPC is the shipped policy over the 200k world
// through a real ext_authz gRPC server on a loopback socket: one caller
// (serial) and GOMAXPROCS×4 callers (parallel), decision cache off
// ("uncached": every check evaluated, the cost of a first-seen request) or
// on. Read against envoy's BenchmarkCheckNoop (the same round trip to a
// server that does nothing).
func BenchmarkCheckTenancyGRPC(b *testing.B) {
	for _, c := range []struct {
		name    string
		entries int
	}{{"uncached", -1}, {"cached", 0}} {
		b.Run(c.name, func(b *testing.B) { benchCheckGRPC(b, c.entries) })
	}
}

func benchCheckGRPC(b *testing.B, cacheEntries int) {
	st, w := buildWorld(b, "200k", worldgen.Default)
	issuer, mint := benchIssuer(b)
	sc := testutil.StartSidecar(b, testutil.Options{
		PolicyDir: policyDir(),
		Tenancy:   st,
		Issuers:   []token.IssuerConfig{issuer},
		Engine:    authz.Config{DecisionCacheEntries: cacheEntries, Builtins: benchBuiltins()},
		Server:    envoy.Config{HTTPAddr: "-"},
		Logger:    discard(),
	})
	reqs := w.Requests(256, 80, 7)
	tokens := map[string]string{}
	crs := make([]*authv3.CheckRequest, len(reqs))
	for i, r := range reqs {
		if tokens[r.Subject] == "" {
			tokens[r.Subject] = mint(r.Subject)
		}
		crs[i] = r.CheckRequest(tokens[r.Subject])
		resp, err := sc.Client.Check(context.Background(), crs[i])
		if err != nil {
			b.Fatal(err)
		}
		if allowed := resp.GetStatus().GetCode() == int32(codes.OK); allowed != r.Allow {
			b.Fatalf("request %d (%+v): allowed=%v", i, r, allowed)
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		cpu := startCPU()
		n := 0
		for i := 0; b.Loop(); i++ {
			n++
			if _, err := sc.Client.Check(context.Background(), crs[i%len(crs)]); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b, n)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				if _, err := sc.Client.Check(context.Background(), crs[i%len(crs)]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// benchIssuer is an RS256 issuer with a fresh key, and a minter of its
// tokens.
func benchIssuer(tb testing.TB) (token.IssuerConfig, func(sub string) string) {
	tb.Helper()
	key := testutil.RSAKey(tb, "bench-grpc")
	pem := tb.TempDir() + "/pub.pem"
	testutil.WriteFile(tb, pem, string(testutil.PublicKeyPEM(tb, &key.PublicKey)))
	cfg := token.IssuerConfig{Issuer: "https://idp.bench/", Audiences: []string{"api"}, Algorithms: []string{"RS256"}, PublicKeyFile: pem}
	return cfg, func(sub string) string {
		return testutil.MintJWT(tb, jwtRS256, key, "", testutil.Claims(cfg.Issuer, sub, nil))
	}
}
