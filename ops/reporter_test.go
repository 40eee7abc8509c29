package ops_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/ops"
)

// TestReporterPostsStatus: a real sidecar's status reaches a real HTTP
// server at /v1/sidecars/{id}/status, every interval, and follows the
// tenancy revision.
func TestReporterPostsStatus(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []ops.Report
	var paths, auths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rep ops.Report
		if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&rep) != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got, paths, auths = append(got, rep), append(paths, r.URL.EscapedPath()), append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	tok := filepath.Join(t.TempDir(), "sync.token")
	if err := os.WriteFile(tok, []byte("sync-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ten := testutil.NewTenancy(7, nil)
	sc := testutil.StartSidecar(t, testutil.Options{Policies: map[string]string{"p.rego": "package envoy.authz\ndefault allow := false\n"}, Tenancy: ten})
	logger, _ := testutil.Logger(t)
	snap := ops.New(ops.Config{}, sc.Engine, logger)
	rep := ops.NewReporter(ops.ReporterConfig{ControlURLs: []string{srv.URL + "/"}, TokenFile: tok, ID: "pod a/1", Version: "v9",
		Labels: map[string]string{"zone": "z1"}, Interval: 20 * time.Millisecond}, snap.Snapshot, logger)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = rep.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	ten.Update(8, nil)
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 2 && got[len(got)-1].TenancyRevision == 8, "no report at revision 8"
	})
	mu.Lock()
	defer mu.Unlock()
	last := got[len(got)-1]
	if last.ID != "pod a/1" || last.Version != "v9" || !last.Ready || last.PolicyRevision != sc.Engine.PolicyStatus().Revision || last.Labels["zone"] != "z1" || last.SyncedAt == nil {
		t.Errorf("report %+v", last)
	}
	if paths[0] != "/v1/sidecars/pod%20a%2F1/status" || auths[0] != "Bearer sync-secret" {
		t.Errorf("posted to %s with %q", paths[0], auths[0])
	}
}

// TestReporterReportsChangesAtOnce: with an interval of an hour, a new
// tenancy revision still reaches the control endpoint within moments
// (Watch), so the fleet view sees an enforced revocation without waiting
// for the next tick. Without Watch only the first report would arrive.
func TestReporterReportsChangesAtOnce(t *testing.T) {
	t.Parallel()
	revs := make(chan uint64, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rep ops.Report
		if json.NewDecoder(r.Body).Decode(&rep) == nil {
			revs <- rep.TenancyRevision
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	ten := testutil.NewTenancy(7, nil)
	sc := testutil.StartSidecar(t, testutil.Options{Policies: map[string]string{"p.rego": "package envoy.authz\ndefault allow := false\n"}, Tenancy: ten})
	logger, _ := testutil.Logger(t)
	snap := ops.New(ops.Config{}, sc.Engine, logger)
	rep := ops.NewReporter(ops.ReporterConfig{ControlURLs: []string{srv.URL}, ID: "a", Interval: time.Hour,
		Watch: sc.Engine.WatchReadiness, MinSpacing: 10 * time.Millisecond}, snap.Snapshot, logger)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = rep.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for _, want := range []uint64{7, 8, 9} {
		if want > 7 {
			ten.Update(want, nil)
		}
		deadline := time.After(5 * time.Second)
		for got := uint64(0); got != want; {
			select {
			case got = <-revs:
			case <-deadline:
				t.Fatalf("no report of revision %d within 5s (interval 1h)", want)
			}
		}
	}
}
