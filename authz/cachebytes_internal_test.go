package authz

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// TestDecisionCacheByteBudgetProperty: under any sequence of puts and gets
// (random keys from a small and a large key space, entries from a few bytes
// to beyond one generation's share), the accounted bytes never exceed the
// budget, always equal the sum of the entries held, the entry bound holds,
// and an entry that fits is found right after its put.
func TestDecisionCacheByteBudgetProperty(t *testing.T) {
	t.Parallel()
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			r := rand.New(rand.NewPCG(seed, 99))
			const budget, entries = 256 << 10, 500
			c := newDecisionCache(cachePlan{}, entries, budget)
			for op := range 4000 {
				var key cacheKey
				if r.IntN(2) == 0 {
					key[0], key[1] = byte(r.IntN(256)), byte(r.IntN(4)) // few keys: replacements, promotions
				} else {
					k := r.Uint64()
					for i := range 8 {
						key[i] = byte(k >> (8 * i))
					}
				}
				if r.IntN(3) == 0 {
					c.get(key)
				} else {
					e := &cacheEntry{d: Decision{Body: strings.Repeat("b", r.IntN(12<<10)), Headers: []Pair{{Key: "x", Value: strings.Repeat("h", r.IntN(512))}}}}
					if r.IntN(10) == 0 {
						e.d.Body = strings.Repeat("B", 8<<10+r.IntN(8<<10)) // beyond a generation's share (4 KiB)
					}
					c.put(key, e)
					if entryBytes(e) <= c.entries.Limits().Bytes && c.get(key) != e {
						t.Fatalf("op %d: an entry that fits is not found after its put", op)
					}
				}
				checkCacheInvariants(t, c, budget, entries)
			}
		})
	}
}

func checkCacheInvariants(tb testing.TB, c *decisionCache, budget int64, entries int) {
	tb.Helper()
	var sum int64
	n := 0
	for _, e := range c.entries.All() {
		sum += entryBytes(e)
		n++
	}
	if got := c.bytes(); got != sum || got > budget {
		tb.Fatalf("bytes() = %d, entries hold %d, budget %d", got, sum, budget)
	}
	if n > entries {
		tb.Fatalf("%d entries held, bound %d", n, entries)
	}
}

// TestAtLeast: the key builder's size pre-check counts the strings of
// scalar and composite values and stops past the limit.
func TestAtLeast(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		value string
		n     int
		want  bool
	}{
		"short string":       {`"abc"`, 3, false},
		"long string":        {`"abcd"`, 3, true},
		"number":             {`12345`, 4, true},
		"boolean":            {`true`, 0, false},
		"array within":       {`["ab", "cd"]`, 4, false},
		"array over":         {`["ab", "cd", "e"]`, 4, true},
		"object keys count":  {`{"abc": "d"}`, 3, true},
		"nested over":        {`{"a": [{"b": "cccc"}]}`, 5, true},
		"nested within":      {`{"a": [{"b": "cccc"}]}`, 6, false},
		"set":                {`{"aaa", "bbb"}`, 5, true},
		"empty object":       {`{}`, 0, false},
		"array of booleans":  {`[true, false]`, 0, false},
		"deep array past n":  {`[["xxxxxxxx"], ["y"]]`, 8, true},
		"string exactly n":   {`"12345678"`, 8, false},
		"number exactly n":   {`1234`, 4, false},
		"object exactly n":   {`{"ab": "cd"}`, 4, false},
		"object one past n":  {`{"ab": "cde"}`, 4, true},
		"array one past n":   {`["ab", "cde"]`, 4, true},
		"null":               {`null`, 0, false},
		"string in a set":    {`{"abcdef"}`, 5, true},
		"two keys, within n": {`{"a": "b", "c": "d"}`, 4, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got := atLeast(ast.MustParseTerm(tc.value).Value, tc.n); got != tc.want {
				t.Errorf("atLeast(%s, %d) = %v, want %v", tc.value, tc.n, got, tc.want)
			}
		})
	}
}

// TestAtLeastOnScalarsDoesNotAllocate: the pre-check runs on every cache
// key path of every check. (Not parallel: AllocsPerRun.)
func TestAtLeastOnScalarsDoesNotAllocate(t *testing.T) {
	for _, v := range []ast.Value{ast.String("a string"), ast.Number("12"), ast.Boolean(true), ast.NewArray(ast.StringTerm("a"), ast.StringTerm("b"))} {
		if a := testing.AllocsPerRun(100, func() { atLeast(v, 100) }); a != 0 {
			t.Errorf("atLeast(%v) allocates %v times", v, a)
		}
	}
}
