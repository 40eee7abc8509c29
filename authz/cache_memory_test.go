package authz_test

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

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
// about 110 MiB. Now it stays within the default byte budget (32 MiB).
// Not parallel: it measures the heap.
func TestDecisionCacheMemoryBounded(t *testing.T) {
	e, _ := engineOn(t, map[string]string{"policy.rego": noSuchTenant}, authz.Config{}, nil)
	base := testutil.HeapInUse()
	for i := range 12_000 {
		if _, err := e.Decide(t.Context(), &authz.Request{Input: tenantInput(i, 8000)}); err != nil {
			t.Fatal(err)
		}
	}
	grown := (testutil.HeapInUse() - base) >> 20
	runtime.KeepAlive(e)
	t.Logf("heap grew by %d MiB", grown)
	if grown > 48 {
		t.Errorf("heap grew by %d MiB after 12,000 unique 8 KB checks, want at most 48 (32 MiB budget and slack)", grown)
	}
}
