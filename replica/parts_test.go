package replica_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// A revision of any size reaches the sidecars: the control endpoint stores
// and streams it in parts of bounded size, the sidecar applies all the
// parts of a revision in one transaction.

// newcomers is one batch creating n users of beta, each with a developer
// grant on tk: one revision of about 300 bytes of changes per user.
func newcomers(n int) string {
	var b strings.Builder
	b.WriteString("[")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"op":"put","collection":"users","value":{"id":"u%03d","tenant":"beta","labels":{"team":"newcomers"}}},
		 {"op":"put","collection":"user_grants","value":{"id":"ug-u%03d","user":"u%03d","project":"tk","tenant":"beta","roles":["developer"]}}`, i, i, i)
	}
	b.WriteString("]")
	return b.String()
}

// TestRevisionLargerThanALine: one revision far larger than the sidecar's
// line bound (the bounds are scaled down: 2 KiB parts, 8 KiB lines; in
// production 1 MiB and 64 MiB) reaches the sidecar whole. The same
// revision sent as one line, as the feed did before parts, does not.
func TestRevisionLargerThanALine(t *testing.T) {
	t.Parallel()
	batch := newcomers(300) // ~100 KB of changes
	line := func(c *replica.SyncConfig) { c.MaxLineBytes = 8 << 10 }

	p := startPlane(t, func(c *control.Config) { c.FeedPartBytes = 2 << 10 })
	p.batch(world)
	r := startReplica(t, p, t.TempDir(), line)
	r.expect(1, map[string]bool{"bob": true})
	rev := p.batch(batch)
	r.expect(rev, map[string]bool{"bob": true, "u000": true, "u150": true, "u299": true})

	// the revision as a single record exceeds the sidecar's line bound
	one := startPlane(t, func(c *control.Config) { c.FeedPartBytes = 1 << 30 })
	one.batch(world)
	r1 := startReplica(t, one, t.TempDir(), line)
	r1.expect(1, map[string]bool{"bob": true})
	one.batch(batch)
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		st := r1.store.State()
		return strings.Contains(st.LastError, "exceeds"), fmt.Sprintf("revision %d, last error %q", st.Revision, st.LastError)
	})
	if got := r1.store.State().Revision; got != 1 {
		t.Fatalf("the one-line revision was applied (revision %d)", got)
	}
}

// TestCutRevisionLeavesNothing: a change stream cut after the first part
// of a revision, again and again: none of the revision is visible (its
// parts were applied in one transaction, rolled back); once the stream
// goes through, the revision arrives whole.
func TestCutRevisionLeavesNothing(t *testing.T) {
	t.Parallel()
	p := startPlane(t, func(c *control.Config) { c.FeedPartBytes = 2 << 10 })
	p.batch(world)
	r := startReplica(t, p, t.TempDir(), nil)
	r.expect(1, map[string]bool{"bob": true})

	p.cut.Store(2)
	rev := p.batch(newcomers(300))
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		return p.cuts.Load() >= 3, fmt.Sprintf("%d cuts", p.cuts.Load())
	})
	if got := r.store.State().Revision; got != 1 {
		t.Fatalf("cache at revision %d during cut streams, want 1", got)
	}
	for _, id := range []string{"u000", "u001", "u150", "u299"} {
		if _, err := read(t, r.store, "users", id); !storage.IsNotFound(err) {
			t.Fatalf("users/%s visible from a cut revision: %v", id, err)
		}
		if ok, err := r.decide(id); ok || err != nil {
			t.Fatalf("%s decided from a cut revision: allowed=%v err=%v", id, ok, err)
		}
	}
	p.cut.Store(0)
	r.expect(rev, map[string]bool{"bob": true, "u000": true, "u150": true, "u299": true})
}

// TestHugeRevisionAppliesAtomically: removing a role from a project with
// 100,000 user grants is one revision of 100,000 changed entities (~17 MB);
// it is stored and streamed in parts and applied in one transaction:
// readers of the cache see either none or all of it.
func TestHugeRevisionAppliesAtomically(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("builds 110,000 entities: skipped with -short and -race")
	}
	t.Parallel()
	const (
		tenants     = 10
		users       = 10000
		lastGrant   = "ug-9-9999"
		firstGrant  = "ug-0-0000"
		bothRoles   = `["accountant","developer"]`
		afterRemove = `["developer"]`
	)
	start := time.Now()
	// the control endpoint's file is written directly (the invariants of
	// 110,000 admin writes are not what this test is about)
	p := startPlane(t, func(c *control.Config) {
		var ops []string
		ops = append(ops, world[1:len(world)-1])
		for x := range tenants {
			ops = append(ops, fmt.Sprintf(`{"op":"put","collection":"tenants","value":{"id":"t%d","name":"T","parent":"acme","kind":"customer"}},
			 {"op":"put","collection":"project_grants","value":{"id":"pg-t%d","project":"tk","tenant":"t%d","roles":%s}}`, x, x, x, bothRoles))
		}
		for u := range users {
			ops = append(ops, fmt.Sprintf(`{"op":"put","collection":"users","value":{"id":"v%04d","tenant":"beta"}}`, u))
			for x := range tenants {
				ops = append(ops, fmt.Sprintf(`{"op":"put","collection":"user_grants","value":{"id":"ug-%d-%04d","user":"v%04d","project":"tk","tenant":"t%d","roles":%s}}`, x, u, u, x, bothRoles))
			}
		}
		writeControlFile(t, c.DataDir, "["+strings.Join(ops, ",")+"]")
	})
	t.Logf("%s: control built", time.Since(start))
	r := startReplica(t, p, t.TempDir(), nil)
	testutil.Eventually(t, 5*time.Minute, func() (bool, string) {
		return r.store.State().Revision == 1, "the sidecar did not take its snapshot"
	})
	r.expect(p.revision(), map[string]bool{"bob": true})
	t.Logf("%s: sidecar synced", time.Since(start))

	// a reader checking, in one transaction each time, the first and last
	// user grants the revision changes
	stop := make(chan struct{})
	var reads, mixed atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			a, z := rolesInOneTxn(t, r.store, firstGrant, lastGrant)
			reads.Add(1)
			time.Sleep(200 * time.Microsecond)
			if a != z {
				mixed.Add(1)
			}
		}
	}()
	rev := p.do("PUT", "/v1/projects/tk", `{"id":"tk","owner":"acme","roles":["developer"]}`)
	t.Logf("%s: revision committed at the control endpoint", time.Since(start))
	testutil.Eventually(t, 5*time.Minute, func() (bool, string) {
		got := r.store.State().Revision
		return got == rev, fmt.Sprintf("cache at %d, want %d (%s)", got, rev, r.store.State().LastError)
	})
	t.Logf("%s: revision applied", time.Since(start))
	close(stop)
	<-done
	if a, z := rolesInOneTxn(t, r.store, firstGrant, lastGrant); a != afterRemove || z != afterRemove {
		t.Fatalf("after the revision: %s, %s", a, z)
	}
	if mixed.Load() != 0 {
		t.Fatalf("%d of %d reads saw part of the revision", mixed.Load(), reads.Load())
	}
	parts, changes := revisionParts(t, p, rev)
	t.Logf("revision %d: %d changes in %d parts; %d concurrent reads", rev, changes, parts, reads.Load())
	if parts < 10 || changes < tenants*users {
		t.Fatalf("revision %d: %d changes in %d parts", rev, changes, parts)
	}
}

// writeControlFile writes a control endpoint's data file at revision 1
// holding the entities the ops put, through tenancy.Writer (no invariant
// checks, no history).
func writeControlFile(t *testing.T, dir, ops string) {
	t.Helper()
	var list []tenancy.Op
	if err := json.Unmarshal([]byte(ops), &list); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, control.DBFile), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(tenancy.Init); err != nil {
		t.Fatal(err)
	}
	for len(list) > 0 {
		chunk := list[:min(len(list), 20000)]
		list = list[len(chunk):]
		err := db.Update(func(tx *bolt.Tx) error {
			w, err := tenancy.NewWriter(tx, 1)
			if err != nil {
				return err
			}
			for _, op := range chunk {
				e, err := tenancy.DecodeStored(op.Collection, op.Value)
				if err != nil {
					return err
				}
				if err := w.Put(e); err != nil {
					return err
				}
			}
			return w.Finish()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
}

// rolesInOneTxn reads the roles of two user grants in one transaction.
func rolesInOneTxn(t *testing.T, st *replica.Store, a, z string) (string, string) {
	ctx := context.Background()
	txn, err := st.NewTransaction(ctx)
	if err != nil {
		t.Error(err)
		return "", ""
	}
	defer st.Abort(ctx, txn)
	get := func(id string) string {
		v, err := st.Read(ctx, txn, storage.Path{"tenancy", "user_grants", id, "roles"})
		if err != nil {
			t.Errorf("read %s: %v", id, err)
			return ""
		}
		return v.(ast.Value).String()
	}
	return get(a), get(z)
}

// revisionParts counts the parts and changes of revision rev on the change
// stream.
func revisionParts(t *testing.T, p *plane, rev uint64) (parts, changes int) {
	t.Helper()
	req, _ := http.NewRequest("GET", p.url+"/v1/sync/changes?since="+strconv.FormatUint(rev-1, 10), nil)
	req.Header.Set("Authorization", "Bearer "+rpSyncToken)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var l tenancy.FeedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		if l.Type != tenancy.LineRevision {
			continue
		}
		parts++
		changes += len(l.Changes)
		if !l.More {
			break
		}
	}
	return parts, changes
}

// TestSnapshotDuringWrites: a snapshot is read in pages, each in its own
// short transaction, while writes go on; the revisions committed meanwhile
// follow the entities, and replaying them (puts and deletes are
// idempotent) gives exactly the data at the snapshot's end revision, with
// a verified history hash.
func TestSnapshotDuringWrites(t *testing.T) {
	t.Parallel()
	p := startPlane(t, nil)
	p.batch(world)
	big := strings.Repeat("x", 200)
	user := func(id string, v int) string {
		var labels []string
		for i := range 16 {
			labels = append(labels, fmt.Sprintf(`"k%02d":"%d-%s"`, i, v, big))
		}
		return fmt.Sprintf(`{"id":%q,"tenant":"beta","labels":{%s}}`, id, strings.Join(labels, ","))
	}
	for i := 0; i < 2500; i += 500 { // ~9 MB: more than the socket buffers hold
		var ops []string
		for j := i; j < i+500; j++ {
			ops = append(ops, `{"op":"put","collection":"users","value":`+user(fmt.Sprintf("m%04d", j), 0)+`}`)
		}
		p.batch("[" + strings.Join(ops, ",") + "]")
	}

	// a reader that stops after the header: the snapshot blocks mid-way
	req, _ := http.NewRequest("GET", p.url+"/v1/sync/snapshot", nil)
	req.Header.Set("Authorization", "Bearer "+rpSyncToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	next := func() tenancy.FeedLine {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("snapshot ended: %v", sc.Err())
		}
		var l tenancy.FeedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	head := next()
	time.Sleep(300 * time.Millisecond)
	// writes on entities already sent, not yet sent, and new ones
	p.do("DELETE", "/v1/users/m0000", "")
	p.do("DELETE", "/v1/users/m2499", "")
	p.do("PUT", "/v1/users/m0001", user("m0001", 1))
	p.do("PUT", "/v1/users/m2498", user("m2498", 1))
	p.do("PUT", "/v1/users/a-new", user("a-new", 1))
	p.do("PUT", "/v1/users/z-new", user("z-new", 1))
	p.do("DELETE", "/v1/users/z-new", "")
	p.grantUser("carol")
	p.do("DELETE", "/v1/user_grants/ug-bob", "")
	end := p.revision()
	t.Logf("%d writes while the snapshot was blocked", end-head.Revision)

	st := openStore(t, t.TempDir())
	b, err := st.BeginSnapshot(head.Revision, head.Epoch, head.Hash)
	if err != nil {
		t.Fatal(err)
	}
	replayed := 0
	for {
		l := next()
		if l.Type == tenancy.LineEnd {
			if r, h := b.End(); l.Revision != r || l.Hash != h || l.Count != b.Count() {
				t.Fatalf("end %+v; builder at %d %.12s with %d entities", l, r, h, b.Count())
			}
			break
		}
		if l.Type == tenancy.LineRevision {
			replayed++
			err = b.Revision(l)
		} else {
			err = b.Put(l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(time.Now()); err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot from revision %d to %d, %d revision lines replayed", head.Revision, st.State().Revision, replayed)
	if got := st.State().Revision; got != end || replayed == 0 || head.Revision == end {
		t.Fatalf("snapshot from %d to %d (%d revisions replayed), want to end at %d after writes", head.Revision, got, replayed, end)
	}

	// exactly the data at the end revision: compare with a quiet snapshot
	r := startReplica(t, p, t.TempDir(), nil)
	r.expect(end, map[string]bool{"bob": false, "carol": true})
	for _, path := range [][]string{
		{"users"}, {"user_grants"}, {"index", "user_roles"}, {"index", "tenant_users"}, {"index", "user_grants"},
	} {
		want, err := read(t, r.store, path...)
		if err != nil {
			t.Fatal(err)
		}
		got, err := read(t, st, path...)
		if err != nil {
			t.Fatal(err)
		}
		wb, _ := json.Marshal(want)
		gb, _ := json.Marshal(got)
		if string(wb) != string(gb) {
			t.Fatalf("%v differs from the data at revision %d", path, end)
		}
	}
}
