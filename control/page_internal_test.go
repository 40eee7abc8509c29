package control

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestCollectMatchesModel checks the paging mechanism shared by the audit
// and the decisions (walkers over a main bucket or per-tenant indexes,
// merged newest first, deduplicated, bounded by since/until/after, scan
// budget) against a brute-force model, on random stores in a real bbolt
// file: following next from page to page yields exactly the model's list.
func TestCollectMatchesModel(t *testing.T) {
	t.Parallel()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "p.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rng := rand.New(rand.NewPCG(3, 5))
	tenants := []string{"a", "b", "c", "d"}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for round := range 30 {
		type rec struct {
			key     []byte
			tenants []string
			keep    bool
		}
		var recs []rec
		err := db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketAudit, bucketAuditTenants} {
				_ = tx.DeleteBucket(b)
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
			main, idx := tx.Bucket(bucketAudit), tx.Bucket(bucketAuditTenants)
			n := rng.IntN(300)
			for i := range n {
				ts := base.Add(time.Duration(rng.IntN(100)) * time.Second) // many share a time
				k := auditKey(ts, uint64(i+1), uint32(rng.IntN(3)))
				var r rec
				r.key, r.keep = k, rng.IntN(4) != 0
				for _, x := range tenants {
					if rng.IntN(3) == 0 {
						r.tenants = append(r.tenants, x)
						if err := idx.Put(tenantKey(x, k), nil); err != nil {
							return err
						}
					}
				}
				doc, _ := json.Marshal(map[string]any{"k": hex.EncodeToString(k), "keep": r.keep})
				if main.Get(k) != nil {
					continue // a duplicate key: skip (its index entries are harmless duplicates)
				}
				if err := main.Put(k, doc); err != nil {
					return err
				}
				recs = append(recs, r)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var q logQuery
		if rng.IntN(2) == 0 {
			q.since = base.Add(time.Duration(rng.IntN(100)) * time.Second)
		}
		if rng.IntN(2) == 0 {
			q.until = base.Add(time.Duration(rng.IntN(100)) * time.Second)
		}
		var pick []string // nil: the main bucket
		if rng.IntN(3) != 0 {
			for _, x := range tenants {
				if rng.IntN(2) == 0 {
					pick = append(pick, x)
				}
			}
			if pick == nil {
				pick = []string{"c"}
			}
		}
		limit := 1 + rng.IntN(20)
		budget := 1 + rng.IntN(40)

		// the model
		var want []string
		slices.SortFunc(recs, func(a, b rec) int { return bytes.Compare(b.key, a.key) })
		for _, r := range recs {
			ts := time.Unix(0, int64(u64be(r.key[:8])))
			if !q.since.IsZero() && ts.Before(q.since) || !q.until.IsZero() && ts.After(q.until) || !r.keep {
				continue
			}
			if pick != nil && !slices.ContainsFunc(r.tenants, func(x string) bool { return slices.Contains(pick, x) }) {
				continue
			}
			want = append(want, hex.EncodeToString(r.key))
		}
		var got []string
		for pages := 0; ; pages++ {
			if pages > 10000 {
				t.Fatal("paging does not end")
			}
			var items []json.RawMessage
			var next string
			err := db.View(func(tx *bolt.Tx) error {
				main := tx.Bucket(bucketAudit)
				ws := walkers(main, tx.Bucket(bucketAuditTenants), pick, q.upper())
				var err error
				items, next, err = collectBudget(ws, q.lower(), limit, budget, func(k []byte) (json.RawMessage, error) {
					var v struct {
						K    string `json:"k"`
						Keep bool   `json:"keep"`
					}
					_ = json.Unmarshal(main.Get(k), &v)
					if !v.Keep {
						return nil, nil
					}
					return json.RawMessage(`"` + v.K + `"`), nil
				})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(items) > limit {
				t.Fatalf("round %d: a page of %d items, limit %d", round, len(items), limit)
			}
			for _, it := range items {
				var s string
				_ = json.Unmarshal(it, &s)
				got = append(got, s)
			}
			if next == "" {
				break
			}
			if q.after, err = hex.DecodeString(next); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d (since %v until %v tenants %v limit %d budget %d):\ngot  %v\nwant %v", round, q.since, q.until, pick, limit, budget, got, want)
		}
	}
}

func u64be(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}
