package bundle_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
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
			e := rnEngine(t, st, v, policyDir(), 0, bundle.Builtins())
			sess, err := e.Session(context.Background(), 0)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()

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
