package envoy_test

import (
	"context"
	"testing"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/token"
)

// TestUncachedCheckAllocations bounds the allocations of one in-process
// check with the decision cache off (BenchmarkCheckSimplePolicy/evaluated:
// the whole input, a verified token from the token cache, the decision,
// the CheckResponse): 367 on main d8f3d18, 182 after building the input in
// blocks and evaluating without topdown's per-query extras, 180 with the
// response's messages in blocks. The server's own path builds only what
// the policy reads, so it allocates less still.
func TestUncachedCheckAllocations(t *testing.T) { checkAllocations(t, -1, 185) }

// TestCachedCheckAllocations bounds the same check answered from the
// decision cache (BenchmarkCheckSimplePolicy/cached): 107 at e2d9748, 95
// with the cache key appended in place instead of a string per value.
func TestCachedCheckAllocations(t *testing.T) { checkAllocations(t, 0, 100) }

// checkAllocations measures one in-process check with the decision cache
// at cacheEntries (-1: off) and fails above bound.
func checkAllocations(t *testing.T, cacheEntries int, bound float64) {
	if raceEnabled || testing.Short() {
		t.Skip("allocation counts")
	}
	logger := discard()
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: benchIssuers(t)}, logger)
	if err != nil {
		t.Fatal(err)
	}
	e := policyEngine(t, authz.Config{DecisionCacheEntries: cacheEntries}, v, benchPolicy)
	req := benchRequest(t)
	headers := req.GetAttributes().GetRequest().GetHttp().GetHeaders()
	var memo envoy.InputMemo // as a Server renders inputs
	check := func() {
		prep, err := memo.Prepare(req)
		if err != nil {
			t.Fatal(err)
		}
		in := prep.Input(authz.NeedAll)
		d, err := e.Decide(context.Background(), &authz.Request{Input: in, Authorization: headers["authorization"]})
		if err != nil {
			t.Fatal(err)
		}
		if envoy.Response(d, headers).GetOkResponse() == nil {
			t.Fatal("the request is not allowed")
		}
	}
	check()
	got := testing.AllocsPerRun(200, check)
	t.Logf("%.0f allocations per check (decision cache entries %d)", got, cacheEntries)
	if got > bound {
		t.Fatalf("%.0f allocations per check (decision cache entries %d), want at most %.0f", got, cacheEntries, bound)
	}
}
