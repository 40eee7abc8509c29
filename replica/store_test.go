package replica_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

const world = `[
 {"op":"put","collection":"tenants","value":{"id":"acme","name":"ACME","kind":"service_provider"}},
 {"op":"put","collection":"tenants","value":{"id":"beta","name":"Beta","parent":"acme","kind":"customer"}},
 {"op":"put","collection":"users","value":{"id":"alice","tenant":"acme"}},
 {"op":"put","collection":"users","value":{"id":"bob","tenant":"beta"}},
 {"op":"put","collection":"projects","value":{"id":"tk","owner":"acme","roles":["accountant","developer"]}},
 {"op":"put","collection":"project_grants","value":{"id":"pg-beta","project":"tk","tenant":"beta","roles":["accountant","developer"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-bob","user":"bob","project":"tk","tenant":"beta","roles":["developer"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-alice","user":"alice","project":"tk","tenant":"beta","roles":["accountant"]}}
]`

// source is a control-side file: writes go through tenancy.Apply and
// yield feed lines.
type source struct {
	t    testing.TB
	db   *bolt.DB
	rev  uint64
	hash string // history hash at rev
}

func newSource(t testing.TB) *source {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "control.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(tenancy.Init); err != nil {
		t.Fatal(err)
	}
	return &source{t: t, db: db, hash: tenancy.GenesisHash("epoch-1", 0)}
}

func (s *source) write(ops string) tenancy.FeedLine {
	s.t.Helper()
	var o []tenancy.Op
	if err := json.Unmarshal([]byte(ops), &o); err != nil {
		s.t.Fatal(err)
	}
	var line tenancy.FeedLine
	err := s.db.Update(func(tx *bolt.Tx) error {
		w, err := tenancy.NewWriter(tx, s.rev+1)
		if err != nil {
			return err
		}
		if err := tenancy.Apply(w, o); err != nil {
			return err
		}
		line = tenancy.FeedLine{Type: tenancy.LineRevision, Revision: s.rev + 1, Changes: w.Changes()}
		line.Hash = tenancy.HashRevision(s.hash, line.Revision, line.Changes)
		return w.Finish()
	})
	if err != nil {
		s.t.Fatal(err)
	}
	s.rev++
	s.hash = line.Hash
	return line
}

