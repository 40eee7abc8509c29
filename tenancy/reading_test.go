package tenancy_test

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// The regular expressions the shipped policy read raw paths with before
// PathTenant (policies/gatehouse/testing_test.rego keeps them in Rego).
var (
	refAmbiguous = regexp.MustCompile(`^$|^[^/]|//|\\|;|%(?:2[eEfF]|5[cC]|3[bB])|/\.\.?(?:/|$)|^/[^/]*(?:/[^/]*)?%`)
	refPrefix    = regexp.MustCompile(`^/[tT]/`)
	refID        = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,128}$`)
)

func refPathTenant(path string) tenancy.Reading {
	raw := strings.Split(path, "?")[0]
	switch {
	case refAmbiguous.MatchString(raw):
		return tenancy.Reading{Invalid: tenancy.PathAmbiguous}
	case !refPrefix.MatchString(raw):
		return tenancy.Reading{}
	}
	x := strings.Split(raw, "/")[2]
	if !refID.MatchString(x) {
		return tenancy.Reading{Invalid: tenancy.PathInvalidTenant}
	}
	return tenancy.Reading{Tenant: x, Named: true}
}

// TestPathTenantIsTheRegularExpressions: PathTenant, written out without
// regular expressions, reads random paths over an alphabet of the bytes
// that matter (and some that do not) exactly as the expressions do.
func TestPathTenantIsTheRegularExpressions(t *testing.T) {
	t.Parallel()
	alphabet := []string{"/", "/", "/", ".", ".", "t", "T", "%", "2", "5", "3", "e", "E", "f", "F", "c", "C", "b", "B", "\\", ";", "?", "a", "-", "_", " ", "é", "%2", "%5", "%3", "x"}
	rng := rand.New(rand.NewPCG(3, 5))
	for range 300000 {
		var b strings.Builder
		if rng.IntN(3) > 0 {
			b.WriteString("/")
		}
		for range rng.IntN(12) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		path := b.String()
		if got, want := tenancy.PathTenant(path), refPathTenant(path); got != want {
			t.Fatalf("%q: %+v, the expressions say %+v", path, got, want)
		}
	}
	for _, n := range []int{127, 128, 129} {
		path := "/t/" + strings.Repeat("a", n) + "/x"
		if got, want := tenancy.PathTenant(path), refPathTenant(path); got != want {
			t.Fatalf("%d-byte tenant: %+v, want %+v", n, got, want)
		}
	}
}
