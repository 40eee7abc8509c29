package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// startEtcdMember starts a one-member etcd cluster in this process and
// returns its client URL.
func startEtcdMember(t testing.TB) string {
	t.Helper()
	u, _ := startEtcd(t)
	return u
}

// startEtcd is startEtcdMember with a function that stops the member.
func startEtcd(t testing.TB) (string, func()) {
	t.Helper()
	port := func() url.URL {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return url.URL{Scheme: "http", Host: l.Addr().String()}
	}
	peer, client := port(), port()
	cfg := embed.NewConfig()
	cfg.Name = "solo"
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster = "solo=" + peer.String()
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(t.TempDir(), "etcd.log")}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(e.Close) }
	t.Cleanup(stop)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}
	return client.String(), stop
}

func newEtcdReplica(t testing.TB, endpoint string, edit ...func(*Config)) *Server {
	t.Helper()
	s, err := openEtcdReplica(t, endpoint, edit...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openEtcdReplica(t testing.TB, endpoint string, edit ...func(*Config)) (*Server, error) {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte("admin-token-for-etcd"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"), AdminTokenFile: tok,
		Store: StoreEtcd, Etcd: EtcdConfig{Endpoints: []string{endpoint}, Prefix: "/t/"}}
	for _, f := range edit {
		f(&cfg)
	}
	s, err := New(cfg, nil)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, nil
}

// TestEtcdStaleViewIsRetried: replica b applies the log late (a hook
// delays its follower), so it validates writes on a stale view: a write
// valid only on the head (it needs what replica a just wrote) is validated
// again after catching up instead of being refused, a write valid on both
// loses the race for its revision and is retried on the head, and a write
// invalid on the head stays refused. Without the catch-up on refusal, the
// first answers 409.
func TestEtcdStaleViewIsRetried(t *testing.T) {
	ep := startEtcdMember(t)
	a, b := newEtcdReplica(t, ep), newEtcdReplica(t, ep)
	delay := func() { time.Sleep(300 * time.Millisecond) }
	b.store.(*etcdStore).beforeApply.Store(&delay)
	admin := principal{role: roleAdmin}
	cases := []struct {
		name    string
		prepare []tenancy.Op // on a, just before
		write   []tenancy.Op // on b
		refused bool
	}{
		{"needs the head", []tenancy.Op{putOp("tenants", `{"id":"x1"}`)}, []tenancy.Op{putOp("users", `{"id":"u1","tenant":"x1"}`)}, false},
		{"valid on both views", []tenancy.Op{putOp("tenants", `{"id":"x2"}`)}, []tenancy.Op{putOp("tenants", `{"id":"y2"}`)}, false},
		{"invalid on the head", []tenancy.Op{putOp("tenants", `{"id":"x3"}`)}, []tenancy.Op{putOp("users", `{"id":"u3","tenant":"nowhere"}`)}, true},
		{"made invalid by the head", []tenancy.Op{{Op: tenancy.OpDelete, Collection: "tenants", ID: "y2"}}, []tenancy.Op{putOp("users", `{"id":"u4","tenant":"y2"}`)}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := b.waitApplied(context.Background(), a.Revision()); err != nil {
				t.Fatal(err)
			}
			ra, err := a.commit(admin, c.prepare)
			if err != nil {
				t.Fatal(err)
			}
			if b.Revision() >= ra.revision {
				t.Fatalf("b is not behind (at %d, a at %d)", b.Revision(), ra.revision)
			}
			rb, err := b.commit(admin, c.write)
			var te *tenancy.Error
			switch {
			case c.refused && (err == nil || !errors.As(err, &te) || te.Status != 409):
				t.Fatalf("got revision %d, %v; want a 409 refusal", rb.revision, err)
			case !c.refused && err != nil:
				t.Fatalf("refused on a stale view: %v", err)
			case !c.refused && rb.revision != ra.revision+1:
				t.Fatalf("revision %d, want %d (after a's)", rb.revision, ra.revision+1)
			}
		})
	}
	if err := b.waitApplied(context.Background(), a.Revision()); err != nil {
		t.Fatal(err)
	}
	checkChain(t, a)
	checkChain(t, b)
	if a.Epoch() != b.Epoch() {
		t.Fatalf("epochs %s, %s", a.Epoch(), b.Epoch())
	}
}

// TestEtcdLargeRevisionIsStaged: a revision larger than one etcd
// transaction (more parts than it may carry) is staged and committed whole,
// with the writes of its group around it; another replica applies it with
// the same hash chain. (A single change larger than an etcd request, which
// would be refused with 413, cannot be written: entities are bounded.)
func TestEtcdLargeRevisionIsStaged(t *testing.T) {
	defer func(d time.Duration) { etcdMaintainEvery = d }(etcdMaintainEvery)
	etcdMaintainEvery = 10 * time.Millisecond
	ep := startEtcdMember(t)
	// small parts: 2,000 users make ~250 parts, more than one etcd
	// transaction may carry (the same path as ~1.4 MiB of changes)
	keep := func(c *Config) { c.Etcd.LogRetention, c.FeedPartBytes = 2, 1024 }
	s, other := newEtcdReplica(t, ep, keep), newEtcdReplica(t, ep, keep)
	ops := []tenancy.Op{putOp("tenants", `{"id":"big"}`)}
	for i := range 2000 {
		v, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("user-with-a-long-id-%06d", i), "tenant": "big", "labels": map[string]string{"team": "a-rather-long-label-value-to-grow-the-record"}})
		ops = append(ops, tenancy.Op{Op: tenancy.OpPut, Collection: "users", Value: v})
	}
	group := []*pending{newPending(putOp("tenants", `{"id":"small"}`)), newPending(ops...), newPending(putOp("tenants", `{"id":"small2"}`))}
	s.store.commitGroup(group)
	for i, w := range group {
		if w.err != nil || w.res.revision != uint64(i+1) {
			t.Fatalf("write %d: revision %d, %v", i, w.res.revision, w.err)
		}
	}
	if len(group[1].res.changes) != 2001 {
		t.Fatalf("the big revision has %d changes", len(group[1].res.changes))
	}
	if err := other.waitApplied(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	checkChain(t, s)
	checkChain(t, other)
	if headHash(t, s) != headHash(t, other) || !reflect.DeepEqual(fileState(t, s), fileState(t, other)) {
		t.Fatal("the replicas differ after a staged revision")
	}
	// compaction past the staged revision deletes its parts
	es := s.store.(*etcdStore)
	stagedKeys := func() int64 {
		resp, err := es.cli.Get(context.Background(), es.prefix+"stage", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if stagedKeys() == 0 {
		t.Fatal("no staged parts in etcd")
	}
	for i := range 4 {
		if _, err := s.commit(principal{role: roleAdmin}, []tenancy.Op{putOp("tenants", fmt.Sprintf(`{"id":"after%d"}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for stagedKeys() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d staged keys left after compaction", stagedKeys())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEtcdBundles: a bundle uploaded to one replica is served by it at
// once and by every other replica once applied, with the same ETag; a
// bundle larger than one etcd request is refused with 413.
func TestEtcdBundles(t *testing.T) {
	ep := startEtcdMember(t)
	a, b := newEtcdReplica(t, ep), newEtcdReplica(t, ep)
	do := func(s *Server, method, path string, body []byte) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer admin-token-for-etcd")
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		return rec
	}
	bundle := append([]byte{0x1f, 0x8b}, bytes.Repeat([]byte("policy"), 1000)...)
	put := do(a, "PUT", "/v1/bundles/main", bundle)
	if put.Code != 200 {
		t.Fatalf("PUT: %d %s", put.Code, put.Body)
	}
	if got := do(a, "GET", "/v1/bundles/main", nil); got.Code != 200 || !bytes.Equal(got.Body.Bytes(), bundle) {
		t.Fatalf("GET on the replica written to: %d", got.Code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := do(b, "GET", "/v1/bundles/main", nil)
		if got.Code == 200 {
			if !bytes.Equal(got.Body.Bytes(), bundle) || got.Header().Get("ETag") != put.Header().Get("ETag") {
				t.Fatalf("the other replica serves another bundle (ETag %s, want %s)", got.Header().Get("ETag"), put.Header().Get("ETag"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the other replica never served the bundle: %d", got.Code)
		}
		time.Sleep(10 * time.Millisecond)
	}
	big := append([]byte{0x1f, 0x8b}, bytes.Repeat([]byte{'x'}, 2<<20)...)
	if r := do(a, "PUT", "/v1/bundles/big", big); r.Code != 413 {
		t.Fatalf("a 2 MiB bundle: %d %s, want 413", r.Code, r.Body)
	}
}

// TestEtcdLogCompaction: the log keeps etcd.log_retention revisions, never
// drops one the slowest live replica has not applied, and a replica whose
// file is behind the log's start refuses to start with a clear message.
// Not parallel: it shortens the maintenance period.
func TestEtcdLogCompaction(t *testing.T) {
	defer func(d time.Duration) { etcdMaintainEvery = d }(etcdMaintainEvery)
	etcdMaintainEvery = 10 * time.Millisecond
	ep := startEtcdMember(t)
	keep := func(c *Config) { c.Etcd.LogRetention = 5 }
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	aAddr := l.Addr().String()
	_ = l.Close()
	a := newEtcdReplica(t, ep, keep, func(c *Config) { c.Addr, c.Etcd.AdvertiseURL = aAddr, "http://"+aAddr })
	b := newEtcdReplica(t, ep, keep)
	es := a.store.(*etcdStore)
	admin := principal{role: roleAdmin}
	write := func(n int) {
		t.Helper()
		for range n {
			if _, err := a.commit(admin, []tenancy.Op{putOp("tenants", fmt.Sprintf(`{"id":"t%d"}`, a.Revision()))}); err != nil {
				t.Fatal(err)
			}
		}
	}
	start := func() uint64 {
		t.Helper()
		first, err := es.logStart(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return first
	}
	waitStart := func(want uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for start() != want {
			if time.Now().After(deadline) {
				t.Fatalf("the log starts at %d, want %d", start(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	write(30)
	waitStart(30 - 5 + 1)

	// b stops applying: the log keeps what b has not applied
	release := make(chan struct{})
	free := sync.OnceFunc(func() { close(release) })
	defer free() // else b's Close waits for its follower forever
	hold := func() { <-release }
	b.store.(*etcdStore).beforeApply.Store(&hold)
	write(1) // b takes it and blocks before applying it
	held := b.Revision()
	write(20)
	time.Sleep(300 * time.Millisecond) // many compaction rounds
	if got := start(); got > held+1 {
		t.Fatalf("the log starts at %d while replica b is at %d", got, held)
	}
	free()
	if err := b.waitApplied(context.Background(), a.Revision()); err != nil {
		t.Fatal(err)
	}
	waitStart(a.Revision() - 5 + 1)
	checkChain(t, a)

	// a new replica cannot replay the log from the start any more: it
	// needs a peer's snapshot, and a advertises its URL but does not serve
	// yet
	_, err = openEtcdReplica(t, ep, keep)
	if err == nil || !strings.Contains(err.Error(), "the etcd log starts at revision") || !strings.Contains(err.Error(), aAddr) {
		t.Fatalf("a new replica behind the compacted log, no peer serving: %v", err)
	}
	if err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx) }()
	defer func() { cancel(); <-served }()
	c := newEtcdReplica(t, ep, keep)
	write(3) // and it follows the log from the snapshot on
	if err := c.waitApplied(context.Background(), a.Revision()); err != nil {
		t.Fatal(err)
	}
	if sa, sc := fileState(t, a), fileState(t, c); !reflect.DeepEqual(sa, sc) {
		t.Fatalf("the replica built from a snapshot differs: %d entities, %d on the peer", len(sc), len(sa))
	}
	if c.Epoch() != a.Epoch() {
		t.Fatalf("epoch %s, the peer's %s", c.Epoch(), a.Epoch())
	}
	_ = c.db.View(func(tx *bolt.Tx) error {
		if tenancy.HeadHash(tx) != headHash(t, a) {
			t.Errorf("the history hash differs from the peer's")
		}
		if err := tenancy.Validate(tx); err != nil {
			t.Errorf("the replica built from a snapshot: %v", err)
		}
		return nil
	})
}

// fileState returns every entity document of s's file, by collection/id.
func fileState(t *testing.T, s *Server) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, coll := range tenancy.Collections {
			err := tx.Bucket(entityBucket(coll)).ForEach(func(k, v []byte) error {
				doc, err := tenancy.Document(k, v)
				out[coll+"/"+string(k)] = string(doc)
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func headHash(t *testing.T, s *Server) string {
	t.Helper()
	var h string
	_ = s.db.View(func(tx *bolt.Tx) error {
		h = tenancy.HeadHash(tx)
		return nil
	})
	return h
}

// TestEtcdConfigValidate: every etcd key is checked, naming the key.
func TestEtcdConfigValidate(t *testing.T) {
	base := func() Config {
		c := Config{AdminTokenFile: "x", Store: StoreEtcd, Etcd: EtcdConfig{Endpoints: []string{"127.0.0.1:2379"}}}
		c.SetDefaults()
		return c
	}
	cases := map[string]struct {
		edit func(*Config)
		want string
	}{
		"valid":                 {func(*Config) {}, ""},
		"valid URL":             {func(c *Config) { c.Etcd.Endpoints = []string{"https://etcd-0.etcd:2379"} }, ""},
		"no endpoints":          {func(c *Config) { c.Etcd.Endpoints = nil }, "etcd.endpoints: required"},
		"endpoint without port": {func(c *Config) { c.Etcd.Endpoints = []string{"etcd-0"} }, `etcd.endpoints: "etcd-0"`},
		"negative retention":    {func(c *Config) { c.Etcd.LogRetention = -1 }, "etcd.log_retention: -1"},
		"negative dial":         {func(c *Config) { c.Etcd.DialTimeout = -time.Second }, "etcd.dial_timeout"},
		"key without cert":      {func(c *Config) { c.Etcd.KeyFile = "k.pem" }, "etcd.cert_file and etcd.key_file"},
		"prefix with newline":   {func(c *Config) { c.Etcd.Prefix = "a\nb" }, "etcd.prefix"},
		"parts too big":         {func(c *Config) { c.FeedPartBytes = 2 << 20 }, "feed_part_bytes: 2097152 must be at most"},
		"advertise not a URL":   {func(c *Config) { c.Etcd.AdvertiseURL = "10.0.0.1:8282" }, "etcd.advertise_url"},
		"unknown store":         {func(c *Config) { c.Store = "zk" }, `store: "zk"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := base()
			c.edit(&cfg)
			err := cfg.Validate()
			if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want %q", err, c.want)
			}
		})
	}
}

// BenchmarkEtcdGroupCommit is BenchmarkGroupCommit's measure on the etcd
// store (one in-process etcd member, fsync on): writes/s at c=1 and c=16
// through one replica.
func BenchmarkEtcdGroupCommit(b *testing.B) {
	ep := startEtcdMember(b)
	s := newEtcdReplica(b, ep)
	admin := principal{role: roleAdmin}
	if _, err := s.commit(admin, []tenancy.Op{putOp("tenants", `{"id":"bench"}`)}); err != nil {
		b.Fatal(err)
	}
	write := func(i int) {
		if _, err := s.commit(admin, []tenancy.Op{putOp("users", fmt.Sprintf(`{"id":"u%d","tenant":"bench"}`, i%500))}); err != nil {
			b.Error(err)
		}
	}
	var c1, c16, ratios []float64 // per round; the speedup is the median round's
	for b.Loop() {
		r1 := WriteRate(1, 100, write)
		r16 := WriteRate(16, 800, write)
		c1, c16, ratios = append(c1, r1), append(c16, r16), append(ratios, r16/r1)
	}
	ReportSpeedup(b, c1, c16, ratios)
}

// TestEtcdReplicaAheadOfEtcdRefusesToStart: a replica file at a revision
// etcd's log does not reach (etcd restored from an older backup, same
// history) is refused at start, never served or written on.
func TestEtcdReplicaAheadOfEtcdRefusesToStart(t *testing.T) {
	ep := startEtcdMember(t)
	var dataDir string
	s := newEtcdReplica(t, ep, func(c *Config) { dataDir = c.DataDir })
	for i := range 3 {
		if _, err := s.commit(principal{role: roleAdmin}, []tenancy.Op{putOp("tenants", fmt.Sprintf(`{"id":"t%d"}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.Close()
	es := s.store.(*etcdStore)
	cli, err := dialEtcd(EtcdConfig{Endpoints: []string{ep}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(context.Background(), es.headKey(), "1"); err != nil { // as if restored at revision 1
		t.Fatal(err)
	}
	_, err = openEtcdReplica(t, ep, func(c *Config) { c.DataDir = dataDir })
	if err == nil || !strings.Contains(err.Error(), "etcd's log ends at revision 1") {
		t.Fatalf("a replica ahead of etcd: %v", err)
	}
}

// TestEtcdAuditOnEveryReplica: the audit records of a write (one per
// changed entity, with its actor) are written by every replica that
// applies the revision, not only by the one that took the write.
func TestEtcdAuditOnEveryReplica(t *testing.T) {
	ep := startEtcdMember(t)
	a, b := newEtcdReplica(t, ep), newEtcdReplica(t, ep)
	if _, err := a.commit(principal{role: roleAdmin}, []tenancy.Op{putOp("tenants", `{"id":"x"}`), putOp("users", `{"id":"u","tenant":"x"}`)}); err != nil {
		t.Fatal(err)
	}
	if err := b.waitApplied(context.Background(), a.Revision()); err != nil {
		t.Fatal(err)
	}
	records := func(s *Server) []string {
		var out []string
		_ = s.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketAudit).ForEach(func(_, v []byte) error {
				var r AuditRecord
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
				out = append(out, fmt.Sprintf("%d %s %s/%s by %s", r.Revision, r.Op, r.Collection, r.ID, r.Actor.Kind))
				return nil
			})
		})
		return out
	}
	ra, rb := records(a), records(b)
	if len(ra) != 2 || !reflect.DeepEqual(ra, rb) {
		t.Fatalf("audit records: %v on the replica written to, %v on the other", ra, rb)
	}
}

// TestEtcdHeartbeatStampStopsWithEtcd: a replica's heartbeats stamp the
// last time its view was confirmed whole by etcd (progress notifications),
// not the time of sending: while etcd answers, the stamp follows real time;
// once the replica is cut off from etcd, it stops, so its sidecars' data
// turns stale (max_staleness) instead of being called current. On the old
// code the stamp was always now.
func TestEtcdHeartbeatStampStopsWithEtcd(t *testing.T) {
	t.Parallel()
	endpoint, stopEtcd := startEtcd(t)
	s := newEtcdReplica(t, endpoint)
	lag := func() time.Duration { return time.Since(s.currentAsOf()) }
	deadline := time.Now().Add(20 * time.Second)
	for lag() > 3*progressEvery {
		if time.Now().After(deadline) {
			t.Fatalf("the stamp never came within %v of now while etcd answers (lag %v)", 3*progressEvery, lag())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopEtcd() // the replica is cut off from etcd
	cut := time.Now()
	time.Sleep(2 * time.Second)
	if got := s.currentAsOf(); got.After(cut) {
		t.Fatalf("stamp %v is after etcd stopped (%v): a cut-off replica calls its data current", got, cut)
	}
	if lag() < 2*time.Second {
		t.Fatalf("lag %v after 2s without etcd", lag())
	}
}