// snapshot returns the entity lines of the source's current state.
func (s *source) snapshot() []tenancy.FeedLine {
	var out []tenancy.FeedLine
	_ = s.db.View(func(tx *bolt.Tx) error {
		for _, c := range tenancy.Collections {
			_ = tx.Bucket([]byte("e/" + c)).ForEach(func(k, v []byte) error {
				rev, doc := tenancy.ModRevision(v)
				out = append(out, tenancy.FeedLine{Type: tenancy.LineEntity, Collection: c, ID: string(k), ModRevision: rev, Value: append([]byte(nil), doc...)})
				return nil
			})
		}
		return nil
	})
	return out
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(t testing.TB, dir string) *replica.Store {
	t.Helper()
	st, err := replica.OpenStore(replica.StoreConfig{Dir: dir}, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func loadSnapshot(t testing.TB, st *replica.Store, src *source) {
	t.Helper()
	b, err := st.BeginSnapshot(src.rev, "epoch-1", src.hash)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range src.snapshot() {
		if err := b.Put(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(time.Now()); err != nil {
		t.Fatal(err)
	}
}

func read(t testing.TB, st *replica.Store, path ...string) (any, error) {
	t.Helper()
	ctx := context.Background()
	txn, err := st.NewTransaction(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Abort(ctx, txn)
	v, err := st.Read(ctx, txn, append(storage.Path{"tenancy"}, path...))
	if err != nil {
		return nil, err
	}
	return ast.JSON(v.(ast.Value))
}

func TestReads(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	st := openStore(t, t.TempDir())
	if st.State().Present {
		t.Fatal("an empty cache is present")
	}
	loadSnapshot(t, st, src)
	if s := st.State(); !s.Present || s.Revision != 1 {
		t.Fatalf("state after snapshot = %+v", s)
	}
	cases := map[string]struct {
		path []string
		want string // JSON; "" = not found
	}{
		"entity":                  {[]string{"users", "bob"}, `{"id":"bob","tenant":"beta","kind":"human","status":"active","labels":{}}`},
		"entity field":            {[]string{"users", "bob", "tenant"}, `"beta"`},
		"array element":           {[]string{"projects", "tk", "roles", "1"}, `"developer"`},
		"missing entity":          {[]string{"users", "nobody"}, ""},
		"missing field":           {[]string{"users", "bob", "nope"}, ""},
		"chain":                   {[]string{"index", "tenant_chain", "beta"}, `["beta","acme"]`},
		"user roles leaf":         {[]string{"index", "user_roles", "bob", "tk", "beta"}, `["developer"]`},
		"user roles partial":      {[]string{"index", "user_roles", "alice"}, `{"tk":{"beta":["accountant"]}}`},
		"tenant roles owner":      {[]string{"index", "tenant_roles", "tk", "acme"}, `["accountant","developer"]`},
		"tenant roles by project": {[]string{"index", "tenant_roles", "tk"}, `{"acme":["accountant","developer"],"beta":["accountant","developer"]}`},
		"user grant ids":          {[]string{"index", "user_grants", "bob", "tk", "beta"}, `["ug-bob"]`},
		"user grant ids partial":  {[]string{"index", "user_grants", "bob"}, `{"tk":{"beta":["ug-bob"]}}`},
		"project grant ids":       {[]string{"index", "project_grants", "tk", "beta"}, `["pg-beta"]`},
		"children":                {[]string{"index", "tenant_children", "acme"}, `["beta"]`},
		"tenant users":            {[]string{"index", "tenant_users", "beta"}, `["bob"]`},
		"whole collection":        {[]string{"tenants"}, `{"acme":{"id":"acme","name":"ACME","parent":null,"kind":"service_provider","status":"active","labels":{}},"beta":{"id":"beta","name":"Beta","parent":"acme","kind":"customer","status":"active","labels":{}}}`},
		"NUL in a key":            {[]string{"index", "user_roles", "bob\x00tk", "beta"}, ""},
		"unknown document":        {[]string{"widgets"}, ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := read(t, st, c.path...)
			if c.want == "" {
				if !storage.IsNotFound(err) {
					t.Fatalf("got %v, %v; want not found", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want any
			if err := json.Unmarshal([]byte(c.want), &want); err != nil {
				t.Fatal(err)
			}
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			if string(gb) != string(wb) {
				t.Fatalf("got %s\nwant %s", gb, wb)
			}
		})
	}
}

func TestApplyRevisionsAndGaps(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	st := openStore(t, t.TempDir())
	loadSnapshot(t, st, src)

	r2 := src.write(`[{"op":"delete","collection":"project_grants","id":"pg-beta"}]`)
	r3 := src.write(`[{"op":"put","collection":"users","value":{"id":"carol","tenant":"acme"}}]`)
	if err := st.ApplyRevisions([]tenancy.FeedLine{r3}, time.Now()); !errors.Is(err, replica.ErrGap) {
		t.Fatalf("applying 3 on 1: %v, want ErrGap", err)
	}
	if st.State().Revision != 1 {
		t.Fatal("a refused group moved the revision")
	}
	// a group whose second revision is broken is refused whole
	bad := r3
	bad.Changes = []tenancy.Change{{Op: "put", Collection: "users", ID: "x", Value: json.RawMessage(`{"id":"y"}`)}}
	if err := st.ApplyRevisions([]tenancy.FeedLine{r2, bad}, time.Now()); err == nil {
		t.Fatal("a broken revision was applied")
	}
	if _, err := read(t, st, "project_grants", "pg-beta"); err != nil {
		t.Fatalf("revision 2 was half-applied: %v", err)
	}
	if err := st.ApplyRevisions([]tenancy.FeedLine{r2, r3}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if st.State().Revision != 3 {
		t.Fatalf("revision = %d", st.State().Revision)
	}
	if _, err := read(t, st, "index", "user_roles", "bob", "tk", "beta"); !storage.IsNotFound(err) {
		t.Fatalf("revoked grant still readable: %v", err)
	}
	if v, _ := read(t, st, "users", "carol", "tenant"); v != "acme" {
		t.Fatalf("carol's tenant = %v", v)
	}
}

func TestWaitRevision(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	st := openStore(t, t.TempDir())
	loadSnapshot(t, st, src)
	r2 := src.write(`[{"op":"put","collection":"users","value":{"id":"carol","tenant":"acme"}}]`)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- st.WaitRevision(ctx, 2)
	}()
	if err := st.ApplyRevisions([]tenancy.FeedLine{r2}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := st.WaitRevision(ctx, 9); err == nil {
		t.Fatal("waited for a revision that never came")
	}
}

func TestReopenServesFromFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := newSource(t)
	src.write(world)
	st := openStore(t, dir)
	loadSnapshot(t, st, src)
	st.Close()
	st2 := openStore(t, dir)
	if s := st2.State(); !s.Present || s.Revision != 1 || s.SyncedAt.IsZero() {
		t.Fatalf("reopened state = %+v", s)
	}
	if st2.Epoch() != "epoch-1" {
		t.Fatalf("epoch = %q", st2.Epoch())
	}
	if v, _ := read(t, st2, "users", "bob", "tenant"); v != "beta" {
		t.Fatalf("bob's tenant = %v", v)
	}
}

func TestReadBudget(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	dir := t.TempDir()
	st, err := replica.OpenStore(replica.StoreConfig{Dir: dir, MaxReadEntries: 1}, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	loadSnapshot(t, st, src)
	if _, err := read(t, st, "users", "bob"); err != nil {
		t.Fatalf("keyed read: %v", err)
	}
	if _, err := read(t, st, "user_grants"); err == nil {
		t.Fatal("a collection scan beyond the budget was served")
	}
}

func TestSecondOpenerDoesNotSetTheFileAside(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := newSource(t)
	src.write(world)
	st := openStore(t, dir)
	loadSnapshot(t, st, src)
	_, err := replica.OpenStore(replica.StoreConfig{Dir: dir}, discard())
	if !errors.Is(err, replica.ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.corrupt-*")); len(m) != 0 {
		t.Fatalf("a file in use was set aside: %v", m)
	}
	if v, err := read(t, st, "users", "bob", "tenant"); err != nil || v != "beta" {
		t.Fatalf("first store after the second open: %v %v", v, err)
	}
}

// TestOldSchemaCacheIsSetAside: a cache file of the previous schema (values
// without checksums) is set aside at open and the store waits for a
// snapshot, instead of serving values it cannot verify.
func TestOldSchemaCacheIsSetAside(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := newSource(t)
	src.write(world)
	st := openStore(t, dir)
	loadSnapshot(t, st, src)
	st.Close()
	db, err := bolt.Open(filepath.Join(dir, replica.CacheFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte(tenancy.LegacySchema))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	st2 := openStore(t, dir)
	if s := st2.State(); s.Present {
		t.Fatalf("an old-schema cache is served: %+v", s)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, replica.CacheFile+".corrupt-*")); len(m) != 1 {
		t.Fatalf("old-schema cache not set aside: %v", m)
	}
}

// TestRevisionNeverWraps: a revision follows the cache's (or a snapshot's)
// revision as its successor, never by wrapping around after the largest
// one: after 2^64-1 a "revision 0" is refused by the applier and by the
// snapshot builder alike, and the cache keeps its revision. Revisions that
// do follow are still accepted at the top of the range.
func TestRevisionNeverWraps(t *testing.T) {
	t.Parallel()
	const top = math.MaxUint64
	cases := map[string]struct {
		start uint64 // the snapshot's revision
		next  uint64 // the revision that comes after it
		ok    bool
	}{
		"after the largest":      {start: top, next: 0},
		"after the largest, top": {start: top, next: top},
		"the largest itself":     {start: top - 1, next: top, ok: true},
		"one after the other":    {start: 7, next: 8, ok: true},
		"a gap near the top":     {start: top - 2, next: top},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			genesis := tenancy.GenesisHash("e", c.start)
			next := tenancy.FeedLine{Type: tenancy.LineRevision, Revision: c.next,
				Changes: []tenancy.Change{{Op: tenancy.OpDelete, Collection: tenancy.Users, ID: "nobody"}}}
			next.Hash = tenancy.HashRevision(genesis, c.next, next.Changes)

			// replayed in a snapshot
			st := openStore(t, t.TempDir())
			b, err := st.BeginSnapshot(c.start, "e", genesis)
			if err != nil {
				t.Fatal(err)
			}
			err = b.Revision(next)
			if c.ok != (err == nil) || (!c.ok && !errors.Is(err, replica.ErrGap)) {
				b.Abort()
				t.Fatalf("snapshot at %d replaying %d: %v (want accepted: %v)", c.start, c.next, err, c.ok)
			}
			b.Abort()

			// applied over a cache
			b, err = st.BeginSnapshot(c.start, "e", genesis)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Commit(time.Now()); err != nil {
				t.Fatal(err)
			}
			err = st.ApplyRevisions([]tenancy.FeedLine{next}, time.Now())
			if c.ok != (err == nil) || (!c.ok && !errors.Is(err, replica.ErrGap)) {
				t.Fatalf("cache at %d applying %d: %v (want accepted: %v)", c.start, c.next, err, c.ok)
			}
			want := c.start
			if c.ok {
				want = c.next
			}
			if s := st.State(); s.Revision != want || !s.Present {
				t.Fatalf("cache at %+v, want revision %d", s, want)
			}
		})
	}
}
