package authz_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// TestEngineRevisionFollowsData: input.tenancy_revision is the revision of
// the data each evaluation reads, also as it moves back and forth (the
// term is shared per revision).
func TestEngineRevisionFollowsData(t *testing.T) {
	t.Parallel()
	ten := testutil.NewTenancy(1, map[string]any{})
	e, _ := engineOn(t, policy(`allow := {"allowed": true, "body": sprintf("%d", [input.tenancy_revision])}`), authz.Config{DecisionCacheEntries: -1}, ten)
	for _, rev := range []uint64{1, 1, 2, 7, 2, 1 << 40} {
		ten.Update(rev, map[string]any{})
		d, err := decide(t, e, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if want := ast.UIntNumberTerm(rev).String(); d.Body != want || d.TenancyRevision != rev {
			t.Fatalf("revision %d: body %q, decision revision %d", rev, d.Body, d.TenancyRevision)
		}
	}
}

// TestEngineStopsWhenContextDone: an evaluation stops soon after its
// context is done (a deadline or a cancelled request), with an error.
func TestEngineStopsWhenContextDone(t *testing.T) {
	t.Parallel()
	e, _ := engineOn(t, policy(`allow if { count([x | some x in numbers.range(1, 100000000)]) < 0 }`), authz.Config{DecisionCacheEntries: -1}, nil)
	for name, mk := range map[string]func() (context.Context, context.CancelFunc){
		"deadline": func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(t.Context(), 50*time.Millisecond)
		},
		"cancelled": func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := mk()
			defer cancel()
			start := time.Now()
			d, err := e.Decide(ctx, &authz.Request{Input: ast.NewObject()})
			if err == nil || !errors.Is(err, authz.ErrEvaluation) {
				t.Fatalf("Decide = %+v, %v; want an evaluation error", d, err)
			}
			if el := time.Since(start); el > 5*time.Second {
				t.Fatalf("stopped after %v", el)
			}
		})
	}
}

// TestEngineEvaluationAllocations bounds what one uncached evaluation
// allocates beyond the policy's own work (Decide on a small policy with the
// decision cache off): 73 allocations on main d8f3d18, 59 after dropping
// topdown's metrics, the fresh revision term and the context.AfterFunc
// cancellation, and shaping an object decision without captured variables;
// 36 with the pooled flat virtual cache (vcache.go).
func TestEngineEvaluationAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	e, _ := engineOn(t, policy(`allow := {"allowed": true, "headers": {"x-user": "u"}} if input.attributes.request.http.method == "GET"`), authz.Config{DecisionCacheEntries: -1}, nil)
	in := map[string]any{"attributes": map[string]any{"request": map[string]any{"http": map[string]any{"method": "GET"}}}}
	v, err := ast.InterfaceToValue(in)
	if err != nil {
		t.Fatal(err)
	}
	input := v.(ast.Object)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	run := func() {
		d, err := e.Decide(ctx, &authz.Request{Input: input.Copy()})
		if err != nil || !d.Allowed {
			t.Fatalf("Decide = %+v, %v", d, err)
		}
	}
	copies := testing.AllocsPerRun(100, func() { _ = input.Copy() })
	got := testing.AllocsPerRun(200, run) - copies
	t.Logf("%.0f allocations per evaluation", got)
	if got > 40 {
		t.Fatalf("%.0f allocations per uncached evaluation, want at most 40", got)
	}
}
