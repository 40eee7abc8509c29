package replica_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// The shipped AuthZEN policy (policies/authzen) over random worlds:
//
//   - an evaluation {user U, project P in tenant X, action ROLE or access}
//     answers as a Check of the shipped Envoy policy for U's token (of the
//     issuer the subject names), path /t/X/..., route project P (roles
//     ROLE): same verdict and the same reason;
//   - each search returns exactly what brute force finds by evaluating
//     every candidate of the world (users, tenants, projects, roles).
//
// GATEHOUSE_RANDOM_WORLDS sets the number of worlds (default 25).
func TestAuthZENAgreesWithCheck(t *testing.T) {
	t.Parallel()
	allow := ast.MustParseRef("data.authzen.allow")
	for seed := range randomWorlds(t) {
		t.Run(fmt.Sprintf("world%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(seed), 0xa07e))
			src := newSource(t)
			w := genWorld(t, rng, src)
			st := openStore(t, t.TempDir())
			loadSnapshot(t, st, src)
			v, keys := rnIssuers(t, w)
			e := rnEngine(t, st, v, policyDir(), 0, replica.Builtins())
			sess, err := e.Session(context.Background(), 0)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { sess.Close() }()
			type question struct {
				rule ast.Ref
				in   map[string]any
			}
			var asked []question

			users := append(slices.Clone(w.users), "ghost")
			tenants := append(slices.Clone(w.tenants), "nowhere")
			projects := append(slices.Clone(w.projects), "nope")
			actions := append(slices.Clone(rnRoles), "root", "access")
			// issuers whose tokens carry no roles and are bound to no tenant:
			// an AuthZEN subject names its issuer, a Check's token is of it
			issuerFor := func(u string) string {
				switch own := w.issuer[u]; {
				case (own == rnPlain || own == rnOther) && rng.IntN(4) > 0:
					return own
				case rng.IntN(5) == 0:
					return rnOther
				}
				return rnPlain
			}
			eval := func(rule ast.Ref, in map[string]any) ast.Value {
				t.Helper()
				if !rule.Equal(allow) || rng.IntN(4) == 0 {
					asked = append(asked, question{rule, in})
				}
				val, err := ast.InterfaceToValue(in)
				if err != nil {
					t.Fatal(err)
				}
				out, _, err := sess.Eval(rule, val.(ast.Object))
				if err != nil {
					t.Fatalf("%v %v: %v", rule, in, err)
				}
				return out
			}
			decision := func(in map[string]any) (bool, string) {
				t.Helper()
				obj, ok := eval(allow, in).(ast.Object)
				if !ok {
					t.Fatalf("no decision object for %v", in)
				}
				d := obj.Get(ast.StringTerm("decision")).Value.(ast.Boolean)
				r, _ := obj.Get(ast.StringTerm("context")).Value.(ast.Object).Get(ast.StringTerm("reason")).Value.(ast.String)
				return bool(d), string(r)
			}
			subject := func(u, iss string) map[string]any {
				s := map[string]any{"type": "user", "id": u}
				if iss != "" {
					s["properties"] = map[string]any{"issuer": iss}
				}
				return s
			}
			project := func(p, x string) map[string]any {
				r := map[string]any{"type": "project", "id": p}
				if x != "" {
					r["properties"] = map[string]any{"tenant": x}
				}
				return r
			}
			action := func(a string) map[string]any { return map[string]any{"name": a} }

			// evaluations against Checks
			for range 150 {
				u, p, x, a := pick(rng, users), pick(rng, projects), pick(rng, tenants), pick(rng, actions)
				if len(w.grants) > 0 && rng.IntN(2) == 0 {
					g := pick(rng, w.grants)
					u, p, x = g[0], g[1], g[2]
				}
				iss := issuerFor(u)
				got, reason := decision(map[string]any{"subject": subject(u, iss), "resource": project(p, x), "action": action(a)})

				route := map[string]string{"project": p}
				if a != "access" {
					route["roles"] = a
				}
				tok := testutil.MintJWT(t, jwt.SigningMethodES256, keys[iss], "", testutil.Claims(iss, u, nil))
				in, err := envoy.Input(testutil.CheckRequest(testutil.Request{
					Path: "/t/" + x + "/items", Host: "api.example.com",
					Headers: map[string]string{"authorization": "Bearer " + tok}, ContextExtensions: route,
				}))
				if err != nil {
					t.Fatal(err)
				}
				d := decide(t, e, &authz.Request{Input: in, Authorization: "Bearer " + tok})
				if got != d.Allowed || reason != d.Reason {
					t.Fatalf("user %s (issuer %s) %s on %s in %s: AuthZEN %v (%s), Check %v (%s)", u, iss, a, p, x, got, reason, d.Allowed, d.Reason)
				}
			}

			// searches against brute force
			ids := func(v ast.Value, key string) []string {
				var out []string
				if v == nil {
					return out
				}
				v.(ast.Set).Foreach(func(t *ast.Term) {
					out = append(out, string(t.Value.(ast.Object).Get(ast.StringTerm(key)).Value.(ast.String)))
				})
				slices.Sort(out)
				return out
			}
			check := func(what string, got, want []string) {
				t.Helper()
				if want == nil {
					want = []string{}
				}
				slices.Sort(want)
				if got == nil {
					got = []string{}
				}
				if !slices.Equal(got, want) {
					t.Fatalf("%s: search %v, brute force %v", what, got, want)
				}
			}
			searchSubjects := ast.MustParseRef("data.authzen.search_subjects")
			searchResources := ast.MustParseRef("data.authzen.search_resources")
			searchActions := ast.MustParseRef("data.authzen.search_actions")
			for range 25 {
				p, x, a := pick(rng, projects), pick(rng, tenants), pick(rng, actions)
				if rng.IntN(4) == 0 {
					x = "" // each user's home tenant
				}
				iss := pick(rng, []string{"", rnPlain, rnOther})
				var want []string
				for _, u := range users {
					if ok, _ := decision(map[string]any{"subject": subject(u, iss), "resource": project(p, x), "action": action(a)}); ok {
						want = append(want, u)
					}
				}
				sub := map[string]any{"type": "user"}
				if iss != "" {
					sub["properties"] = map[string]any{"issuer": iss}
				}
				check(fmt.Sprintf("who may %s on %s in %q (issuer %q)", a, p, x, iss),
					ids(eval(searchSubjects, map[string]any{"subject": sub, "resource": project(p, x), "action": action(a)}), "id"), want)

				u := pick(rng, users)
				iss = issuerFor(u)
				want = nil
				for _, x := range tenants {
					res := map[string]any{"type": "tenant", "id": x, "properties": map[string]any{"project": p}}
					if ok, _ := decision(map[string]any{"subject": subject(u, iss), "resource": res, "action": action(a)}); ok {
						want = append(want, x)
					}
				}
				check(fmt.Sprintf("tenants where %s may %s on %s", u, a, p),
					ids(eval(searchResources, map[string]any{"subject": subject(u, iss), "resource": map[string]any{"type": "tenant", "properties": map[string]any{"project": p}}, "action": action(a)}), "id"), want)

				want = nil
				for _, x := range tenants {
					if ok, _ := decision(map[string]any{"subject": subject(u, iss), "resource": map[string]any{"type": "tenant", "id": x}, "action": action(a)}); ok {
						want = append(want, x)
					}
				}
				check(fmt.Sprintf("tenants where %s may %s", u, a),
					ids(eval(searchResources, map[string]any{"subject": subject(u, iss), "resource": map[string]any{"type": "tenant"}, "action": action(a)}), "id"), want)

				want = nil
				for _, p := range projects {
					for _, x := range tenants {
						if ok, _ := decision(map[string]any{"subject": subject(u, iss), "resource": project(p, x), "action": action(a)}); ok {
							want = append(want, p+"@"+x)
						}
					}
				}
				var gotPX []string
				if v := eval(searchResources, map[string]any{"subject": subject(u, iss), "resource": map[string]any{"type": "project"}, "action": action(a)}); v != nil {
					v.(ast.Set).Foreach(func(t *ast.Term) {
						var e struct {
							ID         string `json:"id"`
							Properties struct{ Tenant string }
						}
						b, _ := json.Marshal(astJSON(t.Value))
						_ = json.Unmarshal(b, &e)
						gotPX = append(gotPX, e.ID+"@"+e.Properties.Tenant)
					})
				}
				slices.Sort(gotPX)
				check(fmt.Sprintf("projects where %s may %s", u, a), gotPX, want)

				x = pick(rng, tenants)
				for _, res := range []map[string]any{project(p, x), project(p, ""), {"type": "tenant", "id": x}, {"type": "tenant", "id": x, "properties": map[string]any{"project": p}}} {
					want = nil
					for _, a := range actions {
						if ok, _ := decision(map[string]any{"subject": subject(u, iss), "resource": res, "action": action(a)}); ok {
							want = append(want, a)
						}
					}
					check(fmt.Sprintf("what %s may do on %v", u, res),
						ids(eval(searchActions, map[string]any{"subject": subject(u, iss), "resource": res}), "name"), want)
				}
			}

			// random writes: the decision cache (which recorded the reads of
			// the built-ins, and knows when a search scanned) must answer as
			// fresh evaluations do
			fresh := rnEngine(t, st, v, policyDir(), -1, replica.Builtins())
			sess.Close()
			rng.Shuffle(len(asked), func(i, j int) { asked[i], asked[j] = asked[j], asked[i] })
			asked = asked[:min(len(asked), 40)]
			for i := range 4 {
				if i%2 == 0 {
					mutate(t, rng, w, src, st)
				} else {
					grantAlike(t, rng, w, src, st, i)
				}
				sc, err := e.Session(context.Background(), 0)
				if err != nil {
					t.Fatal(err)
				}
				sf, err := fresh.Session(context.Background(), 0)
				if err != nil {
					t.Fatal(err)
				}
				for _, q := range asked {
					vc, _ := ast.InterfaceToValue(q.in)
					vf, _ := ast.InterfaceToValue(q.in)
					gc, _, err1 := sc.Eval(q.rule, vc.(ast.Object))
					gf, _, err2 := sf.Eval(q.rule, vf.(ast.Object))
					if err1 != nil || err2 != nil {
						t.Fatal(err1, err2)
					}
					if fmt.Sprint(gc) != fmt.Sprint(gf) {
						t.Fatalf("after writes, %v %v:\ncached:    %v\nevaluated: %v", q.rule, q.in, gc, gf)
					}
				}
				sc.Close()
				sf.Close()
			}
			sess, _ = e.Session(context.Background(), 0)
		})
	}
}

