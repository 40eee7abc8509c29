package gencache

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

type val struct {
	id   int
	size int64
}

func sizeOf(v *val) int64 { return v.size }

func newTest(entries int, bytes int64, shards int) *Cache[uint64, *val] {
	return New(Config[uint64, *val]{Entries: entries, Bytes: bytes, Shards: shards, ShardOf: func(k uint64) uint64 { return k * 0x9e3779b97f4a7c15 >> 32 }, Size: sizeOf})
}

// checkInvariants: per shard, the accounted bytes equal the entries'
// sizes, no key is in both generations, each generation is within its
// limits; in all, the budget holds.
func checkInvariants(tb testing.TB, c *Cache[uint64, *val], entries int, bytes int64) {
	tb.Helper()
	var sum int64
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		var cur, prev int64
		for _, e := range sh.cur {
			cur += e.size
		}
		for k, e := range sh.prev {
			prev += e.size
			if _, dup := sh.cur[k]; dup {
				tb.Fatalf("shard %d: key %d in both generations", i, k)
			}
		}
		if cur != sh.curBytes || prev != sh.prevBytes {
			tb.Fatalf("shard %d: accounted %d+%d bytes, entries hold %d+%d", i, sh.curBytes, sh.prevBytes, cur, prev)
		}
		if len(sh.cur) > c.limits.Entries || len(sh.prev) > c.limits.Entries || cur > c.limits.Bytes || prev > c.limits.Bytes {
			tb.Fatalf("shard %d: generations of %d+%d entries, %d+%d bytes over the limits %+v", i, len(sh.cur), len(sh.prev), cur, prev, c.limits)
		}
		sum += cur + prev
		n += len(sh.cur) + len(sh.prev)
	}
	if got := c.Bytes(); got != sum || (bytes > 0 && got > bytes) {
		tb.Fatalf("Bytes() = %d, entries hold %d, budget %d", got, sum, bytes)
	}
	if got := c.Len(); got != n || got > max(entries, 2*len(c.shards)) {
		tb.Fatalf("Len() = %d, entries %d, bound %d", got, n, entries)
	}
}

// TestBudgetProperty: under any sequence of puts, gets and invalidations
// (few keys: replacements and promotions; many keys: swaps; values from 0
// bytes to beyond a generation's share), the invariants hold, a value that
// fits is found right after its Put, one that does not is refused, and a
// Get returns the last value Put under its key or nothing.
func TestBudgetProperty(t *testing.T) {
	t.Parallel()
	for _, shards := range []int{1, 4, 32} {
		for seed := range uint64(6) {
			t.Run(fmt.Sprint(shards, "/", seed), func(t *testing.T) {
				t.Parallel()
				r := rand.New(rand.NewPCG(seed, uint64(shards)))
				entries, budget := 20+r.IntN(500), int64(0)
				if seed%3 != 0 { // some without a byte bound
					budget = int64(64<<10 + r.IntN(256<<10))
				}
				c := newTest(entries, budget, shards)
				last := map[uint64]*val{}
				for op := range 3000 {
					k := r.Uint64()
					if r.IntN(2) == 0 {
						k = uint64(r.IntN(64))
					}
					switch x := r.IntN(100); {
					case x < 35:
						if v, ok := c.Get(k); ok && v != last[k] {
							t.Fatalf("op %d: Get(%d) = %v, last put %v", op, k, v, last[k])
						}
					case x < 99:
						v := &val{id: op, size: int64(r.IntN(4 << 10))}
						if r.IntN(10) == 0 {
							v.size = c.limits.Bytes + int64(r.IntN(3)) - 1 // about one generation's share
						}
						stored := c.Put(k, v)
						if stored != (v.size <= c.limits.Bytes) {
							t.Fatalf("op %d: Put of %d bytes stored=%v, a generation holds %d", op, v.size, stored, c.limits.Bytes)
						}
						if stored {
							last[k] = v
							if got, ok := c.Get(k); !ok || got != v {
								t.Fatalf("op %d: a value that fits is not found after its Put", op)
							}
						}
					default:
						c.Invalidate()
						clear(last)
						if c.Len() != 0 || c.Bytes() != 0 {
							t.Fatalf("op %d: %d entries, %d bytes after Invalidate", op, c.Len(), c.Bytes())
						}
					}
					checkInvariants(t, c, entries, budget)
				}
			})
		}
	}
}

// TestHotEntrySurvivesSwaps: an entry read between every insert stays,
// however many other keys pass through; the oldest of the others go.
func TestHotEntrySurvivesSwaps(t *testing.T) {
	t.Parallel()
	c := newTest(4, 0, 1) // 2 per generation
	hot := &val{id: -1}
	c.Put(1<<40, hot)
	for i := range uint64(100) {
		c.Put(i, &val{id: int(i)})
		if v, ok := c.Get(1 << 40); !ok || v != hot {
			t.Fatalf("hot entry evicted after %d inserts", i+1)
		}
	}
	if _, ok := c.Get(0); ok {
		t.Fatal("the oldest entry must go")
	}
}

// TestPutAtEpoch: a value computed before an Invalidate is dropped; one
// computed after it is stored.
func TestPutAtEpoch(t *testing.T) {
	t.Parallel()
	c := newTest(10, 0, 4)
	before := c.Epoch()
	c.Invalidate()
	if c.PutAt(before, 1, &val{}) {
		t.Fatal("a value from before the invalidation was stored")
	}
	if _, ok := c.Get(1); ok {
		t.Fatal("a value from before the invalidation is found")
	}
	if !c.PutAt(c.Epoch(), 1, &val{}) {
		t.Fatal("a current value was dropped")
	}
}

// TestConcurrentInvalidate: whatever the interleaving of PutAt and
// Invalidate, no value of an old epoch stays after an Invalidate returns.
// (Run with -race.)
func TestConcurrentInvalidate(t *testing.T) {
	t.Parallel()
	c := newTest(1000, 1<<20, 8)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ep := c.Epoch()
				c.PutAt(ep, uint64(w)<<32|i%500, &val{id: int(ep), size: 100})
				c.Get(i % 500)
			}
		})
	}
	for range 200 {
		c.Invalidate()
		ep := c.Epoch()
		for _, v := range c.All() {
			if uint64(v.id) < ep { // PutAt of an older epoch: refused since
				close(stop)
				wg.Wait()
				t.Fatalf("a value of epoch %d held after the Invalidate that started epoch %d", v.id, ep)
			}
		}
	}
	close(stop)
	wg.Wait()
	checkInvariants(t, c, 1000, 1<<20)
}

// TestGetAllocations: a hit in either generation allocates nothing once
// the entry is current. (Not parallel: AllocsPerRun.)
func TestGetAllocations(t *testing.T) {
	c := New(Config[[32]byte, int]{Entries: 100, Shards: 4, ShardOf: func(k [32]byte) uint64 { return uint64(k[0]) }})
	var k [32]byte
	c.Put(k, 1)
	if a := testing.AllocsPerRun(200, func() { c.Get(k) }); a != 0 {
		t.Errorf("Get allocates %v times", a)
	}
}
