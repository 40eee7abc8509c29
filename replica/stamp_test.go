package replica_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
)

// Data is current as of when the control endpoint stamped it (a revision's
// commit, a heartbeat's sending), not as of when it reaches the sidecar: a
// stream held back by the network delivers old revisions late, and
// max_staleness must count from the stamp. Here, once the sidecar follows
// the stream, its clock jumps ten minutes ahead — every line from then on
// arrives "ten minutes late" — and its data never looks fresher than the
// control's stamps, whether it learns of them from heartbeats or from
// revisions.
func TestSyncedAtIsTheControlsStamp(t *testing.T) {
	t.Parallel()
	p := startPlane(t, func(c *control.Config) { c.Heartbeat = 20 * time.Millisecond })
	rev := p.batch(world)
	var late atomic.Int64
	r := startReplica(t, p, t.TempDir(), func(c *replica.SyncConfig) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(late.Load())) }
	})
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		st := r.store.State()
		return st.Revision == rev, fmt.Sprintf("cache at revision %d, want %d", st.Revision, rev)
	})
	// heartbeats move SyncedAt: the stream is open (no header to come)
	first := r.store.State().SyncedAt
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		return r.store.State().SyncedAt.After(first), "no heartbeat"
	})
	late.Store(int64(10 * time.Minute))
	check := func(what string) {
		t.Helper()
		st := r.store.State()
		if now := time.Now(); st.SyncedAt.After(now) {
			t.Fatalf("after %s: synced at %s, %v after the control's last stamp: the time the sidecar received it", what,
				st.SyncedAt.Format(time.RFC3339Nano), st.SyncedAt.Sub(now).Round(time.Second))
		}
	}
	time.Sleep(100 * time.Millisecond)
	check("heartbeats")
	rev = p.grantUser("carol")
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		st := r.store.State()
		return st.Revision == rev, fmt.Sprintf("cache at revision %d, want %d", st.Revision, rev)
	})
	check("a revision")
}
