package envoy_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/storage"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// gatedTenancy blocks every read of data.tenancy while closed, holding the
// evaluation (and its worker) that makes it.
type gatedTenancy struct {
	*testutil.Tenancy
	closed  atomic.Bool
	open    chan struct{}
	blocked chan struct{} // receives once per blocked read
}

func newGatedTenancy() *gatedTenancy {
	g := &gatedTenancy{Tenancy: testutil.NewTenancy(1, map[string]any{"gate": true}), open: make(chan struct{}), blocked: make(chan struct{}, 16)}
	g.closed.Store(true)
	return g
}

func (g *gatedTenancy) Read(ctx context.Context, txn storage.Transaction, path storage.Path) (any, error) {
	if g.closed.Load() {
		g.blocked <- struct{}{}
		select {
		case <-g.open:
		case <-ctx.Done():
		}
	}
	return g.Tenancy.Read(ctx, txn, path)
}

func (g *gatedTenancy) release() {
	g.closed.Store(false)
	close(g.open)
}

// gated allows once data.tenancy.gate is read.
const gated = `package envoy.authz
allow if data.tenancy.gate == true
`

// TestCheckOverloadedIsADeny: with every evaluation worker busy, or the
// bytes in flight at their budget, a further check waits (at most its
// deadline, at most 1s) and is then denied 429 overloaded with
// retry-after: 1 over both transports: never an error status, which Envoy's
// failure_mode_allow would turn into an allow. Once the held checks finish,
// checks are evaluated again.
func TestCheckOverloadedIsADeny(t *testing.T) {
	t.Parallel()
	t.Run("workers", func(t *testing.T) {
		t.Parallel()
		g := newGatedTenancy()
		sc := startPolicy(t, gated, testutil.Options{Tenancy: g, Engine: authz.Config{DecisionCacheEntries: -1},
			Server: envoy.Config{MaxInflight: 1}})
		held := make(chan *authv3.CheckResponse, 1)
		go func() {
			resp, _ := sc.Check(context.Background(), testutil.Request{Path: "/held"})
			held <- resp
		}()
		<-g.blocked // the only worker is busy
		start := time.Now()
		resp, err := sc.Check(t.Context(), testutil.Request{Path: "/next"})
		wantGRPCDeny(t, resp, err, http.StatusTooManyRequests, envoy.ReasonOverloaded)
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("answered after %v", el)
		}
		h := sc.CheckHTTP(t, t.Context(), testutil.Request{Path: "/next"})
		if h.Status != http.StatusTooManyRequests || h.Header.Get("retry-after") != "1" || !strings.Contains(h.Body, `"reason":"overloaded"`) {
			t.Errorf("HTTP %d %v %q, want 429 overloaded", h.Status, h.Header, h.Body)
		}
		g.release()
		if r := <-held; r.GetOkResponse() == nil {
			t.Fatalf("held check: %v, want allowed", r)
		}
		if resp, err := sc.Check(t.Context(), testutil.Request{Path: "/after"}); err != nil || resp.GetOkResponse() == nil {
			t.Fatalf("after the release: %v, %v; want allowed", resp, err)
		}
	})
	t.Run("bytes in flight", func(t *testing.T) {
		t.Parallel()
		g := newGatedTenancy()
		const limit = 40 << 10
		sc := startPolicy(t, gated, testutil.Options{Tenancy: g, Engine: authz.Config{DecisionCacheEntries: -1},
			Server: envoy.Config{MaxRequestBytes: limit, MaxInflightBytes: limit, MaxInflight: 4}})
		big := testutil.Request{Path: "/big", Headers: map[string]string{"x-pad": strings.Repeat("p", 30<<10)}}
		held := make(chan *authv3.CheckResponse, 1)
		go func() {
			resp, _ := sc.Check(context.Background(), big)
			held <- resp
		}()
		<-g.blocked // 30 KB of the 40 KB budget are held; workers are free
		resp, err := sc.Check(t.Context(), big)
		wantGRPCDeny(t, resp, err, http.StatusTooManyRequests, envoy.ReasonOverloaded)
		g.release()
		if r := <-held; r.GetOkResponse() == nil {
			t.Fatalf("held check: %v, want allowed", r)
		}
		if resp, err := sc.Check(t.Context(), big); err != nil || resp.GetOkResponse() == nil {
			t.Fatalf("after the release: %v, %v; want allowed", resp, err)
		}
	})
}

// TestCheckDeniesBeforeTheCallersDeadline: a check that would wait past its
// gRPC deadline (Envoy's ext_authz timeout) — for its minimum revision, for
// a worker — is denied a quarter of the time before the deadline, not left
// to time out: a timeout is a failure, which failure_mode_allow turns into
// an allow.
func TestCheckDeniesBeforeTheCallersDeadline(t *testing.T) {
	t.Parallel()
	const timeout = 800 * time.Millisecond // less than the 1s queue bound
	g := newGatedTenancy()
	sc := startPolicy(t, gated, testutil.Options{Tenancy: g, Engine: authz.Config{DecisionCacheEntries: -1, MinRevisionWait: time.Minute},
		Server: envoy.Config{MaxInflight: 1}})
	t.Run("minimum revision", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		resp, err := sc.Check(ctx, testutil.Request{Headers: map[string]string{"x-gatehouse-min-revision": "99"}})
		wantGRPCDeny(t, resp, err, http.StatusTooManyRequests, envoy.ReasonStale)
	})
	t.Run("busy workers", func(t *testing.T) {
		held := make(chan *authv3.CheckResponse, 1)
		go func() {
			resp, _ := sc.Check(context.Background(), testutil.Request{Path: "/held"})
			held <- resp
		}()
		<-g.blocked
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		resp, err := sc.Check(ctx, testutil.Request{Path: "/next"})
		wantGRPCDeny(t, resp, err, http.StatusTooManyRequests, envoy.ReasonOverloaded)
		g.release()
		<-held
	})
}
