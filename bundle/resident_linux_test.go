//go:build linux

package bundle

import (
	"encoding/json"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// residentStore is a cache file of a few MiB in t.TempDir().
func residentStore(t *testing.T) *Store {
	t.Helper()
	st, err := OpenStore(StoreConfig{Dir: t.TempDir()}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	sb, err := st.BeginSnapshot(1, "resident", tenancy.GenesisHash("resident", 1))
	if err != nil {
		t.Fatal(err)
	}
	spec := worldgen.Spec{Providers: 2, Tenants: 200, Users: 10000, Projects: 20, GrantsPerProject: 20, UserGrants: 30000, ExternalPct: 10, Seed: 3}
	if _, err := worldgen.Generate(spec, func(e tenancy.Entity) error {
		doc, err := json.Marshal(e)
		if err != nil {
			return err
		}
		return sb.Put(tenancy.FeedLine{Type: tenancy.LineEntity, Collection: e.Collection(), ID: e.Key(), ModRevision: 1, Value: doc})
	}); err != nil {
		t.Fatal(err)
	}
	if err := sb.Commit(time.Now()); err != nil {
		t.Fatal(err)
	}
	return st
}

// readAll reads every key and value of the cache file through its map.
func readAll(t *testing.T, st *Store) {
	t.Helper()
	var sum byte
	err := st.db().View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				for _, x := range v {
					sum += x
				}
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sum
}

// TestResidentBudgetCountsTheCacheFileOnly: the resident budget is about
// the cache file's pages. The process's other file-backed pages (here the
// test binary's, tens of MiB, far over the budget) do not count: an idle
// sidecar is not trimmed again and again (the budget used to be compared
// with all of the process's file-backed memory, so a binary larger than
// the budget meant a trim at every check, each faulting the data back in),
// and reading the whole file is counted and trimmed.
func TestResidentBudgetCountsTheCacheFileOnly(t *testing.T) {
	st := residentStore(t)
	size := st.FileSize()
	const budget = 1 << 20
	if size < 4*budget {
		t.Fatalf("cache file of %d bytes: too small for the test", size)
	}
	if other := residentFileBytes(); other <= budget {
		t.Skipf("the process has only %d bytes of file-backed pages: nothing to tell apart", other)
	}

	m := &residentMeter{read: residentFileBytes}
	var trims atomic.Int64
	trim := func() {
		if err := st.TrimResident(); err != nil {
			t.Error(err)
		}
		trims.Add(1)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		keepUnder(done, budget, 5*time.Millisecond, m, trim)
		close(stopped)
	}()
	time.Sleep(100 * time.Millisecond) // idle: the first trim only
	if n := trims.Load(); n != 1 {
		t.Errorf("%d trims while idle, want 1 (the first)", n)
	}
	readAll(t, st)
	time.Sleep(100 * time.Millisecond) // time for the loop to see it
	close(done)
	<-stopped
	if n := trims.Load(); n < 2 {
		t.Fatalf("reading the whole %d-byte file never trimmed it (budget %d)", size, budget)
	}
	if n := m.cacheBytes(); n > budget {
		t.Errorf("after the trim the cache file counts %d resident bytes, budget %d", n, budget)
	}

	// The meter itself: reading the file counts, a trim uncounts.
	trim()
	m.trimmed()
	readAll(t, st)
	if n := m.cacheBytes(); n < size/2 {
		t.Errorf("the whole file (%d bytes) was read: counted %d resident bytes", size, n)
	}
	trim()
	m.trimmed()
	if n := m.cacheBytes(); n > budget {
		t.Errorf("trimmed: still %d bytes counted", n)
	}
}
