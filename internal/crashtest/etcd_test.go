package crashtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	gcontrol "github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// freePort returns a port free on 127.0.0.1 right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startReplica starts a `gatehouse control --store etcd` process.
func startReplica(t *testing.T, k *keys, endpoints []string, dataDir, address string) *control {
	t.Helper()
	// heartbeats well within the sidecar's max_staleness: an idle
	// replica's sidecar stays fresh
	cfg := filepath.Join(t.TempDir(), "control.yaml")
	if err := os.WriteFile(cfg, []byte("heartbeat: 250ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "replica "+filepath.Base(dataDir), "control", "--config", cfg, "--addr", address, "--data-dir", dataDir,
		"--admin-token-file", k.adminFile, "--sync-token-file", k.syncFile, "--log-format", "json",
		"--store", "etcd", "--etcd-endpoints", strings.Join(endpoints, ","), "--etcd-prefix", "/gatehouse-test/")
	m := p.waitLog(t, 60*time.Second, "control listening", nil)
	c := &control{proc: p, dir: dataDir, addr: addr(m["addr"])}
	c.url = "http://" + c.addr
	return c
}

// snapshotIdentity returns a replica's snapshot header: revision, epoch,
// hash.
func snapshotIdentity(t *testing.T, a *admin) (uint64, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, a.url+"/v1/sync/snapshot", nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var h tenancy.FeedLine
	if err := json.Unmarshal(line, &h); err != nil {
		t.Fatal(err)
	}
	return h.Revision, h.Epoch, h.Hash
}

// TestReplicasOverEtcd: a 3-member etcd cluster (one process per member),
// three control replicas (processes) over it and a sidecar following one
// of them (listing all three, data.control_url; max_staleness 1 s). Under
// a bounded write load spread over the replicas, the sidecar's stream is
// held back (a partition), then the etcd leader (found with the Status
// API) is killed with SIGKILL, then the replica the sidecar follows
// (SIGKILL; restarted on its file and address). Every acknowledged write
// is on every replica, the replicas agree on revisions, history identity
// and state, the state keeps every SPEC §5 invariant; all along, the
// sidecar answers from data superseded at most max_staleness before (plus
// the pipeline's slack), or with a stale deny / "cannot decide", and a
// client asking for its own latest write never gets an older answer; at
// the end it converges and decides as the oracle.
func TestReplicasOverEtcd(t *testing.T) {
	members := startEtcd(t, 3)
	var endpoints []string
	for _, m := range members {
		endpoints = append(endpoints, m.client)
	}
	k := newKeys(t)
	var reps []*control
	var admins []*admin
	for i := range 3 {
		c := startReplica(t, k, endpoints, filepath.Join(t.TempDir(), fmt.Sprintf("r%d", i)), "127.0.0.1:0")
		reps, admins = append(reps, c), append(admins, newAdmin(c, k))
	}

	// a small world, written through replica 0
	var ops []tenancy.Op
	_, err := worldgen.Generate(worldgen.Spec{Providers: 1, Tenants: 8, Users: 150, Projects: 3, GrantsPerProject: 3, UserGrants: 300, ExternalPct: 10, Seed: 11}, func(e tenancy.Entity) error {
		ops = append(ops, put(e))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fr := &freshness{maxStale: time.Second, slack: 500 * time.Millisecond}
	seedRev, st, body, err := admins[0].tryBatch(ops)
	if err != nil || st != 200 {
		t.Fatalf("seed: %v %d %s", err, st, body)
	}
	fr.ack(seedRev)
	world, _ := admins[0].state(t) // the replica written to answers after applying it
	var home string
	for id := range world[tenancy.Tenants] {
		if home == "" || id < home {
			home = id
		}
	}

	// the sidecar follows replica 1 (through a proxy that can hold its
	// stream back) and may fail over to the others (one history: no
	// re-snapshot); with max_staleness 1 s, through the outages it answers
	// from data at most that old, or not at all
	pr := startStallProxy(t, reps[1].addr)
	s := startSidecar(t, k, sidecarOpts{controlURL: strings.Join([]string{pr.url(), reps[2].url, reps[0].url}, ","),
		dataDir: filepath.Join(t.TempDir(), "sidecar"), maxStaleness: fr.maxStale})
	s.waitReady(t, 60*time.Second)

	// the load: 4 writers, one write each ~20 ms, over the replicas in turn;
	// a write that fails (a replica gone, etcd electing) goes to the next
	var (
		mu    sync.Mutex
		acked = map[string]uint64{}
		stop  = make(chan struct{})
		tries atomic.Int64
	)
	var wg sync.WaitGroup
	// two clients ask the sidecar all along, one reading its own writes
	// (at least the latest revision acknowledged)
	probes := sample(world, 40, 13)
	wg.Go(func() { fr.probe(t, s, probes, false, stop) })
	wg.Go(func() { fr.probe(t, s, probes, true, stop) })
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				id := fmt.Sprintf("ld%d-%d", w, i)
				u := &tenancy.User{ID: id, Tenant: home}
				for r := i; ; r++ {
					tries.Add(1)
					mu.Lock()
					a := admins[r%3]
					mu.Unlock()
					rev, st, body, err := a.tryBatch([]tenancy.Op{put(u)})
					if err == nil && st == 200 {
						mu.Lock()
						acked[id] = rev
						mu.Unlock()
						fr.ack(rev)
						break
					}
					if err == nil && st != http.StatusServiceUnavailable {
						t.Errorf("write %s refused: %d %s", id, st, body)
						return
					}
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	// a partition between the sidecar and its replica: the stream stays
	// open and silent while writes go on elsewhere
	pr.stall()
	t.Logf("holding back replica 1's stream to the sidecar")
	time.Sleep(2500 * time.Millisecond)
	pr.resume()
	time.Sleep(1000 * time.Millisecond)
	dead := killLeader(t, members)
	t.Logf("killed the etcd leader %s (SIGKILL)", dead.name)
	time.Sleep(1500 * time.Millisecond)
	reps[1].kill()
	t.Logf("killed replica 1 (the sidecar's)")
	time.Sleep(1500 * time.Millisecond)
	c := startReplica(t, k, endpoints, reps[1].dir, reps[1].addr)
	mu.Lock()
	reps[1], admins[1] = c, newAdmin(c, k)
	mu.Unlock()
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	t.Logf("%d writes acknowledged (%d attempts)", n, tries.Load())
	if n < 20 {
		t.Fatalf("only %d writes acknowledged", n)
	}
	t.Logf("the sidecar during the load: %d decisions (the oldest data superseded %v before), %d stale denies (429), %d stale \"cannot decide\"",
		fr.decided, fr.worst.Round(time.Millisecond), fr.staleDenied, fr.unavailable)
	for _, b := range fr.bad {
		t.Error(b)
	}
	if fr.decided < 20 {
		t.Errorf("the sidecar decided only %d times during the load", fr.decided)
	}

	// every replica reaches the same revision, history and state
	var last uint64
	for _, a := range admins {
		r, _, _ := snapshotIdentity(t, a)
		last = max(last, r)
	}
	var states []testutil.State
	var epoch, hash string
	for i, a := range admins {
		deadline := time.Now().Add(20 * time.Second)
		for {
			r, e, h := snapshotIdentity(t, a)
			if r >= last {
				if r != last || (epoch != "" && (e != epoch || h != hash)) {
					t.Fatalf("replica %d at revision %d epoch %s hash %s; replica 0 at %d %s %s", i, r, e, h, last, epoch, hash)
				}
				epoch, hash = e, h
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d stays at revision %d, not %d", i, r, last)
			}
			time.Sleep(50 * time.Millisecond)
		}
		st, rev := a.state(t)
		if rev != last {
			t.Fatalf("replica %d lists at revision %d, want %d", i, rev, last)
		}
		if v := st.Violations(); len(v) > 0 {
			t.Fatalf("replica %d breaks invariants: %s", i, strings.Join(v[:min(len(v), 5)], "; "))
		}
		for id, rev := range acked {
			if _, ok := st[tenancy.Users][id]; !ok {
				t.Fatalf("replica %d lacks user %s, acknowledged at revision %d", i, id, rev)
			}
		}
		states = append(states, st)
	}
	for i := 1; i < len(states); i++ {
		if !reflect.DeepEqual(states[0], states[i]) {
			t.Fatalf("replica %d's state differs from replica 0's", i)
		}
	}
	compareDecisions(t, s, admins[1], 150, 5)
	if !s.logged("moving to another replica of the control endpoint") {
		t.Error("the sidecar never moved to another replica while its replica was down")
	}
	if n := s.count("tenancy snapshot applied"); n != 1 {
		t.Errorf("the sidecar applied %d snapshots: failover within one history needs none after the first", n)
	}

	// each replica's file passes tenancy's full validator (indexes
	// included) and ends on the same history hash
	var heads []string
	for i, c := range reps {
		c.stop()
		db, err := bolt.Open(filepath.Join(c.dir, gcontrol.DBFile), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			heads = append(heads, tenancy.HeadHash(tx))
			return tenancy.Validate(tx)
		})
		_ = db.Close()
		if err != nil {
			t.Fatalf("replica %d's file: %v", i, err)
		}
	}
	if heads[0] != heads[1] || heads[1] != heads[2] || heads[0] != hash {
		t.Fatalf("the replicas' files end on history hashes %v, the snapshots said %s", heads, hash)
	}
}

// inProcessReplica is a control replica in this process over the cluster.
func inProcessReplica(t *testing.T, k *keys, endpoints []string, edit func(*gcontrol.Config)) (*gcontrol.Server, *admin) {
	t.Helper()
	cfg := gcontrol.Config{
		Addr: "127.0.0.1:0", DataDir: filepath.Join(t.TempDir(), "replica"),
		AdminTokenFile: k.adminFile, SyncTokenFile: k.syncFile,
		Store: gcontrol.StoreEtcd, Etcd: gcontrol.EtcdConfig{Endpoints: endpoints, Prefix: "/in-process/"},
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := gcontrol.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = srv.Close()
	})
	return srv, &admin{url: "http://" + srv.Addr().String(), token: k.admin, client: &http.Client{Timeout: 60 * time.Second}}
}

// TestEtcdReplicasWriteConcurrently: two in-process replicas take writes
// at once, each write depending on one just acknowledged by the other
// replica (whose revision the writing replica may not have applied yet): no
// valid write is refused (a write refused on a stale view is validated
// again on the head), writes racing for a revision are retried on the
// state they lost to, and the revisions are consecutive, each answered
// once, with one history on both replicas.
func TestEtcdReplicasWriteConcurrently(t *testing.T) {
	members := startEtcd(t, 1)
	k := newKeys(t)
	ra, a := inProcessReplica(t, k, []string{members[0].client}, nil)
	rb, b := inProcessReplica(t, k, []string{members[0].client}, nil)
	if ra.Epoch() != rb.Epoch() {
		t.Fatalf("replicas of one prefix with epochs %s and %s", ra.Epoch(), rb.Epoch())
	}
	var (
		mu   sync.Mutex
		revs = map[uint64]string{}
	)
	record := func(rev uint64, what string) {
		mu.Lock()
		defer mu.Unlock()
		if other, dup := revs[rev]; dup {
			t.Errorf("revision %d answered to %s and %s", rev, other, what)
		}
		revs[rev] = what
	}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			first, second := a, b
			if w%2 == 1 {
				first, second = b, a
			}
			for i := range 15 {
				tn := fmt.Sprintf("t%d-%d", w, i)
				rev, st, body, err := first.tryBatch([]tenancy.Op{put(&tenancy.Tenant{ID: tn})})
				if err != nil || st != 200 {
					t.Errorf("tenant %s: %v %d %s", tn, err, st, body)
					return
				}
				record(rev, tn)
				// at once on the other replica: valid on the head, maybe
				// not on that replica's view yet
				u := "u-" + tn
				rev, st, body, err = second.tryBatch([]tenancy.Op{put(&tenancy.User{ID: u, Tenant: tn})})
				if err != nil || st != 200 {
					t.Errorf("user %s in the tenant just created elsewhere: %v %d %s", u, err, st, body)
					return
				}
				record(rev, u)
				// and a write that is invalid on every view stays refused
				if _, st, _, _ := second.tryBatch([]tenancy.Op{put(&tenancy.User{ID: u + "x", Tenant: "missing"})}); st != http.StatusConflict {
					t.Errorf("a user of a missing tenant: %d, want 409", st)
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	n := uint64(len(revs))
	for rev := uint64(1); rev <= n; rev++ {
		if _, ok := revs[rev]; !ok {
			t.Fatalf("revision %d of %d answered to no write", rev, n)
		}
	}
	sa, reva := a.state(t)
	deadline := time.Now().Add(10 * time.Second)
	for rb.Revision() < reva && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sb, revb := b.state(t)
	if reva != n || revb != n || !reflect.DeepEqual(sa, sb) {
		t.Fatalf("replica a at %d, b at %d (want %d), states equal %v", reva, revb, n, reflect.DeepEqual(sa, sb))
	}
	ia, ea, ha := snapshotIdentity(t, a)
	ib, eb, hb := snapshotIdentity(t, b)
	if ia != ib || ea != eb || ha != hb {
		t.Fatalf("snapshot identities differ: %d %s %s / %d %s %s", ia, ea, ha, ib, eb, hb)
	}
	if v := sa.Violations(); len(v) > 0 {
		t.Fatalf("invariants: %v", v)
	}
}

// TestEtcdMutualTLS: a replica reaches an etcd member that requires client
// certificates with etcd.ca_file, cert_file and key_file, and writes
// through it; without a client certificate it does not start.
func TestEtcdMutualTLS(t *testing.T) {
	ca := testutil.NewCA(t)
	srvCert, srvKey, _ := ca.Issue(t, "etcd", true)
	cliCert, cliKey, _ := ca.Issue(t, "replica", false)
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	client := url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg := embed.NewConfig()
	cfg.Name = "tls"
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster = "tls=" + peer.String()
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CertFile, ClientCertAuth: true}
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(t.TempDir(), "etcd.log")}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	<-e.Server.ReadyNotify()

	k := newKeys(t)
	_, a := inProcessReplica(t, k, []string{client.String()}, func(c *gcontrol.Config) {
		c.Etcd.CAFile, c.Etcd.CertFile, c.Etcd.KeyFile = ca.CertFile, cliCert, cliKey
	})
	if _, st, body, err := a.tryBatch([]tenancy.Op{put(&tenancy.Tenant{ID: "over-tls"})}); err != nil || st != 200 {
		t.Fatalf("write over mutual TLS: %v %d %s", err, st, body)
	}
	_, err = gcontrol.New(gcontrol.Config{
		DataDir: filepath.Join(t.TempDir(), "nocert"), AdminTokenFile: k.adminFile,
		Store: gcontrol.StoreEtcd, Etcd: gcontrol.EtcdConfig{Endpoints: []string{client.String()}, CAFile: ca.CertFile, Prefix: "/in-process/"},
	}, nil)
	if err == nil {
		t.Fatal("a replica without a client certificate started")
	}
}

// count returns how many log lines carry msg.
func (p *proc) count(msg string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			n++
		}
	}
	return n
}
