package worldgen_test

import (
	"slices"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// index is a generated world's facts, rebuilt from the emitted entities.
type index struct {
	users   map[string]string // user → home tenant
	granted map[[2]string][]string
	owner   map[string]string      // project → owner
	roles   map[[3]string][]string // user, project, tenant → roles
}

func generate(t *testing.T, spec worldgen.Spec) (*worldgen.World, *index) {
	t.Helper()
	ix := &index{users: map[string]string{}, granted: map[[2]string][]string{}, owner: map[string]string{}, roles: map[[3]string][]string{}}
	w, err := worldgen.Generate(spec, func(e tenancy.Entity) error {
		switch e := e.(type) {
		case *tenancy.User:
			ix.users[e.ID] = e.Tenant
		case *tenancy.Project:
			ix.owner[e.ID] = e.Owner
		case *tenancy.ProjectGrant:
			ix.granted[[2]string{e.Project, e.Tenant}] = e.Roles
		case *tenancy.UserGrant:
			k := [3]string{e.User, e.Project, e.Tenant}
			ix.roles[k] = append(ix.roles[k], e.Roles...)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return w, ix
}

// The sizes of the benchmarks' worlds: the 1M world is the 200k world five
// times over.
func TestSpecSizes(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("generates 1.5M entities: not with -short or -race")
	}
	for _, c := range []struct {
		spec            worldgen.Spec
		min, max, users int
	}{
		{worldgen.Default, 200_000, 210_000, 50_000},
		{worldgen.Scale1M, 1_000_000, 1_050_000, 250_000},
	} {
		users := 0
		w, err := worldgen.Generate(c.spec, func(e tenancy.Entity) error {
			if e.Collection() == tenancy.Users {
				users++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := w.UserGrantCount(); n < c.min || n > c.max || users != c.users {
			t.Errorf("%+v: %d user grants, %d users; want %d..%d and %d", c.spec, n, users, c.min, c.max, c.users)
		}
	}
}

// A cold scenario's requests: mostly distinct, with at least 10,000
// distinct users (so as many tokens), ~80% allowed, and every expected
// answer follows from the world's data as the shipped policy reads it.
func TestColdRequests(t *testing.T) {
	for _, c := range []struct {
		name string
		spec worldgen.Spec
		n    int
		min  int // distinct subjects
	}{{"small", worldgen.Small, 500, 60}, {"200k", worldgen.Default, 20000, 10000}} {
		w, ix := generate(t, c.spec)
		reqs := w.Requests(c.n, 80, 12)
		if len(reqs) != c.n {
			t.Fatalf("%s: %d requests", c.name, len(reqs))
		}
		subjects, distinct, allowed := map[string]bool{}, map[string]bool{}, 0
		for _, r := range reqs {
			subjects[r.Subject] = true
			distinct[r.Subject+" "+r.Path+" "+r.Context["project"]+" "+r.Context["roles"]] = true
			tenant := r.Grant.Tenant
			if r.Path[:len("/t/"+tenant+"/")] != "/t/"+tenant+"/" {
				t.Fatalf("%s: path %s does not name tenant %s", c.name, r.Path, tenant)
			}
			p := r.Context["project"]
			held := ix.granted[[2]string{p, tenant}]
			if ix.owner[p] == tenant {
				held = worldgen.Roles
			}
			has := ix.roles[[3]string{r.Subject, p, tenant}]
			allow := slices.Contains(held, r.Context["roles"]) && slices.Contains(has, r.Context["roles"])
			if allow != r.Allow {
				t.Fatalf("%s: %+v: the data says allow=%v", c.name, r, allow)
			}
			if r.Allow {
				allowed++
			}
		}
		if len(subjects) < c.min || len(distinct) < c.n*97/100 {
			t.Errorf("%s: %d subjects (want >= %d), %d distinct of %d", c.name, len(subjects), c.min, len(distinct), c.n)
		}
		if pct := 100 * allowed / c.n; pct < 77 || pct > 83 {
			t.Errorf("%s: %d%% allowed, want ~80%%", c.name, pct)
		}
	}
}
