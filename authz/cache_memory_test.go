package authz_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// noSuchTenant denies, quoting the tenant segment of the path: deny
// bodies echo client strings, and the segment is part of the cache key.
const noSuchTenant = `package envoy.authz
allow := {"allowed": false, "http_status": 403, "body": concat("", ["no such tenant: ", input.parsed_path[1]])}
`

// tenantInput is an input whose path carries a segment of n bytes unique to i.
func tenantInput(i, n int) ast.Object {
	return ast.NewObject(ast.Item(ast.StringTerm("parsed_path"), ast.ArrayTerm(
		ast.StringTerm("t"), ast.StringTerm(fmt.Sprintf("%0*d", n, i)), ast.StringTerm("items"))))
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestDecisionCacheBoundedByBytes: checks with unique 8 KB tenant segments
// (each its own cache key and deny body) never take the decision cache's
// accounted size over its byte budget, while repeated requests are still
// answered from it.
func TestDecisionCacheBoundedByBytes(t *testing.T) {
	t.Parallel()
	const budget = 1 << 20
	reg := prometheus.NewRegistry()
	e, _ := engineOn(t, map[string]string{"policy.rego": noSuchTenant}, authz.Config{DecisionCacheBytes: budget, Registerer: reg}, nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < 2000; i += 4 {
				d, err := e.Decide(t.Context(), &authz.Request{Input: tenantInput(i, 8000)})
				if err != nil || d.Status() != 403 || len(d.Body) < 8000 {
					t.Errorf("Decide: %v, %v", d, err)
					return
				}
				if got := e.DecisionCacheBytes(); got > budget {
					t.Errorf("decision cache holds %d accounted bytes, budget %d", got, budget)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := e.DecisionCacheBytes(); got < budget/8 {
		t.Errorf("decision cache holds %d bytes: it is not used", got)
	}
	if got := testutil.MetricValue(t, reg, "gatehouse_decision_cache_bytes", nil); got > budget || got != float64(e.DecisionCacheBytes()) {
		t.Errorf("gatehouse_decision_cache_bytes = %v, budget %d", got, budget)
	}
	hits := func() float64 {
		return testutil.MetricValue(t, reg, "gatehouse_decision_cache_total", map[string]string{"result": "hit"})
	}
	if _, err := e.Decide(t.Context(), &authz.Request{Input: tenantInput(1, 8000)}); err != nil {
		t.Fatal(err)
	}
	before := hits()
	if _, err := e.Decide(t.Context(), &authz.Request{Input: tenantInput(1, 8000)}); err != nil {
		t.Fatal(err)
	}
	if hits() != before+1 {
		t.Errorf("a repeated request is not a cache hit (hits %v → %v)", before, hits())
	}
}

// TestDecisionCacheMemoryBounded: 12,000 checks with unique 8 KB tenant
// segments, default configuration. The cache was bounded by entries only
// (10,000 of up to 8 KiB keys and bodies echoing them): the heap grew by
// about 110 MiB. Now it stays within the default byte budget (16 MiB).
// Not parallel: it measures the heap.
func TestDecisionCacheMemoryBounded(t *testing.T) {
	e, _ := engineOn(t, map[string]string{"policy.rego": noSuchTenant}, authz.Config{}, nil)
	base := heapInUse()
	for i := range 12_000 {
		if _, err := e.Decide(t.Context(), &authz.Request{Input: tenantInput(i, 8000)}); err != nil {
			t.Fatal(err)
		}
	}
	grown := (heapInUse() - base) >> 20
	runtime.KeepAlive(e)
	t.Logf("heap grew by %d MiB", grown)
	if grown > 48 {
		t.Errorf("heap grew by %d MiB after 12,000 unique 8 KB checks, want at most 48 (the default budget, 16 MiB, and slack)", grown)
	}
}

// TestTokenCacheMemoryBounded: 1,000 valid ES256 tokens carrying 24 KB of
// claims each, default configuration. The verified-token cache was bounded
// by entries only (10,000): the heap grew by about 110 MiB. Now it stays
// within the default byte budget (16 MiB). Not parallel: it measures the
// heap.
func TestTokenCacheMemoryBounded(t *testing.T) {
	key := testutil.ECKey(t, "tokens-memory")
	dir := testutil.PolicyDir(t, map[string]string{"ec.pem": string(testutil.PublicKeyPEM(t, &key.PublicKey))})
	v, err := authz.NewVerifier(authz.VerifierConfig{Issuers: []authz.IssuerConfig{
		{Issuer: "https://idp.example.com/", Audiences: []string{"api"}, PublicKeyFile: dir + "/ec.pem"},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tokens := make([]string, 1000)
	for i := range tokens {
		roles := make([]string, 1000)
		for j := range roles {
			roles[j] = fmt.Sprintf("role-%08d-%04d", i, j)
		}
		tokens[i] = testutil.MintJWT(t, jwt.SigningMethodES256, key, "", testutil.Claims("https://idp.example.com/", fmt.Sprint("user-", i), map[string]any{"roles": roles}))
	}
	base := heapInUse()
	for i, raw := range tokens {
		if tok := v.Verify(t.Context(), raw); !tok.Valid {
			t.Fatalf("token %d: %s", i, tok.Error)
		}
	}
	grown := (heapInUse() - base) >> 20
	runtime.KeepAlive(v)
	runtime.KeepAlive(tokens)
	t.Logf("heap grew by %d MiB (%d bytes of tokens)", grown, len(tokens)*len(tokens[0]))
	if grown > 48 {
		t.Errorf("heap grew by %d MiB after 1,000 large tokens, want at most 48 (the default budget, 16 MiB, and slack)", grown)
	}
	if !strings.HasPrefix(tokens[0], "ey") {
		t.Fatal("not a JWT")
	}
}

// TestDecisionCacheAdmitsRepeatedQuestions: once the cache holds a quarter
// of its bound, a first-seen question is answered but not stored. A stream
// of distinct questions (the cold workload: many users, each asking once)
// leaves the cache at a quarter of its bound instead of
// filling it (and evicting what is asked again), while a question asked
// again is stored from its second answer on and then hit. Variants: the
// bound in entries, in bytes.
func TestDecisionCacheAdmitsRepeatedQuestions(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]authz.Config{
		"entries": {DecisionCacheEntries: 1000},
		"bytes":   {DecisionCacheEntries: 1 << 20, DecisionCacheBytes: 1 << 20},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			cfg.Registerer = reg
			e, _ := engineOn(t, map[string]string{"policy.rego": noSuchTenant}, cfg, nil)
			ask := func(i int) {
				t.Helper()
				if d, err := e.Decide(t.Context(), &authz.Request{Input: tenantInput(i, 500)}); err != nil || d.Status() != 403 {
					t.Fatalf("Decide: %v, %v", d, err)
				}
			}
			ask(0)
			one := e.DecisionCacheBytes() // every entry has the same size
			full := one * int64(cfg.DecisionCacheEntries)
			if cfg.DecisionCacheBytes > 0 {
				full = cfg.DecisionCacheBytes
			}
			for i := 1; i < 20_000; i++ {
				ask(i)
			}
			// The old cache held 1.5 generations on average: 75% of it.
			if got := e.DecisionCacheBytes(); got > full*30/100 || got < full*18/100 {
				t.Errorf("after 20,000 distinct questions the cache holds %d bytes of %d, want about a quarter", got, full)
			}
			hits := func() float64 {
				return testutil.MetricValue(t, reg, "gatehouse_decision_cache_total", map[string]string{"result": "hit"})
			}
			before := hits()
			ask(1_000_000) // first seen: answered, not stored
			ask(1_000_000) // asked again: stored
			if hits() != before {
				t.Fatalf("hits %v → %v: a question asked twice was answered from the cache", before, hits())
			}
			ask(1_000_000)
			if hits() != before+1 {
				t.Errorf("a question asked a third time is not a cache hit (hits %v → %v)", before, hits())
			}
		})
	}
}