func astJSON(v ast.Value) any {
	j, err := ast.JSON(v)
	if err != nil {
		panic(err)
	}
	return j
}

// grantAlike gives a random user a copy of an existing user grant (same
// project, tenant and roles): someone new holds roles where searches
// looked.
func grantAlike(t testing.TB, rng *rand.Rand, w rworld, src *source, st *replica.Store, n int) {
	if len(w.users) == 0 {
		return
	}
	var grants []*tenancy.UserGrant
	_ = src.db.View(func(tx *bolt.Tx) error {
		for i := range 14 {
			if e, _ := tenancy.Get(tx, tenancy.UserGrants, fmt.Sprintf("ug%d", i)); e != nil {
				grants = append(grants, e.(*tenancy.UserGrant))
			}
		}
		return nil
	})
	if len(grants) == 0 {
		return
	}
	g := pick(rng, grants)
	tryWrite(t, src, st, []tenancy.Op{put(tenancy.UserGrants, map[string]any{
		"id": fmt.Sprintf("alike%d", n), "user": pick(rng, w.users), "project": g.Project, "tenant": g.Tenant, "roles": g.Roles,
	})})
}

// The decision cache serves AuthZEN answers only while they hold: a
// revoked grant turns a cached evaluation false (its keyed reads changed),
// and a new grant shows in a cached search (a search lists an index: its
// answer holds for its own data version only).
func TestAuthZENDecisionCacheFollowsWrites(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	for _, op := range []tenancy.Op{
		put(tenancy.Tenants, map[string]any{"id": "t0", "parent": nil, "status": "active"}),
		put(tenancy.Projects, map[string]any{"id": "p0", "owner": "t0", "roles": []string{"reader"}}),
		put(tenancy.Users, map[string]any{"id": "u0", "tenant": "t0", "status": "active"}),
		put(tenancy.Users, map[string]any{"id": "u1", "tenant": "t0", "status": "active"}),
		put(tenancy.UserGrants, map[string]any{"id": "ug0", "user": "u0", "project": "p0", "tenant": "t0", "roles": []string{"reader"}}),
	} {
		if !tryWrite(t, src, nil, []tenancy.Op{op}) {
			t.Fatalf("write %v refused", op)
		}
	}
	st := openStore(t, t.TempDir())
	loadSnapshot(t, st, src)
	v, _ := rnIssuers(t, rworld{})
	e := rnEngine(t, st, v, policyDir(), 0, replica.Builtins())
	resource := map[string]any{"type": "project", "id": "p0", "properties": map[string]any{"tenant": "t0"}}
	ask := func(rule string, in map[string]any) (string, authz.CacheResult) {
		t.Helper()
		sess, err := e.Session(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		val, _ := ast.InterfaceToValue(in)
		out, res, err := sess.Eval(ast.MustParseRef("data.authzen."+rule), val.(ast.Object))
		if err != nil {
			t.Fatal(err)
		}
		if obj, ok := out.(ast.Object); ok && rule == "allow" {
			return obj.Get(ast.StringTerm("decision")).String(), res
		}
		return fmt.Sprint(out), res
	}
	evaluation := map[string]any{"subject": map[string]any{"type": "user", "id": "u0"}, "action": map[string]any{"name": "reader"}, "resource": resource}
	search := map[string]any{"subject": map[string]any{"type": "user"}, "action": map[string]any{"name": "reader"}, "resource": resource}
	for _, want := range []authz.CacheResult{"miss", "hit"} {
		if d, res := ask("allow", evaluation); d != "true" || res != want {
			t.Fatalf("evaluation: %s (%s), want true (%s)", d, res, want)
		}
		if got, res := ask("search_subjects", search); got != `{{"id": "u0", "type": "user"}}` || res != want {
			t.Fatalf("search: %s (%s), want u0 (%s)", got, res, want)
		}
	}
	if !tryWrite(t, src, st, []tenancy.Op{put(tenancy.UserGrants, map[string]any{"id": "ug1", "user": "u1", "project": "p0", "tenant": "t0", "roles": []string{"reader"}})}) {
		t.Fatal("grant refused")
	}
	if got, _ := ask("search_subjects", search); got != `{{"id": "u0", "type": "user"}, {"id": "u1", "type": "user"}}` {
		t.Fatalf("search after a new grant: %s", got)
	}
	if d, res := ask("allow", evaluation); d != "true" || res != "hit" {
		t.Fatalf("an evaluation whose reads did not change: %s (%s), want a hit", d, res)
	}
	if !tryWrite(t, src, st, []tenancy.Op{{Op: tenancy.OpDelete, Collection: tenancy.UserGrants, ID: "ug0"}}) {
		t.Fatal("revocation refused")
	}
	if d, _ := ask("allow", evaluation); d != "false" {
		t.Fatalf("evaluation after revocation: %s", d)
	}
}
