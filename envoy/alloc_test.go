package envoy_test

import (
	"context"
	"testing"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// TestUncachedCheckAllocations bounds the allocations of one in-process
// check with the decision cache off (BenchmarkCheckSimplePolicy/evaluated:
// the whole input, a verified token from the token cache, the decision,
// the CheckResponse): 367 on main d8f3d18, 182 after building the input in
// blocks and evaluating without topdown's per-query extras. The server's
// own path builds only what the policy reads, so it allocates less still.
func TestUncachedCheckAllocations(t *testing.T) {
	if raceEnabled || testing.Short() {
		t.Skip("allocation counts")
	}
	logger := discard()
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: benchIssuers(t)}, logger)
	if err != nil {
		t.Fatal(err)
	}
	e := authz.New(authz.Config{DecisionCacheEntries: -1}, v, nil, logger)
	src, err := bundle.NewDirSource(bundle.PolicyConfig{Dir: testutil.PolicyDir(t, map[string]string{"policy.rego": benchPolicy})}, e, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	req := benchRequest(t)
	headers := req.GetAttributes().GetRequest().GetHttp().GetHeaders()
	check := func() {
		in, err := envoy.Input(req)
		if err != nil {
			t.Fatal(err)
		}
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
	t.Logf("%.0f allocations per uncached check", got)
	if got > 190 {
		t.Fatalf("%.0f allocations per uncached check, want at most 190 (main: 367)", got)
	}
}
