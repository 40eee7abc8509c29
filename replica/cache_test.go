package replica_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// TestDecisionCacheFollowsData: a cached decision is never served once the
// data it read changed, and cached and uncached engines always agree.
func TestDecisionCacheFollowsData(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	st := openStore(t, t.TempDir())
	loadSnapshot(t, st, src)
	v, mint := newVerifier(t)
	cached := newEngine(t, st, v, 0)
	uncached := newEngine(t, st, v, -1)

	type req struct {
		name          string
		sub, path, pj string
		roles         string
	}
	reqs := []req{
		{"bob developer", "bob", "/t/beta/items/1", "tk", ""},
		{"bob again, another item", "bob", "/t/beta/items/2", "tk", ""},
		{"alice accountant in beta", "alice", "/t/beta/books", "tk", "accountant"},
		{"alice in acme", "alice", "/t/acme/books", "tk", "accountant"},
		{"bob wants accountant", "bob", "/t/beta/x", "tk", "accountant"},
	}
	tokens := map[string]string{"bob": mint("bob"), "alice": mint("alice")}
	check := func(stage string) map[string]bool {
		out := map[string]bool{}
		for _, r := range reqs {
			cr := worldgen.Request{Subject: r.sub, Path: r.path, Context: map[string]string{"project": r.pj, "roles": r.roles}}.CheckRequest(tokens[r.sub])
			var got [2]*authz.Decision
			for i, e := range []*authz.Engine{cached, cached, uncached} {
				in, err := envoy.Input(cr)
				if err != nil {
					t.Fatal(err)
				}
				d, err := e.Decide(context.Background(), &authz.Request{Input: in, Authorization: "Bearer " + tokens[r.sub]})
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					got[0] = d
					continue
				}
				if d.Allowed != got[0].Allowed || d.Reason != got[0].Reason || d.Body != got[0].Body || len(d.Headers) != len(got[0].Headers) {
					t.Fatalf("%s / %s: engines disagree: %+v vs %+v", stage, r.name, got[0], d)
				}
				if d.TenancyRevision != st.State().Revision {
					t.Fatalf("%s / %s: decision reports revision %d, data is at %d", stage, r.name, d.TenancyRevision, st.State().Revision)
				}
			}
			out[r.name] = got[0].Allowed
		}
		return out
	}
	before := check("initial")
	if !before["bob developer"] || !before["alice accountant in beta"] || before["bob wants accountant"] || before["alice in acme"] {
		t.Fatalf("initial decisions = %v", before)
	}

	apply := func(ops string) {
		t.Helper()
		if err := st.ApplyRevisions([]tenancy.FeedLine{src.write(ops)}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	// an unrelated write: cached decisions stay valid (and agree)
	apply(`[{"op":"put","collection":"users","value":{"id":"zed","tenant":"acme"}}]`)
	check("unrelated write")

	// revoke bob's grant: his requests are denied at once
	apply(`[{"op":"delete","collection":"user_grants","id":"ug-bob"}]`)
	after := check("revoked")
	if after["bob developer"] || after["bob again, another item"] {
		t.Fatal("a revoked grant still allowed a request")
	}
	if !after["alice accountant in beta"] {
		t.Fatal("alice lost access through an unrelated revocation")
	}
	// suspend the service provider: its customer tenant is cut off
	apply(`[{"op":"put","collection":"tenants","value":{"id":"acme","name":"ACME","kind":"service_provider","status":"suspended"}}]`)
	if check("suspended")["alice accountant in beta"] {
		t.Fatal("a suspended provider's customer still allowed")
	}
}

// TestDecisionCacheAcrossFileSwaps: a decision cached from one cache file
// is never served once another file was swapped in, even at the same
// revision, or at a later revision whose documents carry the same mod
// revisions (a control endpoint that lost its data and was re-provisioned,
// a damaged file rebuilt).
func TestDecisionCacheAcrossFileSwaps(t *testing.T) {
	t.Parallel()
	const bobDeveloperOnly = `[{"op":"put","collection":"user_grants","value":{"id":"ug-bob","user":"bob","project":"tk","tenant":"beta","roles":["accountant"]}}]`
	cases := map[string]struct {
		first, second func(*source)
	}{
		"same revision, the grant gone": {
			first: func(s *source) { s.write(world) },
			second: func(s *source) {
				s.write(world[:strings.LastIndex(world, `{"op":"put","collection":"user_grants","value":{"id":"ug-bob"`)] + `{"op":"put","collection":"users","value":{"id":"zed","tenant":"acme"}}]`)
			},
		},
		"same revision, same mod revisions, other roles": {
			first:  func(s *source) { s.write(world) },
			second: func(s *source) { s.write(world[:len(world)-1] + "," + bobDeveloperOnly[1:]) },
		},
		"later revision, documents of the same mod revision": {
			first: func(s *source) { s.write(world) },
			second: func(s *source) {
				s.write(world[:len(world)-1] + "," + bobDeveloperOnly[1:])
				s.write(`[{"op":"put","collection":"users","value":{"id":"zed","tenant":"acme"}}]`)
			},
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a, b := newSource(t), newSource(t)
			c.first(a)
			c.second(b)
			st := openStore(t, t.TempDir())
			e := newEngine(t, st, rpVerifier(t), 0)
			loadSnapshot(t, st, a)
			for range 2 { // the second answer comes from the decision cache
				if ok, err := decideDeveloper(t, e, "bob"); !ok || err != nil {
					t.Fatalf("bob on the first file: %v %v", ok, err)
				}
			}
			loadSnapshot(t, st, b)
			if ok, err := decideDeveloper(t, e, "bob"); ok || err != nil {
				t.Fatalf("bob on the second file: allowed=%v err=%v: a decision cached from the replaced file was served", ok, err)
			}
		})
	}
}
