package tenancy_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// bulkSource writes a small generated world, entity by entity, the way a
// control endpoint does (random inserts, every index maintained), at
// revision 7 of epoch "ep", and returns its bulk snapshot.
func bulkSource(t *testing.T) (*bolt.DB, []byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "control.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tenancy.Init(tx); err != nil {
			return err
		}
		w, err := tenancy.NewWriter(tx, 7)
		if err != nil {
			return err
		}
		if _, err := worldgen.Generate(worldgen.Small, w.Put); err != nil {
			return err
		}
		if err := tenancy.SetEpoch(tx, "ep"); err != nil {
			return err
		}
		return w.Finish()
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := db.View(func(tx *bolt.Tx) error { return tenancy.WriteBulk(tx, "ep", tenancy.NewBulkWriter(&buf)) }); err != nil {
		t.Fatal(err)
	}
	return db, buf.Bytes()
}

// loadBulk loads a bulk stream into a new file and returns it (nil on
// error) with the error.
func loadBulk(t *testing.T, stream []byte) (*bolt.DB, uint64, error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "cache.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(tenancy.Init); err != nil {
		t.Fatal(err)
	}
	br := tenancy.NewBulkReader(bytes.NewReader(stream), 1<<20)
	h, err := br.ReadHeader()
	if err != nil {
		return db, 0, err
	}
	n, err := tenancy.LoadBulk(db, br, h, nil)
	return db, n, err
}

