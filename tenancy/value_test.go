package tenancy_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// TestEveryFlippedBitIsDetected: every stored value of a file carries a
// checksum over its key, revision and document; flipping any single bit of
// any value (or of a secondary index key) fails verification, and a value
// moved under another key does too.
func TestEveryFlippedBitIsDetected(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	values := 0
	err := f.db.View(func(tx *bolt.Tx) error {
		if err := tenancy.VerifyFile(tx); err != nil {
			t.Fatalf("intact file: %v", err)
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			kind := string(name[:2])
			return b.ForEach(func(k, v []byte) error {
				switch kind {
				case "e/", "i/":
					values++
					if _, _, _, err := tenancy.OpenValue(k, v); err != nil {
						t.Fatalf("%s %q intact: %v", name, k, err)
					}
					for bit := range len(v) * 8 {
						d := bytes.Clone(v)
						d[bit/8] ^= 1 << (bit % 8)
						if _, _, _, err := tenancy.OpenValue(k, d); !errors.Is(err, tenancy.ErrDamaged) {
							t.Fatalf("%s %q with bit %d flipped: %v", name, k, bit, err)
						}
					}
					if _, _, _, err := tenancy.OpenValue(append(bytes.Clone(k), 'x'), v); !errors.Is(err, tenancy.ErrDamaged) {
						t.Fatalf("%s %q under another key: %v", name, k, err)
					}
				case "x/":
					if err := tenancy.CheckIndexKey(k, v); err != nil {
						t.Fatalf("%s %q intact: %v", name, k, err)
					}
					for bit := range len(k) * 8 {
						d := bytes.Clone(k)
						d[bit/8] ^= 1 << (bit % 8)
						if err := tenancy.CheckIndexKey(d, v); !errors.Is(err, tenancy.ErrDamaged) {
							t.Fatalf("%s key %q with bit %d flipped: %v", name, k, bit, err)
						}
					}
				}
				return nil
			})
		})
	})
	if err != nil || values < 20 {
		t.Fatalf("walked %d values: %v", values, err)
	}
}

// TestLegacyControlFile: a control endpoint's file of the previous schema
// (values without checksums) keeps working: its values are read, written
// values gain checksums, and the file is never taken for a checksummed one
// (a sidecar's reads and VerifyFile refuse it).
func TestLegacyControlFile(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	// rewrite the file as schema 1 wrote it
	err := f.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte(tenancy.LegacySchema)); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			type kv struct{ k, v []byte }
			var all []kv
			_ = b.ForEach(func(k, v []byte) error {
				switch string(name[:2]) {
				case "e/", "i/":
					rev, doc := tenancy.ModRevision(v)
					all = append(all, kv{bytes.Clone(k), append(binary.BigEndian.AppendUint64(nil, rev), doc...)})
				case "x/":
					all = append(all, kv{bytes.Clone(k), nil})
				}
				return nil
			})
			for _, e := range all {
				if err := b.Put(e.k, e.v); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.Update(tenancy.Init); err != nil {
		t.Fatalf("Init on a legacy file: %v", err)
	}
	if !f.exists(tenancy.Users, "bob") {
		t.Fatal("a legacy value was not read")
	}
	f.must(`[{"op":"put","collection":"users","value":{"id":"bob","tenant":"alpha"}}]`)
	if got := f.index("i/tenant_chain", "alpha"); got == nil {
		t.Fatal("index lost")
	}
	_ = f.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte("e/users")).Get([]byte("bob"))
		if _, _, doc, err := tenancy.OpenValue([]byte("bob"), v); err != nil || !strings.Contains(string(doc), `"alpha"`) {
			t.Fatalf("rewritten value: %s %v", doc, err)
		}
		old := tx.Bucket([]byte("e/users")).Get([]byte("carol"))
		if _, _, _, err := tenancy.OpenValue([]byte("carol"), old); !errors.Is(err, tenancy.ErrDamaged) {
			t.Fatalf("a legacy value passed strict verification: %v", err)
		}
		if doc, err := tenancy.Document([]byte("carol"), old); err != nil || !strings.Contains(string(doc), `"carol"`) {
			t.Fatalf("legacy document: %s %v", doc, err)
		}
		if err := tenancy.VerifyFile(tx); !errors.Is(err, tenancy.ErrDamaged) {
			t.Fatalf("VerifyFile on a legacy file: %v", err)
		}
		return nil
	})
}
