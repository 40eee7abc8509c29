package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// newInternal is a server over a fresh data dir, not listening.
func newInternal(tb testing.TB) *Server {
	tb.Helper()
	dir := tb.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte("admin-token-for-groups"), 0o600); err != nil {
		tb.Fatal(err)
	}
	s, err := New(Config{Addr: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"), AdminTokenFile: tok}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func putOp(collection, value string) tenancy.Op {
	return tenancy.Op{Op: tenancy.OpPut, Collection: collection, Value: json.RawMessage(value)}
}

func newPending(ops ...tenancy.Op) *pending {
	return &pending{p: principal{role: roleAdmin}, ops: ops, wake: make(chan struct{}, 1)}
}

// checkChain verifies the history of s: consecutive revisions 1..current,
// each hashed on the one before from the genesis of the epoch.
func checkChain(tb testing.TB, s *Server) {
	tb.Helper()
	parts, _, err := s.readLog(u64(1), 1<<30)
	if err != nil {
		tb.Fatal(err)
	}
	prev := tenancy.GenesisHash(s.Epoch(), 0)
	var rev uint64
	var changes []tenancy.Change
	for _, p := range parts {
		e := p.entry
		if e.Revision != rev+1 {
			tb.Fatalf("history record of revision %d after revision %d", e.Revision, rev)
		}
		changes = append(changes, e.Changes...)
		if e.More {
			continue
		}
		if want := tenancy.HashRevision(prev, e.Revision, changes); e.Hash != want {
			tb.Fatalf("revision %d: hash %s, want %s", e.Revision, e.Hash, want)
		}
		prev, rev, changes = e.Hash, e.Revision, nil
	}
	if rev != s.Revision() {
		tb.Fatalf("history holds revisions up to %d, the server is at %d", rev, s.Revision())
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		if h := tenancy.HeadHash(tx); h != prev {
			return fmt.Errorf("the file's head hash %s is not the last history hash %s", h, prev)
		}
		return tenancy.Validate(tx)
	}); err != nil {
		tb.Fatal(err)
	}
}

// TestGroupRefusalsAreIsolated: one group of writes, some refused, some
// depending on earlier writes of the group (accepted or refused): every
// accepted write gets the next revision in order, a refused one leaves no
// trace and does not affect the others, and the group is one commit.
func TestGroupRefusalsAreIsolated(t *testing.T) {
	s := newInternal(t)
	group := []*pending{
		newPending(putOp("tenants", `{"id":"t1"}`)),
		newPending(putOp("users", `{"id":"u1","tenant":"nope"}`)),                               // refused: no tenant
		newPending(putOp("users", `{"id":"u2","tenant":"t1"}`)),                                 // needs the first write
		newPending(putOp("tenants", `{"id":"t2"}`), putOp("users", `{"id":"u3","tenant":"x"}`)), // refused whole
		newPending(putOp("users", `{"id":"u4","tenant":"t2"}`)),                                 // refused: t2 was refused
		newPending(tenancy.Op{Op: tenancy.OpDelete, Collection: "tenants", ID: "t1"}),           // refused: t1 has a user
		newPending(putOp("tenants", `{"id":"t3","parent":"t1"}`)),
	}
	wantRev := []uint64{1, 0, 2, 0, 0, 0, 3}
	s.store.commitGroup(group)
	for i, w := range group {
		if w.res.revision != wantRev[i] || (wantRev[i] == 0) != (w.err != nil) {
			t.Fatalf("write %d: revision %d err %v, want revision %d", i, w.res.revision, w.err, wantRev[i])
		}
		var te *tenancy.Error
		if w.err != nil && (!errorsAs(w.err, &te) || te.Status != 409 && te.Status != 404) {
			t.Fatalf("write %d: %v is not a refusal", i, w.err)
		}
	}
	if s.Revision() != 3 {
		t.Fatalf("revision %d, want 3", s.Revision())
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		for _, c := range []struct {
			coll, id string
			exists   bool
		}{{"tenants", "t1", true}, {"users", "u2", true}, {"tenants", "t3", true}, {"users", "u1", false}, {"tenants", "t2", false}, {"users", "u3", false}, {"users", "u4", false}} {
			e, err := tenancy.Get(tx, c.coll, c.id)
			if err != nil || (e != nil) != c.exists {
				t.Errorf("%s/%s: %v (err %v), want exists=%v", c.coll, c.id, e, err, c.exists)
			}
		}
		return nil
	})
	checkChain(t, s)
}

// TestGroupEqualsSerial is the property behind group commit: a random
// group of writes (valid, refused, dependent on each other) committed at
// once gives every write the result, revision and changes it gets when the
// writes are committed one by one in the same order.
func TestGroupEqualsSerial(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		tenants := []string{"a", "b", "c", "d"}
		var writes [][]tenancy.Op
		for range 1 + rng.IntN(40) {
			var ops []tenancy.Op
			for range 1 + rng.IntN(3) {
				x := tenants[rng.IntN(len(tenants))]
				switch rng.IntN(4) {
				case 0:
					ops = append(ops, putOp("tenants", fmt.Sprintf(`{"id":%q}`, x)))
				case 1:
					ops = append(ops, tenancy.Op{Op: tenancy.OpDelete, Collection: "tenants", ID: x, Cascade: rng.IntN(2) == 0})
				default:
					ops = append(ops, putOp("users", fmt.Sprintf(`{"id":"u%d","tenant":%q}`, rng.IntN(6), x)))
				}
			}
			writes = append(writes, ops)
		}
		grouped, serial := newInternal(t), newInternal(t)
		var group []*pending
		for _, ops := range writes {
			group = append(group, newPending(ops...))
		}
		grouped.store.commitGroup(group)
		for i, ops := range writes {
			w := newPending(ops...)
			serial.store.commitGroup([]*pending{w})
			g := group[i]
			if (g.err == nil) != (w.err == nil) || g.res.revision != w.res.revision || !reflect.DeepEqual(g.res.changes, w.res.changes) {
				t.Fatalf("seed %d write %d: grouped (rev %d, %v, %d changes), serial (rev %d, %v, %d changes)",
					seed, i, g.res.revision, g.err, len(g.res.changes), w.res.revision, w.err, len(w.res.changes))
			}
		}
		checkChain(t, grouped)
		_ = grouped.Close()
		_ = serial.Close()
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
