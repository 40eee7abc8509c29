package crashtest

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// sized returns n if not -short, else short.
func sized(n, short int) int {
	if testing.Short() {
		return short
	}
	return n
}

// TestSidecarKilledDuringSnapshot kills a sidecar with SIGKILL at random
// moments of its initial snapshot, five times, then lets it finish: it
// becomes ready and decides as the oracle does over the control's data.
func TestSidecarKilledDuringSnapshot(t *testing.T) {
	k := newKeys(t)
	c, a := worldControl(t, k)
	data := filepath.Join(t.TempDir(), "sidecar")
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	kills := sized(5, 2)
	est := 2 * time.Second // a first guess of the snapshot's length, refined below
	during := 0
	for i := 0; i < kills; i++ {
		s := startSidecar(t, k, sidecarOpts{controlURL: c.url, dataDir: data})
		started := time.Now()
		delay := time.Duration(r.Int64N(int64(est)))
		time.Sleep(delay)
		_, err := os.Stat(filepath.Join(data, "tenancy.db.snapshot"))
		inSnapshot := err == nil && !s.logged("tenancy snapshot applied")
		s.kill()
		if inSnapshot {
			during++
			continue
		}
		if s.logged("tenancy snapshot applied") {
			// too late: start the next attempt from nothing, and aim earlier
			est = max(200*time.Millisecond, time.Since(started)*2/3)
			if err := os.RemoveAll(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d of %d kills landed inside the snapshot", during, kills)
	if during == 0 {
		t.Fatalf("no kill landed inside a snapshot: the test did not test anything")
	}
	s := startSidecar(t, k, sidecarOpts{controlURL: c.url, dataDir: data})
	s.waitReady(t, 90*time.Second)
	leftovers, _ := filepath.Glob(filepath.Join(data, "tenancy.db.*"))
	for _, l := range leftovers {
		t.Errorf("file left in the data dir: %s", filepath.Base(l))
	}
	compareDecisions(t, s, a, sized(300, 100), 1)
}

// mutator makes random writes over a world: statuses, roles and grants
// toggled, user grants deleted and recreated. Some are refused (a
// reference gone meanwhile): that is fine.
type mutator struct {
	r     *rand.Rand
	users []*tenancy.User
	ugs   []*tenancy.UserGrant
	pgs   []*tenancy.ProjectGrant
	tens  []*tenancy.Tenant
}

func newMutator(t *testing.T, a *admin, seed uint64) *mutator {
	t.Helper()
	s, _ := a.state(t)
	m := &mutator{r: rand.New(rand.NewPCG(seed, 5))}
	for _, e := range s[tenancy.Users] {
		m.users = append(m.users, e.(*tenancy.User))
	}
	for _, e := range s[tenancy.UserGrants] {
		m.ugs = append(m.ugs, e.(*tenancy.UserGrant))
	}
	for _, e := range s[tenancy.ProjectGrants] {
		m.pgs = append(m.pgs, e.(*tenancy.ProjectGrant))
	}
	for _, e := range s[tenancy.Tenants] {
		if e.(*tenancy.Tenant).Parent != "" { // customers only: a provider takes its customers along
			m.tens = append(m.tens, e.(*tenancy.Tenant))
		}
	}
	return m
}

func put(e tenancy.Entity) tenancy.Op {
	b, _ := json.Marshal(e)
	return tenancy.Op{Op: tenancy.OpPut, Collection: e.Collection(), Value: b}
}

func statusOf(on bool) string {
	if on {
		return tenancy.StatusActive
	}
	return tenancy.StatusSuspended
}

// ops returns one batch of 1-5 random changes.
func (m *mutator) ops() []tenancy.Op {
	var ops []tenancy.Op
	for n := 1 + m.r.IntN(5); n > 0; n-- {
		switch m.r.IntN(6) {
		case 0:
			u := *m.users[m.r.IntN(len(m.users))]
			u.Status = statusOf(m.r.IntN(3) > 0)
			ops = append(ops, put(&u))
		case 1:
			tn := *m.tens[m.r.IntN(len(m.tens))]
			tn.Status = statusOf(m.r.IntN(4) > 0)
			ops = append(ops, put(&tn))
		case 2:
			g := *m.pgs[m.r.IntN(len(m.pgs))]
			g.Status = statusOf(m.r.IntN(3) > 0)
			ops = append(ops, put(&g))
		case 3:
			g := *m.ugs[m.r.IntN(len(m.ugs))]
			ops = append(ops, tenancy.Op{Op: tenancy.OpDelete, Collection: tenancy.UserGrants, ID: g.ID})
		default:
			g := *m.ugs[m.r.IntN(len(m.ugs))]
			g.Roles = [][]string{{"reader"}, {"reader", "writer"}, {"writer"}, {}}[m.r.IntN(4)]
			ops = append(ops, put(&g))
		}
	}
	return ops
}

// writer runs m's batches against a until stop is closed; it returns the
// number of accepted batches.
func writer(a *admin, m *mutator, stop <-chan struct{}, wg *sync.WaitGroup, accepted *atomic.Int64) {
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, status, _, err := a.tryBatch(m.ops()); err == nil && status == 200 {
				accepted.Add(1)
			}
		}
	})
}

// TestSidecarKilledWhileApplying kills a sidecar with SIGKILL while a
// writer keeps changing the control's data, several times; after the last
// restart it catches up and decides as the oracle does.
func TestSidecarKilledWhileApplying(t *testing.T) {
	k := newKeys(t)
	c, a := worldControl(t, k)
	data := filepath.Join(t.TempDir(), "sidecar")
	s := startSidecar(t, k, sidecarOpts{controlURL: c.url, dataDir: data})
	s.waitReady(t, 90*time.Second)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var accepted atomic.Int64
	writer(a, newMutator(t, a, 2), stop, &wg, &accepted)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	for i := 0; i < sized(4, 2); i++ {
		time.Sleep(time.Duration(200+r.IntN(600)) * time.Millisecond)
		before := s.status(t).Tenancy.Revision
		s.kill()
		s = startSidecar(t, k, sidecarOpts{controlURL: c.url, dataDir: data})
		s.waitReady(t, 30*time.Second)
		if after := s.status(t).Tenancy.Revision; after < before {
			t.Errorf("restart %d: the cache went back from revision %d to %d", i, before, after)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d batches accepted while the sidecar was killed", accepted.Load())
	if accepted.Load() == 0 {
		t.Fatalf("the writer made no change")
	}
	compareDecisions(t, s, a, sized(300, 100), 2)
}