// dump lists every pair of the data buckets and the meta a cache keeps.
func dump(t *testing.T, db *bolt.DB) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := db.View(func(tx *bolt.Tx) error {
		for _, name := range tenancy.DataBuckets() {
			err := tx.Bucket([]byte(name)).ForEach(func(k, v []byte) error {
				out[name+"\x00"+string(k)] = string(v)
				return nil
			})
			if err != nil {
				return err
			}
		}
		out["revision"] = fmt.Sprint(tenancy.Revision(tx))
		out["epoch"] = tenancy.Epoch(tx)
		out["hash"] = tenancy.HeadHash(tx)
		out["schema"] = tenancy.Schema(tx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A bulk snapshot loaded into a new file gives exactly the source's
// buckets, revision, epoch and history hash, and a file whose every value
// verifies and whose pages are full.
func TestBulkRoundTrip(t *testing.T) {
	src, stream := bulkSource(t)
	dst, n, err := loadBulk(t, stream)
	if err != nil {
		t.Fatal(err)
	}
	want, got := dump(t, src), dump(t, dst)
	if len(want) != len(got) {
		t.Fatalf("loaded %d pairs and meta keys, the source has %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%q: loaded %q, source %q", k, got[k], v)
		}
	}
	entities := 0
	_ = src.View(func(tx *bolt.Tx) error {
		for _, c := range tenancy.Collections {
			entities += tx.Bucket([]byte("e/" + c)).Stats().KeyN
		}
		return nil
	})
	if n != uint64(entities) || n == 0 {
		t.Fatalf("LoadBulk reports %d entities, the source holds %d", n, entities)
	}
	err = dst.View(func(tx *bolt.Tx) error {
		if err := tenancy.VerifyFile(tx); err != nil {
			return err
		}
		// sequential inserts into full pages: the leaves of a large bucket
		// are nearly full
		st := tx.Bucket([]byte("e/user_grants")).Stats()
		if fill := float64(st.LeafInuse) / float64(st.LeafAlloc); st.LeafPageN > 2 && fill < 0.85 {
			return fmt.Errorf("e/user_grants leaves %.0f%% full over %d pages", 100*fill, st.LeafPageN)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Any change to a bulk stream — a byte flipped anywhere, a cut anywhere —
// is refused (ErrBulk) and leaves no revision in the file.
func TestBulkRefusesDamage(t *testing.T) {
	_, stream := bulkSource(t)
	rng := rand.New(rand.NewPCG(1, 2))
	type variant struct {
		name   string
		stream []byte
	}
	var vs []variant
	for range 60 {
		b := bytes.Clone(stream)
		i := rng.IntN(len(b))
		b[i] ^= byte(1 + rng.IntN(255))
		vs = append(vs, variant{fmt.Sprintf("flip@%d", i), b})
	}
	for range 20 {
		i := rng.IntN(len(stream))
		vs = append(vs, variant{fmt.Sprintf("cut@%d", i), stream[:i]})
	}
	vs = append(vs, variant{"cut before the end frame", stream[:bytes.LastIndexByte(stream, 'e')]})
	for _, v := range vs {
		t.Run(v.name, func(t *testing.T) {
			db, _, err := loadBulk(t, v.stream)
			if !errors.Is(err, tenancy.ErrBulk) {
				t.Fatalf("a damaged stream loaded: err %v", err)
			}
			_ = db.View(func(tx *bolt.Tx) error {
				if r := tenancy.Revision(tx); r != 0 || tenancy.Epoch(tx) != "" {
					t.Fatalf("a refused load recorded revision %d, epoch %q", r, tenancy.Epoch(tx))
				}
				return nil
			})
		})
	}
}

// Streams that are well framed and digested but not a valid copy are
// refused: keys out of order or repeated, buckets missing, repeated or out
// of order, a pair whose checksum does not match its key, another schema.
func TestBulkRefusesInvalidCopies(t *testing.T) {
	src, _ := bulkSource(t)
	type pair struct{ k, v []byte }
	pairs := map[string][]pair{}
	_ = src.View(func(tx *bolt.Tx) error {
		for _, name := range tenancy.DataBuckets() {
			_ = tx.Bucket([]byte(name)).ForEach(func(k, v []byte) error {
				pairs[name] = append(pairs[name], pair{bytes.Clone(k), bytes.Clone(v)})
				return nil
			})
		}
		return nil
	})
	write := func(h tenancy.BulkHeader, names []string, edit func(name string, ps []pair) []pair) []byte {
		var buf bytes.Buffer
		w := tenancy.NewBulkWriter(&buf)
		_ = w.Header(h)
		for _, name := range names {
			_ = w.Bucket(name)
			ps := append([]pair(nil), pairs[name]...)
			if edit != nil {
				ps = edit(name, ps)
			}
			for _, p := range ps {
				_ = w.Pair(p.k, p.v)
			}
		}
		_ = w.End()
		return buf.Bytes()
	}
	good := tenancy.BulkHeader{Revision: 7, Epoch: "ep", Hash: "h", Schema: tenancy.SchemaVersion}
	all := tenancy.DataBuckets()
	if _, _, err := loadBulk(t, write(good, all, nil)); err != nil {
		t.Fatalf("the unedited copy: %v", err)
	}
	onUserGrants := func(f func(ps []pair) []pair) func(string, []pair) []pair {
		return func(name string, ps []pair) []pair {
			if name != "e/user_grants" || len(ps) < 3 {
				return ps
			}
			return f(ps)
		}
	}
	cases := map[string][]byte{
		"keys swapped": write(good, all, onUserGrants(func(ps []pair) []pair {
			ps[1], ps[2] = ps[2], ps[1]
			return ps
		})),
		"key repeated": write(good, all, onUserGrants(func(ps []pair) []pair { return append(ps[:2], ps[1:]...) })),
		"value under another key": write(good, all, onUserGrants(func(ps []pair) []pair {
			ps[1].v = ps[2].v
			return ps
		})),
		"index key without its checksum": write(good, all, func(name string, ps []pair) []pair {
			if name == "x/user_grants" && len(ps) > 0 {
				ps[0].v = []byte{0, 0, 0, 0}
			}
			return ps
		}),
		"bucket missing":       write(good, all[1:], nil),
		"bucket repeated":      write(good, append([]string{all[0]}, all...), nil),
		"buckets out of order": write(good, append([]string{all[1], all[0]}, all[2:]...), nil),
		"unknown bucket":       write(good, append(append([]string{}, all...), "log"), nil),
		"legacy schema":        write(tenancy.BulkHeader{Revision: 7, Epoch: "ep", Hash: "h", Schema: tenancy.LegacySchema}, all, nil),
		"no epoch":             write(tenancy.BulkHeader{Revision: 7, Hash: "h", Schema: tenancy.SchemaVersion}, all, nil),
		"no hash":              write(tenancy.BulkHeader{Revision: 7, Epoch: "ep", Schema: tenancy.SchemaVersion}, all, nil),
		"not a bulk stream":    []byte(`{"type":"header","revision":7,"epoch":"ep","hash":"h"}` + "\n"),
	}
	for name, stream := range cases {
		t.Run(name, func(t *testing.T) {
			if _, _, err := loadBulk(t, stream); !errors.Is(err, tenancy.ErrBulk) {
				t.Fatalf("loaded: err %v", err)
			}
		})
	}
}
