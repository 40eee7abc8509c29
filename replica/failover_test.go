package replica_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
)

// standbyPlane is a plane on cfg's data directory behind its own address,
// down until up() (another plane may hold the file meanwhile).
func standbyPlane(t *testing.T, cfg control.Config) *plane {
	t.Helper()
	p := &plane{t: t, cfg: cfg}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := p.cur.Load()
		if s == nil {
			http.Error(w, `{"error":"the control endpoint is down","code":"down"}`, http.StatusServiceUnavailable)
			return
		}
		s.Handler().ServeHTTP(w, r)
	}))
	p.url = ts.URL
	t.Cleanup(ts.Close)
	t.Cleanup(p.down)
	return p
}

// A sidecar lists two replicas of the control endpoint. The one it follows
// goes down; the other serves the same history (here: the same data file,
// reopened behind another address, and written to there): the sidecar
// moves to it and follows on from its revision, without a snapshot. Then
// the first comes back and the second goes down: it moves back. Decisions
// never stop meanwhile (served from the cache), and follow every write.
func TestFailoverSameHistoryNoSnapshot(t *testing.T) {
	t.Parallel()
	a := startPlane(t, nil)
	a.batch(world)
	b := standbyPlane(t, a.cfg)
	r := startReplica(t, a, t.TempDir(), func(c *replica.SyncConfig) {
		c.ControlURL = a.url + ", " + b.url + "/"
		c.IdleTimeout = time.Second
	})
	rev := a.grantUser("carol")
	r.expect(rev, map[string]bool{"bob": true, "carol": true})
	testutil.Eventually(t, 5*time.Second, func() (bool, string) { // counted once the snapshot call returns
		got := r.snapshots()
		return got == 1, fmt.Sprintf("%v snapshots to start, want 1", got)
	})

	a.down()
	b.up()
	b.do("DELETE", "/v1/user_grants/ug-bob", "")
	rev = b.grantUser("dave")
	r.expect(rev, map[string]bool{"bob": false, "carol": true, "dave": true})

	b.down()
	a.up()
	rev = a.grantUser("erin")
	r.expect(rev, map[string]bool{"bob": false, "dave": true, "erin": true})
	if got := r.snapshots(); got != 1 {
		t.Fatalf("%v snapshots after failing over twice within one history, want 1 (no re-snapshot)", got)
	}
}

// A replica whose history is another one (another epoch: a control
// endpoint with another data file) makes the sidecar re-snapshot from it,
// never splice: the grants only the first history made are gone.
func TestFailoverAnotherHistorySnapshots(t *testing.T) {
	t.Parallel()
	a := startPlane(t, nil)
	a.batch(world)
	other := startPlane(t, nil)
	other.batch(world)
	other.do("DELETE", "/v1/user_grants/ug-bob", "")
	other.grantUser("dave")
	for i := range 5 { // further ahead than the first history: only the identity differs
		other.filler(i)
	}
	r := startReplica(t, a, t.TempDir(), func(c *replica.SyncConfig) {
		c.ControlURL = a.url + "," + other.url
		c.IdleTimeout = time.Second
	})
	rev := a.grantUser("carol")
	r.expect(rev, map[string]bool{"bob": true, "carol": true})

	a.down()
	rev = other.grantUser("erin")
	r.expect(rev, map[string]bool{"bob": false, "carol": false, "dave": true, "erin": true})
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		got := r.snapshots()
		return got == 2, fmt.Sprintf("%v snapshots, want 2 (one per history)", got)
	})
	if r.store.Epoch() != other.cur.Load().Epoch() {
		t.Fatalf("cache epoch %s, want the second history's %s", r.store.Epoch(), other.cur.Load().Epoch())
	}
}

// A replica that has not reached the cache's revision (a replica lagging
// behind: here, the same history's file copied before the last writes)
// is not a reason to re-snapshot while another replica has: the sidecar
// moves on and follows the one that is current.
func TestFailoverSkipsLaggingReplica(t *testing.T) {
	t.Parallel()
	a := startPlane(t, nil)
	a.batch(world)
	lagDir := filepath.Join(t.TempDir(), "control")
	cfg := a.cfg
	cfg.DataDir = lagDir
	a.down()
	testutil.WriteFile(t, filepath.Join(lagDir, "keep"), "")
	copyFile(t, filepath.Join(lagDir, control.DBFile), a.file())
	a.up()
	lag := standbyPlane(t, cfg)
	lag.up() // at revision 1, the same epoch
	rev := a.grantUser("carol")

	// the lagging replica first in the list, the cache ahead of it
	r := startReplica(t, a, t.TempDir(), func(c *replica.SyncConfig) {
		c.ControlURL = a.url
		c.IdleTimeout = time.Second
	})
	r.expect(rev, map[string]bool{"carol": true})
	r.stop()
	r2 := startReplica(t, a, r.dir, func(c *replica.SyncConfig) {
		c.ControlURL = lag.url + "," + a.url
		c.IdleTimeout = time.Second
	})
	rev = a.grantUser("dave")
	r2.expect(rev, map[string]bool{"carol": true, "dave": true})
	if got := r2.snapshots(); got != 0 {
		t.Fatalf("%v snapshots: the lagging replica made the sidecar re-snapshot", got)
	}
}

// A replica that accepts connections but never answers is given up after
// the idle timeout: the sidecar moves to the next one.
func TestFailoverFromSilentReplica(t *testing.T) {
	t.Parallel()
	a := startPlane(t, nil)
	rev := a.batch(world)
	release := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(silent.Close)
	t.Cleanup(func() { close(release) })
	start := time.Now()
	r := startReplica(t, a, t.TempDir(), func(c *replica.SyncConfig) {
		c.ControlURL = silent.URL + "," + a.url
		c.IdleTimeout = 300 * time.Millisecond
	})
	r.expect(rev, map[string]bool{"bob": true})
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("ready after %v behind a silent replica", took)
	}
}

// When the only replica that answers is behind the cache (the others are
// down), the sidecar does not wait for the others forever: after trying
// each, it re-snapshots from the one that answers (a restored history is
// never left unfollowed).
func TestFailoverBehindWithOthersDown(t *testing.T) {
	t.Parallel()
	a := startPlane(t, nil)
	a.batch(world)
	backup := filepath.Join(t.TempDir(), "control.db.backup")
	a.down()
	copyFile(t, backup, a.file())
	a.up()
	down := standbyPlane(t, a.cfg) // never up
	r := startReplica(t, a, t.TempDir(), func(c *replica.SyncConfig) {
		c.ControlURL = a.url + "," + down.url
		c.IdleTimeout = time.Second
	})
	a.grantUser("carol")
	var rev uint64
	for i := range 5 {
		rev = a.filler(i)
	}
	r.expect(rev, map[string]bool{"carol": true})

	a.down()
	copyFile(t, a.file(), backup) // restored: far behind the cache (409 ahead)
	a.up()
	rev = a.grantUser("dave")
	r.expect(rev, map[string]bool{"carol": false, "dave": true})
}
