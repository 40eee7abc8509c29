package crashtest

import (
	"encoding/json"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
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
	snapshotFile := filepath.Join(data, "tenancy.db.snapshot")
	est := time.Second // a first guess of the snapshot's length, refined below
	during, attempts := 0, 0
	for ; during < kills && attempts < 4*kills; attempts++ {
		s := startSidecar(t, k, sidecarOpts{controlURL: c.url, dataDir: data})
		// the snapshot starts once the policies compiled: aim inside it
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if _, err := os.Stat(snapshotFile); err == nil || s.logged("tenancy snapshot applied") {
				break
			}
		}
		started := time.Now()
		time.Sleep(time.Duration(r.Int64N(int64(est))))
		_, err := os.Stat(snapshotFile)
		inSnapshot := err == nil && !s.logged("tenancy snapshot applied")
		s.kill()
		if inSnapshot {
			during++
			continue
		}
		if s.logged("tenancy snapshot applied") {
			// too late: start the next attempt from nothing, and aim earlier
			est = max(20*time.Millisecond, time.Since(started)/2)
			if err := os.RemoveAll(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d kills landed inside the snapshot (%d attempts)", during, attempts)
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

// TestControlKilledMidBatch kills the control endpoint with SIGKILL while
// large batches (3,000 operations) are in flight, three times, restarting it on the same data
// and address: every batch is all or nothing (and every acknowledged one
// all), the sidecar catches up and decides as the oracle does.
func TestControlKilledMidBatch(t *testing.T) {
	k := newKeys(t)
	c, a := worldControl(t, k)
	s := startSidecar(t, k, sidecarOpts{controlURL: c.url, dataDir: filepath.Join(t.TempDir(), "sidecar")})
	s.waitReady(t, 90*time.Second)
	state, _ := a.state(t)
	var home *tenancy.ProjectGrant // a customer tenant and a project granted to it
	for _, e := range state[tenancy.ProjectGrants] {
		if g := e.(*tenancy.ProjectGrant); g.Status == tenancy.StatusActive && (home == nil || g.ID < home.ID) {
			home = g
		}
	}
	n := sized(1500, 400) // users per batch, each with a user grant: 2n ops
	batchOps := func(b int) []tenancy.Op {
		ops := make([]tenancy.Op, 0, 2*n)
		for i := 0; i < n; i++ {
			u := &tenancy.User{ID: batchUser(b, i), Tenant: home.Tenant}
			ops = append(ops, put(u))
		}
		for i := 0; i < n; i++ {
			ops = append(ops, put(&tenancy.UserGrant{ID: batchGrant(b, i), User: batchUser(b, i), Project: home.Project, Tenant: home.Tenant, Roles: []string{"reader"}}))
		}
		return ops
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	var next atomic.Int64
	acked := map[int]bool{}
	var mu sync.Mutex
	started := 0
	for cycle := 0; cycle < sized(3, 1); cycle++ {
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Go(func() {
				for {
					b := int(next.Add(1) - 1)
					_, st, _, err := a.tryBatch(batchOps(b))
					if err != nil {
						return // the control endpoint is gone
					}
					if st != 200 {
						t.Errorf("batch %d refused: %d", b, st)
						return
					}
					mu.Lock()
					acked[b] = true
					mu.Unlock()
				}
			})
		}
		time.Sleep(time.Duration(300+r.IntN(1200)) * time.Millisecond)
		c.kill()
		wg.Wait()
		started = int(next.Load())
		c = startControl(t, k, c.dir, c.addr)
		a = newAdmin(c, k)
	}
	state, rev := a.state(t)
	whole, none := 0, 0
	for b := 0; b < started; b++ {
		users, grants := 0, 0
		for i := 0; i < n; i++ {
			if _, ok := state[tenancy.Users][batchUser(b, i)]; ok {
				users++
			}
			if _, ok := state[tenancy.UserGrants][batchGrant(b, i)]; ok {
				grants++
			}
		}
		switch {
		case users == n && grants == n:
			whole++
		case users == 0 && grants == 0:
			none++
			if acked[b] {
				t.Errorf("batch %d was acknowledged but is missing after the restart", b)
			}
		default:
			t.Errorf("batch %d is half applied: %d of %d users, %d of %d grants", b, users, n, grants, n)
		}
	}
	t.Logf("%d batches started: %d whole (%d acknowledged), %d absent; control at revision %d", started, whole, len(acked), none, rev)
	compareDecisions(t, s, a, sized(300, 100), 3)
}

func batchUser(b, i int) string  { return "kb" + itoa(b) + "-" + itoa(i) }
func batchGrant(b, i int) string { return "kg" + itoa(b) + "-" + itoa(i) }
func itoa(i int) string          { return strconv.Itoa(i) }

// probe is a user grant whose roles the cut test toggles, revision by
// revision, between reader and reader+writer.
type probe struct{ g *tenancy.UserGrant }

// probes picks user grants whose decision depends on their own roles only:
// allowed with reader, the tenant holding writer on the project, the only
// grant of the user on that project in that tenant.
func probes(state testutil.State, n int) []probe {
	count := map[[3]string]int{}
	for _, e := range state[tenancy.UserGrants] {
		g := e.(*tenancy.UserGrant)
		count[[3]string{g.User, g.Project, g.Tenant}]++
	}
	var ids []string
	for id := range state[tenancy.UserGrants] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []probe
	o := newOracle(state)
	for _, id := range ids {
		g := state[tenancy.UserGrants][id].(*tenancy.UserGrant)
		k := [3]string{g.User, g.Project, g.Tenant}
		if count[k] != 1 {
			continue
		}
		writer := *g
		writer.Roles = []string{"reader", "writer"}
		o.ugs[k] = []*tenancy.UserGrant{&writer}
		ok := o.decide(query{user: g.User, project: g.Project, tenant: g.Tenant, roles: []string{"writer"}}).allowed
		o.ugs[k] = []*tenancy.UserGrant{g}
		if !ok {
			continue
		}
		out = append(out, probe{g: g})
		if len(out) == n {
			break
		}
	}
	return out
}

// TestStreamCutMidRevision puts a TCP proxy between a sidecar and the
// control endpoint that cuts connections after random byte counts: the
// first snapshots, then change streams carrying large revisions (cut
// inside a revision's line). Probes running all along must see, at
// whatever revision a decision reports, exactly that revision's roles —
// never half a revision; at the end the sidecar catches up and decides as
// the oracle does.
func TestStreamCutMidRevision(t *testing.T) {
	k := newKeys(t)
	c, a := worldControl(t, k)
	state, _ := a.state(t)
	ps := probes(state, 20)
	if len(ps) < 5 {
		t.Fatalf("only %d probe grants in the world", len(ps))
	}
	var padding []*tenancy.User // users whose labels make every revision large
	for _, id := range slices.Sorted(maps.Keys(state[tenancy.Users]))[:sized(400, 150)] {
		padding = append(padding, state[tenancy.Users][id].(*tenancy.User))
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 4))
	p := startProxy(t, c.addr)
	p.setBudgets(int64(20_000+r.IntN(2_000_000)), int64(20_000+r.IntN(2_000_000)), int64(1_000+r.IntN(50_000)))
	s := startSidecar(t, k, sidecarOpts{controlURL: p.url(), dataDir: filepath.Join(t.TempDir(), "sidecar")})
	s.waitReady(t, 90*time.Second)
	snapCuts, _ := p.stats()

	// the writer: revision by revision, every probe to reader (even) or
	// reader+writer (odd), with the padding users relabelled
	var mu sync.Mutex
	phaseAt := map[uint64]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lastRev atomic.Uint64
	wg.Go(func() {
		for j := 0; ; j++ {
			select {
			case <-stop:
				return
			default:
			}
			var ops []tenancy.Op
			for _, pr := range ps {
				g := *pr.g
				g.Roles = []string{"reader"}
				if j%2 == 1 {
					g.Roles = []string{"reader", "writer"}
				}
				ops = append(ops, put(&g))
			}
			for _, u := range padding {
				v := *u
				v.Labels = map[string]string{"revision": itoa(j)}
				ops = append(ops, put(&v))
			}
			rev, st, body, err := a.tryBatch(ops)
			if err != nil || st != 200 {
				t.Errorf("toggle %d: %v %d %s", j, err, st, body)
				return
			}
			mu.Lock()
			phaseAt[rev] = j % 2
			mu.Unlock()
			lastRev.Store(rev)
			time.Sleep(10 * time.Millisecond)
		}
	})
	// the prober: every answer judged against the revision it reports
	var judged, unavailable, wrong atomic.Int64
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, pr := range ps {
				q := query{user: pr.g.User, project: pr.g.Project, tenant: pr.g.Tenant, roles: []string{"writer"}}
				got, at, err := s.tryCheck(t, q, 0)
				if err != nil {
					unavailable.Add(1)
					continue
				}
				mu.Lock()
				phase, known := phaseAt[at]
				mu.Unlock()
				if !known {
					continue // before the first toggle, or its answer is not back yet
				}
				judged.Add(1)
				if got.allowed != (phase == 1) {
					if wrong.Add(1) <= 5 {
						t.Errorf("probe %s at revision %d: %v, but that revision gives it %s", pr.g.ID, at, got, map[int]string{0: "reader", 1: "reader,writer"}[phase])
					}
				}
			}
		}
	})
	time.Sleep(500 * time.Millisecond)
	budgets := make([]int64, sized(12, 6))
	for i := range budgets {
		budgets[i] = int64(100 + r.IntN(400_000))
	}
	p.setBudgets(budgets...)
	p.cutAll()
	deadline := time.Now().Add(time.Duration(sized(8, 4)) * time.Second)
	for time.Now().Before(deadline) {
		if cuts, _ := p.stats(); cuts >= snapCuts+len(budgets) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.setBudgets()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	cuts, midLine := p.stats()
	t.Logf("%d connections cut (%d during the snapshot, %d inside a line); %d probe answers judged, %d unavailable, %d wrong; last revision %d",
		cuts, snapCuts, midLine, judged.Load(), unavailable.Load(), wrong.Load(), lastRev.Load())
	if midLine == 0 {
		t.Errorf("no cut landed inside a line: the test did not test anything")
	}
	if judged.Load() == 0 {
		t.Errorf("no probe answer could be judged")
	}
	compareDecisions(t, s, a, sized(300, 100), 4)
}

// tryCheck is check without failing: a "cannot decide" is returned.
func (s *sidecar) tryCheck(t *testing.T, q query, minRev uint64) (answer, uint64, error) {
	path := "/t/" + q.tenant + "/api/items"
	ext := map[string]string{"project": q.project}
	if len(q.roles) > 0 {
		ext["roles"] = strings.Join(q.roles, ",")
	}
	req := testutil.CheckRequest(testutil.Request{Path: path, Headers: map[string]string{
		"authorization": "Bearer " + token(t, q.user),
	}, ContextExtensions: ext})
	c, cancel := contextTimeout(t, 10*time.Second)
	defer cancel()
	resp, err := s.client.Check(c, req)
	if err != nil {
		return answer{}, 0, err
	}
	return toAnswer(t, resp), uint64(resp.GetDynamicMetadata().GetFields()["tenancy_revision"].GetNumberValue()), nil
}
