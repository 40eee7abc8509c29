package main

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestLineDiffProperty: for random pairs of texts (few distinct lines, so
// that they share many), the line diff rebuilds both texts exactly and keeps
// as many lines as a longest common subsequence (computed here by the
// quadratic table that fmt used to run on every file). Blank lines and a
// missing final newline are among the cases.
func TestLineDiffProperty(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(9, 9))
	words := []string{"", "a", "b", "allow if {", "\tinput.x", "}", "package p"}
	text := func() string {
		n := r.IntN(30)
		lines := make([]string, n)
		for i := range lines {
			lines[i] = words[r.IntN(len(words))]
		}
		s := strings.Join(lines, "\n")
		if n > 0 && r.IntN(4) > 0 {
			s += "\n"
		}
		return s
	}
	for range 500 {
		a, b := text(), text()
		var gotA, gotB []string
		kept := 0
		for _, o := range lineDiff(a, b) {
			if o.kind != '+' {
				gotA = append(gotA, o.text)
			}
			if o.kind != '-' {
				gotB = append(gotB, o.text)
			}
			if o.kind == ' ' {
				kept++
			}
		}
		x, y := lines(a), lines(b)
		if strings.Join(gotA, "\n") != strings.Join(x, "\n") || len(gotA) != len(x) {
			t.Fatalf("diff of %q and %q does not rebuild the first: %q", a, b, gotA)
		}
		if strings.Join(gotB, "\n") != strings.Join(y, "\n") || len(gotB) != len(y) {
			t.Fatalf("diff of %q and %q does not rebuild the second: %q", a, b, gotB)
		}
		if want := lcsLen(x, y); kept != want {
			t.Fatalf("diff of %q and %q keeps %d lines, a longest common subsequence has %d", a, b, kept, want)
		}
	}
}

func lines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func lcsLen(x, y []string) int {
	t := make([][]int, len(x)+1)
	for i := range t {
		t[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				t[i][j] = t[i+1][j+1] + 1
			} else {
				t[i][j] = max(t[i+1][j], t[i][j+1])
			}
		}
	}
	return t[0][0]
}
