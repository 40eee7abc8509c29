package bundle_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// benchWorld is a cache file built once per size and reused by benchmarks.
type benchWorld struct {
	once  sync.Once
	dir   string
	world *worldgen.World
	err   error
}

var benchWorlds = map[string]*benchWorld{"small": {}, "200k": {}, "1M": {}}

func buildWorld(b testing.TB, name string, spec worldgen.Spec) (*bundle.Store, *worldgen.World) {
	b.Helper()
	bw := benchWorlds[name]
	bw.once.Do(func() {
		dir, err := os.MkdirTemp("", "gatehouse-bench-"+name)
		if err != nil {
			bw.err = err
			return
		}
		bw.dir = dir
		st, err := bundle.OpenStore(bundle.StoreConfig{Dir: dir}, discard())
		if err != nil {
			bw.err = err
			return
		}
		defer st.Close()
		sb, err := st.BeginSnapshot(1, "bench", tenancy.GenesisHash("bench", 1))
		if err != nil {
			bw.err = err
			return
		}
		bw.world, bw.err = worldgen.Generate(spec, func(e tenancy.Entity) error {
			doc, err := json.Marshal(e)
			if err != nil {
				return err
			}
			return sb.Put(tenancy.FeedLine{Type: tenancy.LineEntity, Collection: e.Collection(), ID: e.Key(), ModRevision: 1, Value: doc})
		})
		if bw.err == nil {
			bw.err = sb.Commit(time.Now())
		}
	})
	if bw.err != nil {
		b.Fatal(bw.err)
	}
	st, err := bundle.OpenStore(bundle.StoreConfig{Dir: bw.dir}, discard())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st, bw.world
}

// benchEngine returns an engine over st with the shipped policies and an
// RS256 issuer, and a token minter for it.
func benchEngine(tb testing.TB, st *bundle.Store) (*authz.Engine, func(sub string) string) {
	tb.Helper()
	v, mint := newVerifier(tb)
	return newEngine(tb, st, v, 0), mint
}

// newVerifier returns a verifier trusting a fresh RSA key, and a minter of
// tokens signed by it.
func newVerifier(tb testing.TB) (*authz.Verifier, func(sub string) string) {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pemFile := filepath.Join(tb.TempDir(), "pub.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	v, err := authz.NewVerifier(authz.VerifierConfig{Issuers: []authz.IssuerConfig{{
		Issuer: "https://idp.bench/", Audiences: []string{"api"}, Algorithms: []string{"RS256"}, PublicKeyFile: pemFile,
	}}}, discard())
	if err != nil {
		tb.Fatal(err)
	}
	mint := func(sub string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"iss": "https://idp.bench/", "aud": "api", "sub": sub, "exp": time.Now().Add(time.Hour).Unix(),
		})
		s, err := tok.SignedString(key)
		if err != nil {
			tb.Fatal(err)
		}
		return s
	}
	return v, mint
}

// newEngine returns an engine with the shipped policies over st.
func newEngine(tb testing.TB, st *bundle.Store, v *authz.Verifier, cacheEntries int) *authz.Engine {
	tb.Helper()
	e := authz.New(authz.Config{DecisionCacheEntries: cacheEntries, Builtins: bundle.Builtins()}, v, st, discard())
	src, err := authz.LoadDir(policyDir(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	ps, err := e.Compile(src, authz.DefaultDecision)
	if err != nil {
		tb.Fatal(err)
	}
	e.SetPolicy(ps)
	return e
}

func benchCheck(b *testing.B, name string, spec worldgen.Spec, decisionCache int) {
	st, w := buildWorld(b, name, spec)
	v, mint := newVerifier(b)
	e := newEngine(b, st, v, decisionCache)
	reqs := w.Requests(256, 80, 7)
	tokens := map[string]string{}
	crs := make([]*authv3.CheckRequest, len(reqs))
	for i, r := range reqs {
		if tokens[r.Subject] == "" {
			tokens[r.Subject] = mint(r.Subject)
		}
		crs[i] = r.CheckRequest(tokens[r.Subject])
	}
	ctx := context.Background()
	// verify the answers once (and warm the caches)
	for i, cr := range crs {
		in, err := envoy.Input(cr)
		if err != nil {
			b.Fatal(err)
		}
		d, err := e.Decide(ctx, &authz.Request{Input: in, Authorization: cr.Attributes.Request.Http.Headers["authorization"]})
		if err != nil {
			b.Fatal(err)
		}
		if d.Allowed != reqs[i].Allow || d.Reason != reqs[i].Reason {
			b.Fatalf("request %d (%+v): allowed=%v reason=%q", i, reqs[i], d.Allowed, d.Reason)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	n := 0
	for i := 0; b.Loop(); i++ {
		n++
		cr := crs[i%len(crs)]
		prep, err := envoy.Prepare(cr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Decide(ctx, &authz.Request{
			Build:         func(n *authz.Need) (ast.Object, error) { return prep.Input(n), nil },
			Authorization: cr.Attributes.Request.Http.Headers["authorization"],
		}); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b, n)
}

// BenchmarkCheckTenancySmall: the shipped policy over a small world
// (256 distinct requests, 80% allowed, decision cache on).
func BenchmarkCheckTenancySmall(b *testing.B) { benchCheck(b, "small", worldgen.Small, 0) }

// BenchmarkCheckTenancy200k: the same over 1,000 tenants, 50,000 users and
// 202,124 user grants; read against BenchmarkCheckTenancySmall.
func BenchmarkCheckTenancy200k(b *testing.B) { benchCheck(b, "200k", worldgen.Default, 0) }

// BenchmarkCheckTenancyUncachedSmall and ...200k evaluate every request
// (decision cache off): the cost of a first request.
func BenchmarkCheckTenancyUncachedSmall(b *testing.B) { benchCheck(b, "small", worldgen.Small, -1) }

// BenchmarkCheckTenancyUncached200k: see BenchmarkCheckTenancyUncachedSmall.
func BenchmarkCheckTenancyUncached200k(b *testing.B) { benchCheck(b, "200k", worldgen.Default, -1) }

func policyDir() string {
	if d := os.Getenv("GATEHOUSE_BENCH_POLICIES"); d != "" {
		return d
	}
	return "../policies"
}
