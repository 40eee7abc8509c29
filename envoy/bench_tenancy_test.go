package envoy_test

import (
	"encoding/json"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// BenchmarkCheckGRPCTenancyConcurrent is the cold path under concurrency:
// the shipped policy over a small world in a real bbolt file, decision cache
// off (every Check evaluates), 16 callers on one gRPC connection, as Envoy's
// workers call. It is where goroutine stack growth shows: topdown's
// recursion grows the stack of whatever goroutine evaluates.
func BenchmarkCheckGRPCTenancyConcurrent(b *testing.B) {
	st := openWorld(b, worldgen.Small)
	key := testutil.RSAKey(b, "bench")
	issuers := benchIssuers(b)
	sc := testutil.StartSidecar(b, testutil.Options{
		PolicyDir: "../policies",
		Issuers:   issuers,
		Tenancy:   st.store,
		Engine:    authz.Config{DecisionCacheEntries: -1, Builtins: replica.Builtins()},
		Server:    envoy.Config{HTTPAddr: "-"},
		Logger:    discard(),
	})
	reqs := st.world.Requests(256, 80, 7)
	tokens := map[string]string{}
	crs := make([]*authv3.CheckRequest, len(reqs))
	for i, r := range reqs {
		if tokens[r.Subject] == "" {
			tokens[r.Subject] = testutil.MintJWT(b, jwt.SigningMethodRS256, key, "k1",
				testutil.Claims(benchIssuer, r.Subject, nil))
		}
		crs[i] = r.CheckRequest(tokens[r.Subject])
	}
	for i, cr := range crs { // check the answers once (and warm the token cache)
		resp, err := sc.Client.Check(b.Context(), cr)
		if err != nil {
			b.Fatal(err)
		}
		if (resp.GetOkResponse() != nil) != reqs[i].Allow {
			b.Fatalf("request %d (%+v): %v", i, reqs[i], resp)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	benchParallel(b, 16, func(i int) {
		if _, err := sc.Client.Check(b.Context(), crs[i%len(crs)]); err != nil {
			b.Error(err)
		}
	})
}

// benchParallel runs b.N calls of f spread over n goroutines.
func benchParallel(b *testing.B, n int, f func(i int)) {
	b.Helper()
	next := make(chan int, 1024)
	done := make(chan struct{})
	for range n {
		go func() {
			for i := range next {
				f(i)
			}
			done <- struct{}{}
		}()
	}
	for i := range b.N {
		next <- i
	}
	close(next)
	for range n {
		<-done
	}
}

type world struct {
	store *replica.Store
	world *worldgen.World
}

// openWorld writes spec's world into a bbolt cache file in a temporary
// folder and opens it.
func openWorld(tb testing.TB, spec worldgen.Spec) world {
	tb.Helper()
	dir := tb.TempDir()
	st, err := replica.OpenStore(replica.StoreConfig{Dir: dir}, discard())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	sb, err := st.BeginSnapshot(1, "bench", tenancy.GenesisHash("bench", 1))
	if err != nil {
		tb.Fatal(err)
	}
	w, err := worldgen.Generate(spec, func(e tenancy.Entity) error {
		doc, err := json.Marshal(e)
		if err != nil {
			return err
		}
		return sb.Put(tenancy.FeedLine{Type: tenancy.LineEntity, Collection: e.Collection(), ID: e.Key(), ModRevision: 1, Value: doc})
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := sb.Commit(time.Now()); err != nil {
		tb.Fatal(err)
	}
	return world{store: st, world: w}
}
