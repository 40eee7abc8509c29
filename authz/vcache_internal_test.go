package authz

import (
	"math/rand/v2"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// TestVirtualCacheAgreesWithTopdowns drives the flat virtual cache and
// topdown's own through the same random Push, Pop, Put and Get sequences
// (keys from a small alphabet, so that prefixes, repeats, values put after
// undefined and hash-index thresholds all occur) and requires the same
// answer to every Get, then the same after the cache went through the pool.
func TestVirtualCacheAgreesWithTopdowns(t *testing.T) {
	parts := []*ast.Term{ast.VarTerm("data"), ast.StringTerm("a"), ast.StringTerm("b"), ast.StringTerm("c"),
		ast.NumberTerm("1"), ast.BooleanTerm(true), ast.ArrayTerm(ast.StringTerm("x"), ast.NumberTerm("2")),
		ast.ObjectTerm(ast.Item(ast.StringTerm("k"), ast.StringTerm("v")))}
	values := []*ast.Term{nil, ast.StringTerm("v1"), ast.NumberTerm("2"), ast.ObjectTerm(), ast.BooleanTerm(false)}
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		keys := 4 + rng.IntN(120) // some runs stay below the index threshold, some go far past it
		randRef := func() ast.Ref {
			r := ast.Ref{parts[0]}
			for range 1 + rng.IntN(3) {
				r = append(r, parts[1+rng.IntN(min(len(parts)-1, 1+keys/8))])
			}
			if k := rng.IntN(keys); k > 8 {
				r = append(r, ast.IntNumberTerm(k))
			}
			return r
		}
		ours := getVirtualCache()
		theirs := topdown.NewVirtualCache()
		depth := 0
		for step := range 600 {
			switch op := rng.IntN(20); {
			case op == 0 && depth < 4:
				ours.Push()
				theirs.Push()
				depth++
			case op == 1 && depth > 0:
				ours.Pop()
				theirs.Pop()
				depth--
			case op < 9:
				ref, v := randRef(), values[rng.IntN(len(values))]
				// a fresh copy: the cache must not depend on the caller's slice
				ours.Put(append(ast.Ref(nil), ref...), v)
				theirs.Put(ref, v)
			default:
				ref := randRef()
				v1, u1 := ours.Get(ref)
				v2, u2 := theirs.Get(ref)
				if u1 != u2 || (v1 == nil) != (v2 == nil) || (v1 != nil && !v1.Equal(v2)) {
					t.Fatalf("seed %d step %d: Get(%v) = (%v, %v), topdown's (%v, %v)", seed, step, ref, v1, u1, v2, u2)
				}
			}
		}
		if got, want := len(ours.Keys()), len(theirs.Keys()); got != want {
			t.Fatalf("seed %d: %d keys with a value, topdown's cache has %d", seed, got, want)
		}
		putVirtualCache(ours)
		again := getVirtualCache()
		if v, u := again.Get(randRef()); v != nil || u {
			t.Fatalf("seed %d: a pooled cache still answers (%v, %v)", seed, v, u)
		}
		putVirtualCache(again)
	}
}

// TestVirtualCacheCallerSliceReuse: a key is kept as a copy, so a caller
// that reuses its reference's slice (as topdown does with plugged
// references) does not change what was cached.
func TestVirtualCacheCallerSliceReuse(t *testing.T) {
	c := getVirtualCache()
	defer putVirtualCache(c)
	ref := ast.MustParseRef("data.p.q")
	c.Put(ref, ast.StringTerm("q"))
	ref[2] = ast.StringTerm("r")
	if v, _ := c.Get(ast.MustParseRef("data.p.q")); v == nil || !v.Equal(ast.StringTerm("q")) {
		t.Fatalf("data.p.q = %v after the caller reused its slice, want \"q\"", v)
	}
	if v, u := c.Get(ast.MustParseRef("data.p.r")); v != nil || u {
		t.Fatalf("data.p.r = (%v, %v), want not cached", v, u)
	}
}
