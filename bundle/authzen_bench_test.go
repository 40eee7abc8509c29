package bundle_test

import (
	"context"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
)

// AuthZEN at scale: the same questions as BenchmarkCheckTenancy* asked as
// AuthZEN evaluations (decision cache off: every answer evaluated), against
// a Check of the same question in the same run; and the three searches.
// Their cost follows the answer (the users of one project in one tenant,
// the tenants of one user), not the data: compare 200k and 1M.
//
//	go test ./bundle -run '^$' -bench 'AuthZEN' -benchtime 2000x

func BenchmarkAuthZEN200k(b *testing.B) { benchAuthZEN(b, "200k", worldgen.Default) }

// BenchmarkAuthZEN1M: five times the data (1,000,000 user grants); building
// the world takes a minute the first time.
func BenchmarkAuthZEN1M(b *testing.B) { benchAuthZEN(b, "1M", worldgen.Scale1M) }

func benchAuthZEN(b *testing.B, name string, spec worldgen.Spec) {
	st, w := buildWorld(b, name, spec)
	v, mint := newVerifier(b)
	e := newEngine(b, st, v, -1)
	reqs := w.Requests(256, 80, 7)
	ctx := context.Background()
	allow := ast.MustParseRef("data.authzen.allow")
	inputs := make([]ast.Object, len(reqs))
	for i, r := range reqs {
		action := "access"
		if role := r.Context["roles"]; role != "" {
			action = role
		}
		v, err := ast.InterfaceToValue(map[string]any{
			"subject":  map[string]any{"type": "user", "id": r.Subject},
			"resource": map[string]any{"type": "project", "id": r.Context["project"], "properties": map[string]any{"tenant": r.Grant.Tenant}},
			"action":   map[string]any{"name": action},
		})
		if err != nil {
			b.Fatal(err)
		}
		inputs[i] = v.(ast.Object)
	}
	evaluate := func(i int) bool {
		sess, err := e.Session(ctx, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer sess.Close()
		out, _, err := sess.Eval(allow, inputs[i].Copy())
		if err != nil {
			b.Fatal(err)
		}
		return out.(ast.Object).Get(ast.StringTerm("decision")).Value.(ast.Boolean) == true
	}
	for i, r := range reqs {
		if evaluate(i) != r.Allow {
			b.Fatalf("request %d (%+v): AuthZEN answers %v", i, r, !r.Allow)
		}
	}

	b.Run("evaluation", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			evaluate(i % len(inputs))
		}
	})
	b.Run("check", func(b *testing.B) {
		tokens := map[string]string{}
		for _, r := range reqs {
			if tokens[r.Subject] == "" {
				tokens[r.Subject] = mint(r.Subject)
			}
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			r := reqs[i%len(reqs)]
			cr := r.CheckRequest(tokens[r.Subject])
			prep, err := envoy.Prepare(cr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := e.Decide(ctx, &authz.Request{
				Build:         func(n *authz.Need) (ast.Object, error) { return prep.Input(n), nil },
				Authorization: "Bearer " + tokens[r.Subject],
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	search := func(b *testing.B, rule string, in func(r worldgen.Request) map[string]any) {
		ref := ast.MustParseRef("data.authzen." + rule)
		ins := make([]ast.Object, len(reqs))
		for i, r := range reqs {
			v, err := ast.InterfaceToValue(in(r))
			if err != nil {
				b.Fatal(err)
			}
			ins[i] = v.(ast.Object)
		}
		results := 0
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			sess, err := e.Session(ctx, 0)
			if err != nil {
				b.Fatal(err)
			}
			out, _, err := sess.Eval(ref, ins[i%len(ins)].Copy())
			sess.Close()
			if err != nil {
				b.Fatal(err)
			}
			if s, ok := out.(ast.Set); ok {
				results += s.Len()
			}
		}
		b.ReportMetric(float64(results)/float64(b.N), "results/op")
	}
	b.Run("search_subjects", func(b *testing.B) {
		search(b, "search_subjects", func(r worldgen.Request) map[string]any {
			return map[string]any{
				"subject":  map[string]any{"type": "user"},
				"resource": map[string]any{"type": "project", "id": r.Grant.Project, "properties": map[string]any{"tenant": r.Grant.Tenant}},
				"action":   map[string]any{"name": "access"},
			}
		})
	})
	b.Run("search_resources", func(b *testing.B) {
		search(b, "search_resources", func(r worldgen.Request) map[string]any {
			return map[string]any{
				"subject":  map[string]any{"type": "user", "id": r.Subject},
				"resource": map[string]any{"type": "tenant", "properties": map[string]any{"project": r.Grant.Project}},
				"action":   map[string]any{"name": "access"},
			}
		})
	})
	b.Run("search_actions", func(b *testing.B) {
		search(b, "search_actions", func(r worldgen.Request) map[string]any {
			return map[string]any{
				"subject":  map[string]any{"type": "user", "id": r.Subject},
				"resource": map[string]any{"type": "project", "id": r.Grant.Project, "properties": map[string]any{"tenant": r.Grant.Tenant}},
			}
		})
	})
}
