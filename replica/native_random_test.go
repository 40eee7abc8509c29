package replica_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/topdown"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
	"github.com/gatehouse-dev/gatehouse/token"
)

// The native built-ins against plain Rego, over random worlds: random
// tenants with parent chains (suspended ancestors included), users with and
// without an issuer, projects, project grants active and suspended, user
// grants (external users included), and random requests through every
// issuer kind, tenant source and route. Three comparisons:
//
//   - the shipped policy (steps 2 to 6 by gatehouse.tenancy.decide) against
//     the policy as it was before the built-ins (testdata/rego-reference,
//     SPEC §6 in Rego over data.tenancy read through the storage adapter):
//     every decision identical (allowed, status, reason, headers, body,
//     metadata);
//   - gatehouse.tenancy.decide against testing.decide, the plain-Rego
//     reading the Rego tests mock it with, on random queries: identical
//     answers (reason, tenant, roles);
//   - after random writes, a decision cache that recorded the built-ins'
//     reads against no cache: identical decisions (a read the built-ins
//     did not record would serve a stale decision).
//
// GATEHOUSE_RANDOM_WORLDS sets the number of worlds (default 25).

const (
	rnPlain     = "https://idp.random/"
	rnTrust     = "https://tenants.random/"
	rnBound     = "https://bound.random/"
	rnBoundTrst = "https://bound-tenants.random/"
	rnOther     = "https://other.random/"
)

var rnRoles = []string{"reader", "writer", "admin", "ops:read"}

// rworld is a random world: the ids it holds, for requests to name.
type rworld struct {
	tenants, users, projects []string
	grants                   [][3]string       // user, project, tenant of the user grants
	issuer                   map[string]string // user → the issuer it names
	bound                    string            // the tenant the bound issuers are bound to
}

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

func subset(rng *rand.Rand, xs []string, min int) []string {
	var out []string
	for _, x := range xs {
		if rng.IntN(2) == 0 {
			out = append(out, x)
		}
	}
	for len(out) < min && len(xs) > 0 {
		out = append(out, pick(rng, xs))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// tryWrite applies ops as the control endpoint does and feeds the store the
// revision; a batch the invariants refuse changes nothing (false).
func tryWrite(t testing.TB, src *source, st *replica.Store, ops []tenancy.Op) bool {
	t.Helper()
	var line tenancy.FeedLine
	err := src.db.Update(func(tx *bolt.Tx) error {
		w, err := tenancy.NewWriter(tx, src.rev+1)
		if err != nil {
			return err
		}
		if err := tenancy.Apply(w, ops); err != nil {
			return err
		}
		line = tenancy.FeedLine{Type: tenancy.LineRevision, Revision: src.rev + 1, Changes: w.Changes()}
		line.Hash = tenancy.HashRevision(src.hash, line.Revision, line.Changes)
		return w.Finish()
	})
	if err != nil {
		return false
	}
	src.rev, src.hash = line.Revision, line.Hash
	if st != nil {
		if err := st.ApplyRevisions([]tenancy.FeedLine{line}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	return true
}

func put(collection string, v any) tenancy.Op {
	b, _ := json.Marshal(v)
	return tenancy.Op{Op: tenancy.OpPut, Collection: collection, Value: b}
}

func rnStatus(rng *rand.Rand, suspended int) string {
	if rng.IntN(100) < suspended {
		return tenancy.StatusSuspended
	}
	return tenancy.StatusActive
}

// genWorld writes a random world into src, entity by entity (the ones the
// invariants refuse are left out).
func genWorld(t testing.TB, rng *rand.Rand, src *source) rworld {
	var w rworld
	for i := range 3 + rng.IntN(6) {
		id := fmt.Sprintf("t%d", i)
		parent := any(nil)
		if i > 0 && rng.IntN(3) > 0 {
			parent = pick(rng, w.tenants)
		}
		if tryWrite(t, src, nil, []tenancy.Op{put(tenancy.Tenants, map[string]any{"id": id, "parent": parent, "status": rnStatus(rng, 12)})}) {
			w.tenants = append(w.tenants, id)
		}
	}
	owners := map[string]string{}
	projectRoles := map[string][]string{}
	for i := range 1 + rng.IntN(3) {
		id := fmt.Sprintf("p%d", i)
		roles := subset(rng, rnRoles, 1)
		owner := pick(rng, w.tenants)
		if tryWrite(t, src, nil, []tenancy.Op{put(tenancy.Projects, map[string]any{"id": id, "owner": owner, "roles": roles})}) {
			w.projects = append(w.projects, id)
			owners[id], projectRoles[id] = owner, roles
		}
	}
	grants := map[string][]string{} // project/tenant -> roles held through a grant
	for i := range rng.IntN(8) {
		p, x := pick(rng, w.projects), pick(rng, w.tenants)
		roles := subset(rng, projectRoles[p], 0)
		g := map[string]any{"id": fmt.Sprintf("g%d", i), "project": p, "tenant": x, "roles": roles, "status": rnStatus(rng, 25)}
		if tryWrite(t, src, nil, []tenancy.Op{put(tenancy.ProjectGrants, g)}) {
			grants[p+"/"+x] = roles
		}
	}
	issuers := []string{"", "", "", "", "", "", "", rnPlain, rnTrust, rnBound, rnOther}
	w.issuer = map[string]string{}
	for i := range 4 + rng.IntN(6) {
		id := fmt.Sprintf("u%d", i)
		u := map[string]any{"id": id, "tenant": pick(rng, w.tenants), "status": rnStatus(rng, 15)}
		iss := pick(rng, issuers)
		if iss != "" {
			u["issuer"] = iss
		}
		if tryWrite(t, src, nil, []tenancy.Op{put(tenancy.Users, u)}) {
			w.users = append(w.users, id)
			w.issuer[id] = iss
		}
	}
	for i := range rng.IntN(14) {
		if len(w.users) == 0 || len(w.projects) == 0 {
			break
		}
		p := pick(rng, w.projects)
		x := owners[p]
		held := projectRoles[p]
		if rng.IntN(2) == 0 {
			x = pick(rng, w.tenants)
			held = grants[p+"/"+x]
		}
		u := pick(rng, w.users)
		g := map[string]any{"id": fmt.Sprintf("ug%d", i), "user": u, "project": p, "tenant": x, "roles": subset(rng, held, min(len(held), rng.IntN(3)))}
		if tryWrite(t, src, nil, []tenancy.Op{put(tenancy.UserGrants, g)}) {
			w.grants = append(w.grants, [3]string{u, p, x})
		}
	}
	w.bound = pick(rng, append(slices.Clone(w.tenants), "nowhere"))
	return w
}

// rnIssuers is a verifier trusting the random issuers (the bound ones
// bound to w.bound), and their signing keys.
func rnIssuers(t testing.TB, w rworld) (*token.Verifier, map[string]*ecdsa.PrivateKey) {
	dir := t.TempDir()
	keys := map[string]*ecdsa.PrivateKey{}
	var cfgs []token.IssuerConfig
	for i, c := range []token.IssuerConfig{
		{Issuer: rnPlain}, {Issuer: rnTrust, TrustTokenRoles: true}, {Issuer: rnBound, Tenant: w.bound},
		{Issuer: rnBoundTrst, Tenant: w.bound, TrustTokenRoles: true}, {Issuer: rnOther},
	} {
		key := testutil.ECKey(t, fmt.Sprintf("random-%d", i))
		keys[c.Issuer] = key
		pem := filepath.Join(dir, fmt.Sprintf("k%d.pem", i))
		testutil.WriteFile(t, pem, string(testutil.PublicKeyPEM(t, &key.PublicKey)))
		c.Audiences, c.Algorithms, c.PublicKeyFile = []string{"api"}, []string{"ES256"}, pem
		cfgs = append(cfgs, c)
	}
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: cfgs}, discard())
	if err != nil {
		t.Fatal(err)
	}
	return v, keys
}

// rnRequest is a random request: a token (or none), a path, headers, a
// host, a route.
func rnRequest(t testing.TB, rng *rand.Rand, w rworld, keys map[string]*ecdsa.PrivateKey) (*authz.Request, string) {
	tenant := func() string {
		switch rng.IntN(10) {
		case 0:
			return "nowhere"
		case 1:
			return strings.ToUpper(pick(rng, w.tenants))
		}
		return pick(rng, w.tenants)
	}
	// half the requests follow a user grant: its user, project and tenant
	var grant [3]string
	if len(w.grants) > 0 && rng.IntN(2) == 0 {
		grant = pick(rng, w.grants)
	}
	var sub string
	switch n := rng.IntN(10); {
	case grant[0] != "" && n < 9:
		sub = grant[0]
	case n < 8 && len(w.users) > 0:
		sub = pick(rng, w.users)
	case n < 9:
		sub = "ghost"
	}
	if grant[0] != "" && rng.IntN(4) > 0 {
		target := grant[2]
		tenant = func() string { return target }
	}
	claims := map[string]any{}
	if rng.IntN(2) == 0 {
		authzClaim := map[string]any{}
		for range 1 + rng.IntN(2) {
			roles := []any{}
			for _, r := range subset(rng, append(slices.Clone(rnRoles), "root"), 0) {
				roles = append(roles, r)
			}
			if rng.IntN(8) == 0 {
				roles = append(roles, 7)
			}
			authzClaim[tenant()] = map[string]any{"roles": roles}
		}
		claims["authorization"] = authzClaim
	}
	if rng.IntN(3) == 0 {
		claims["tenant"] = pick(rng, []any{tenant(), tenant(), 7, "", "../x"})
	}
	if sub == "" && rng.IntN(2) == 0 {
		claims["sub"] = nil
	}
	iss := pick(rng, []string{rnPlain, rnPlain, rnPlain, rnPlain, rnPlain, rnTrust, rnTrust, rnBound, rnBoundTrst, rnOther})
	if own, ok := w.issuer[sub]; ok && own != "" && rng.IntN(5) > 0 {
		iss = own // mostly, a user's tokens come from the issuer it names
	}
	if rng.IntN(20) == 0 {
		claims["exp"] = time.Now().Add(-time.Hour).Unix()
	}
	header := ""
	if rng.IntN(15) > 0 {
		header = "Bearer " + testutil.MintJWT(t, jwt.SigningMethodES256, keys[iss], "", testutil.Claims(iss, sub, claims))
	}

	paths := []string{"/t/%s/items", "/t/%s/items", "/t/%s/items", "/t/%s", "/T/%s/x", "/api/x", "/t/", "/t", "/t/%%2F%s/x", "/t/%s/../x", "//t/%s", "/t/%s/a%%20b"}
	path := fmt.Sprintf(pick(rng, paths), tenant())
	if strings.Count(path, "%!") > 0 { // a pattern without %s
		path = pick(rng, []string{"/api/x", "/t/", "/t"})
	}
	headers := map[string]string{"authorization": header}
	if header == "" {
		delete(headers, "authorization")
	}
	if rng.IntN(3) == 0 {
		headers["x-tenant-id"] = pick(rng, []string{tenant(), tenant(), tenant() + "," + tenant(), ""})
	}
	host := "api.example.com"
	if rng.IntN(3) == 0 {
		host = tenant() + ".example.com"
	}
	route := map[string]string{}
	switch n := rng.IntN(10); {
	case grant[1] != "" && n < 8:
		route["project"] = grant[1]
	case n < 7 && len(w.projects) > 0:
		route["project"] = pick(rng, w.projects)
	case n < 8:
		route["project"] = "nope"
	case n < 9:
		route["project"] = ""
	}
	if rng.IntN(3) == 0 {
		route["roles"] = strings.Join(subset(rng, append(slices.Clone(rnRoles), "root"), 0), pick(rng, []string{",", ", "}))
	}
	if rng.IntN(3) == 0 {
		route["tenant_from"] = pick(rng, []string{"path", "header", "host", "token", "bogus"})
	}
	if grant[0] != "" && rng.IntN(3) == 0 {
		// a request as a well-behaved client sends it: the grant's user
		// through its own issuer, in the grant's tenant and project
		iss = w.issuer[grant[0]]
		if iss == "" || iss == rnBound {
			iss = rnPlain
		}
		sub, path, host = grant[0], "/t/"+grant[2]+"/items", "api.example.com"
		headers = map[string]string{"authorization": "Bearer " + testutil.MintJWT(t, jwt.SigningMethodES256, keys[iss], "", testutil.Claims(iss, sub, nil))}
		route = map[string]string{"project": grant[1]}
		if rng.IntN(2) == 0 {
			route["roles"] = pick(rng, rnRoles)
		}
	}
	cr := testutil.CheckRequest(testutil.Request{Path: path, Host: host, Headers: headers, ContextExtensions: route})
	in, err := envoy.Input(cr)
	if err != nil {
		t.Fatal(err)
	}
	desc := fmt.Sprintf("iss=%s sub=%q claims=%v path=%s host=%s headers=%v route=%v", iss, sub, claims, path, host, headers, route)
	return &authz.Request{Input: in, Authorization: headers["authorization"]}, desc
}

// rnEngine is an engine over st deciding with the policies in dir.
func rnEngine(t testing.TB, st *replica.Store, v *token.Verifier, dir string, cacheEntries int, builtins []authz.Builtin) *authz.Engine {
	e := authz.New(authz.Config{DecisionCacheEntries: cacheEntries, Builtins: builtins}, v, st, discard())
	src, err := authz.LoadDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := e.Compile(src, authz.DefaultDecision)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPolicy(ps)
	return e
}

// comparableDecision is a Decision with its metadata as JSON values
// (reflect.DeepEqual would compare the OPA object's internals).
type comparableDecision struct {
	authz.Decision
	Metadata map[string]any
}

// comparable strips what differs between two decisions of one question.
func comparable(d *authz.Decision) comparableDecision {
	c := comparableDecision{Decision: *d, Metadata: d.DynamicMetadata.Map()}
	c.ID, c.Duration, c.PolicyRevision, c.Cache, c.Token = "", 0, "", "", nil // how it was answered, not what
	c.DynamicMetadata = authz.Metadata{}
	if !c.Allowed {
		// The reference predates a deny's dynamic metadata (the tenant a deny
		// is about, for decision logs; policies/envoy/authz_test.rego).
		c.Metadata = nil
	}
	return c
}

func decide(t testing.TB, e *authz.Engine, req *authz.Request) *authz.Decision {
	t.Helper()
	r := *req
	r.Input = req.Input.Copy()
	d, err := e.Decide(context.Background(), &r)
	if err != nil {
		t.Fatalf("cannot decide: %v", err)
	}
	return d
}

func randomWorlds(t *testing.T) int {
	if s := os.Getenv("GATEHOUSE_RANDOM_WORLDS"); s != "" {
		var n int
		if _, err := fmt.Sscan(s, &n); err == nil && n > 0 {
			return n
		}
	}
	if testing.Short() {
		return 5
	}
	return 25
}

func TestNativeBuiltinsAgreeWithRego(t *testing.T) {
	t.Parallel()
	worlds := randomWorlds(t)
	reference := filepath.Join("testdata", "rego-reference")
	testingModule := loadTestingModule(t)
	for seed := range worlds {
		t.Run(fmt.Sprintf("world%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(seed), 0x6a7e))
			src := newSource(t)
			w := genWorld(t, rng, src)
			st := openStore(t, t.TempDir())
			loadSnapshot(t, st, src)
			v, keys := rnIssuers(t, w)

			native := rnEngine(t, st, v, policyDir(), -1, replica.Builtins())
			cached := rnEngine(t, st, v, policyDir(), 0, replica.Builtins())
			ref := rnEngine(t, st, v, reference, -1, nil)

			type asked struct {
				req  *authz.Request
				desc string
			}
			var reqs []asked
			reasons := map[string]int{}
			for range 60 {
				req, desc := rnRequest(t, rng, w, keys)
				reqs = append(reqs, asked{req, desc})
				dn, dr := decide(t, native, req), decide(t, ref, req)
				if !reflect.DeepEqual(comparable(dn), comparable(dr)) {
					t.Fatalf("%s\nnative:    %+v\nreference: %+v", desc, comparable(dn), comparable(dr))
				}
				decide(t, cached, req) // fill the decision cache
				reasons[dn.Reason]++
			}
			compareDecideQueries(t, rng, w, st, testingModule)
			compareSmallBuiltins(t, rng, w, st, testingModule)

			// random writes, then the cache (which recorded the built-ins'
			// reads) must agree with fresh evaluations
			for range 8 {
				mutate(t, rng, w, src, st)
				for _, a := range reqs {
					dc, dn := decide(t, cached, a.req), decide(t, native, a.req)
					if !reflect.DeepEqual(comparable(dc), comparable(dn)) {
						t.Fatalf("after writes, %s\ncached:    %+v\nevaluated: %+v", a.desc, comparable(dc), comparable(dn))
					}
				}
			}
			t.Logf("reasons: %v", reasons)
		})
	}
}

// mutate makes one random write the control endpoint accepts (or none).
func mutate(t testing.TB, rng *rand.Rand, w rworld, src *source, st *replica.Store) {
	for range 20 {
		var ops []tenancy.Op
		switch rng.IntN(6) {
		case 0:
			parent := any(nil)
			if rng.IntN(2) == 0 {
				parent = pick(rng, w.tenants)
			}
			ops = []tenancy.Op{put(tenancy.Tenants, map[string]any{"id": pick(rng, w.tenants), "parent": parent, "status": rnStatus(rng, 40)})}
		case 1:
			if len(w.users) == 0 {
				continue
			}
			u := map[string]any{"id": pick(rng, w.users), "tenant": pick(rng, w.tenants), "status": rnStatus(rng, 40)}
			if iss := pick(rng, []string{"", "", rnPlain, rnTrust}); iss != "" {
				u["issuer"] = iss
			}
			ops = []tenancy.Op{put(tenancy.Users, u)}
		case 2:
			ops = []tenancy.Op{{Op: tenancy.OpDelete, Collection: tenancy.UserGrants, ID: fmt.Sprintf("ug%d", rng.IntN(14))}}
		case 3:
			ops = []tenancy.Op{{Op: tenancy.OpDelete, Collection: tenancy.ProjectGrants, ID: fmt.Sprintf("g%d", rng.IntN(8)), Cascade: true}}
		case 4:
			if len(w.projects) == 0 {
				continue
			}
			p := pick(rng, w.projects)
			var owner string
			_ = src.db.View(func(tx *bolt.Tx) error {
				if e, _ := tenancy.Get(tx, tenancy.Projects, p); e != nil {
					owner = e.(*tenancy.Project).Owner
				}
				return nil
			})
			ops = []tenancy.Op{put(tenancy.Projects, map[string]any{"id": p, "owner": owner, "roles": subset(rng, rnRoles, 1)})}
		case 5:
			if len(w.users) == 0 || len(w.projects) == 0 {
				continue
			}
			ops = []tenancy.Op{put(tenancy.UserGrants, map[string]any{"id": fmt.Sprintf("ug%d", 100+rng.IntN(5)), "user": pick(rng, w.users), "project": pick(rng, w.projects), "tenant": pick(rng, w.tenants), "roles": subset(rng, rnRoles, 0)})}
		}
		if tryWrite(t, src, st, ops) {
			return
		}
	}
}

// loadTestingModule parses the Rego tests' plain-Rego reading of the
// built-ins.
func loadTestingModule(t testing.TB) *ast.Module {
	b, err := os.ReadFile(filepath.Join(policyDir(), "gatehouse", "testing_test.rego"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ast.ParseModuleWithOpts("testing_test.rego", string(b), ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// compareDecideQueries asks gatehouse.tenancy.decide (natively, in the
// store's transaction) and testing.decide (plain Rego over data.tenancy,
// read from the same transaction) random queries, some no request of the
// shipped policy makes.
func compareDecideQueries(t testing.TB, rng *rand.Rand, w rworld, st *replica.Store, testingModule *ast.Module) {
	ctx := context.Background()
	compiler := ast.NewCompiler()
	compiler.Compile(map[string]*ast.Module{"testing_test.rego": testingModule})
	if compiler.Failed() {
		t.Fatal(compiler.Errors)
	}
	pq, err := rego.New(rego.Compiler(compiler), rego.Store(st), rego.Query("x := data.gatehouse.testing.decide(input)")).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	decide := replica.Builtins()[0]
	if decide.Decl.Name != replica.BuiltinDecide {
		t.Fatal("Builtins()[0] is not decide")
	}
	tenant := func() string { return pick(rng, append(slices.Clone(w.tenants), "nowhere", "")) }
	for range 80 {
		q := map[string]any{}
		if n := rng.IntN(10); n < 7 && len(w.users) > 0 {
			q["subject"] = pick(rng, w.users)
		} else if n < 9 {
			q["subject"] = "ghost"
		} else {
			q["subject"] = ""
		}
		q["issuer"] = pick(rng, []string{rnPlain, rnTrust, rnOther, ""})
		if rng.IntN(3) > 0 {
			q["trust_token_roles"] = rng.IntN(3) == 0
		}
		if rng.IntN(3) == 0 {
			q["tenant_binding"] = tenant()
		}
		if rng.IntN(8) > 0 && len(w.projects) > 0 {
			q["project"] = pick(rng, append(slices.Clone(w.projects), "nope", ""))
		}
		switch rng.IntN(5) {
		case 0:
			q["tenant"] = tenant()
		case 1:
			q["tenant_reading"] = map[string]any{"tenant": tenant()}
		case 2:
			q["tenant_reading"] = map[string]any{}
		case 3:
			q["tenant_reading"] = map[string]any{"invalid": "why"}
		}
		switch rng.IntN(5) {
		case 0:
			q["required"] = subset(rng, append(slices.Clone(rnRoles), "root"), 0)
		case 1:
			q["required"] = []string{}
		case 2:
			q["required"] = strings.Join(subset(rng, append(slices.Clone(rnRoles), "root", " ", ""), 0), pick(rng, []string{",", ", ", " ,"}))
		}
		if rng.IntN(2) == 0 {
			tr := map[string]any{}
			for range rng.IntN(3) {
				tr[tenant()] = map[string]any{"roles": subset(rng, rnRoles, 0)}
			}
			q["token_roles"] = tr
		}
		in, err := ast.InterfaceToValue(q)
		if err != nil {
			t.Fatal(err)
		}

		got, want, err := func() (got, want any, err error) {
			txn, err := st.NewTransaction(ctx)
			if err != nil {
				return nil, nil, err
			}
			defer st.Abort(ctx, txn) // before any Fatal: Close waits for open transactions
			rs, err := pq.Eval(ctx, rego.EvalParsedInput(in), rego.EvalTransaction(txn))
			if err != nil {
				return nil, nil, err
			}
			if len(rs) == 1 {
				want = rs[0].Bindings["x"]
			}
			bctx := topdown.BuiltinContext{Context: authz.WithTenancyTxn(ctx, txn)}
			err = decide.Func(bctx, []*ast.Term{ast.NewTerm(in)}, func(r *ast.Term) error {
				got, err = ast.JSON(r.Value) // sets as sorted arrays, as rego's bindings
				return err
			})
			return got, want, err
		}()
		if err != nil {
			t.Fatalf("decide(%v): %v", in, err)
		}
		if got == nil || want == nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("decide(%v):\nnative:  %v\ntesting: %v", in, got, want)
		}
	}
}

// compareSmallBuiltins asks the small built-ins and their plain-Rego
// readings (testing.*) random questions.
func compareSmallBuiltins(t testing.TB, rng *rand.Rand, w rworld, st *replica.Store, testingModule *ast.Module) {
	ctx := context.Background()
	compiler := ast.NewCompiler()
	compiler.Compile(map[string]*ast.Module{"testing_test.rego": testingModule})
	if compiler.Failed() {
		t.Fatal(compiler.Errors)
	}
	funcs := map[string]authz.Builtin{}
	for _, b := range replica.Builtins() {
		funcs[b.Decl.Name] = b
	}
	tenant := func() string { return pick(rng, append(slices.Clone(w.tenants), "nowhere", "")) }
	user := func() string { return pick(rng, append(slices.Clone(w.users), "ghost", "")) }
	project := func() string { return pick(rng, append(slices.Clone(w.projects), "nope")) }
	for range 60 {
		var name string
		var args []any
		switch rng.IntN(5) {
		case 0:
			name, args = "tenant_active", []any{tenant()}
		case 1:
			name, args = "tenant_roles", []any{project(), tenant()}
		case 2:
			name, args = "user_roles", []any{user(), project(), tenant()}
		case 3:
			name, args = "effective_roles", []any{user(), project(), tenant()}
		case 4:
			name, args = "user", []any{user(), pick(rng, []string{rnPlain, rnTrust, rnOther, ""}), rng.IntN(2) == 0}
		}
		terms := make([]*ast.Term, len(args))
		for i, a := range args {
			v, err := ast.InterfaceToValue(a)
			if err != nil {
				t.Fatal(err)
			}
			terms[i] = ast.NewTerm(v)
		}
		call := ast.CallTerm(append([]*ast.Term{ast.RefTerm(ast.VarTerm("data"), ast.StringTerm("gatehouse"), ast.StringTerm("testing"), ast.StringTerm(name))}, terms...)...)
		got, want, err := func() (got, want any, err error) {
			txn, err := st.NewTransaction(ctx)
			if err != nil {
				return nil, nil, err
			}
			defer st.Abort(ctx, txn)
			rs, err := rego.New(rego.Compiler(compiler), rego.Store(st), rego.Transaction(txn), rego.ParsedQuery(ast.NewBody(ast.Equality.Expr(ast.VarTerm("x"), call)))).Eval(ctx)
			if err != nil {
				return nil, nil, err
			}
			if len(rs) == 1 {
				want = rs[0].Bindings["x"]
			}
			bctx := topdown.BuiltinContext{Context: authz.WithTenancyTxn(ctx, txn)}
			err = funcs["gatehouse.tenancy."+name].Func(bctx, terms, func(r *ast.Term) error {
				got, err = ast.JSON(r.Value)
				return err
			})
			return got, want, err
		}()
		if err != nil {
			t.Fatalf("%s%v: %v", name, args, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s%v:\nnative:  %v\ntesting: %v", name, args, got, want)
		}
	}
}

// TestPathTenantAgreesWithRego: gatehouse.tenancy.path_tenant reads random
// raw paths (built from the pieces that make paths ambiguous: separators,
// dot segments, encodings of "/", "\", "." and ";" in either case, other
// encodings, queries) exactly as the Rego reading it replaced
// (testdata/rego-reference/tenancy.rego, tenant_reading("path")), and as
// testing.path_tenant, which Rego tests mock it with.
func TestPathTenantAgreesWithRego(t *testing.T) {
	t.Parallel()
	ref, err := os.ReadFile(filepath.Join("testdata", "rego-reference", "tenancy.rego"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pq, err := rego.New(rego.Module("tenancy.rego", string(ref)), rego.Query(`x := data.gatehouse.tenancy.tenant_reading("path")`)).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	compiler := ast.NewCompiler()
	compiler.Compile(map[string]*ast.Module{"testing_test.rego": loadTestingModule(t)})
	if compiler.Failed() {
		t.Fatal(compiler.Errors)
	}
	mock, err := rego.New(rego.Compiler(compiler), rego.Query(`x := data.gatehouse.testing.path_tenant(input.path)`)).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pathTenant authz.Builtin
	for _, b := range replica.Builtins() {
		if b.Decl.Name == replica.BuiltinPathTenant {
			pathTenant = b
		}
	}
	pieces := []string{"/", "/", "/", "t", "T", "beta", "a.b", "-", "_", ".", "..", "%2F", "%2f", "%5C", "%5c", "%2E", "%2e",
		"%3B", "%3b", "%41", "%20", "%", ";", "\\", "?", "x=1", ",", " ", "é", "//", "/t/", "/T/", "a"}
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 20000 {
		var b strings.Builder
		if rng.IntN(4) > 0 {
			b.WriteString(pick(rng, []string{"/t/", "/T/", "/", ""}))
		}
		for range rng.IntN(7) {
			b.WriteString(pick(rng, pieces))
		}
		path := b.String()
		if i%997 == 0 {
			path = strings.Repeat("a", 120+rng.IntN(20)) // ids up to 128
			path = "/t/" + path
		}
		rs, err := pq.Eval(ctx, rego.EvalInput(map[string]any{"attributes": map[string]any{"request": map[string]any{"http": map[string]any{"path": path}}}}))
		if err != nil || len(rs) != 1 {
			t.Fatalf("%q: rego %v %v", path, rs, err)
		}
		var got any
		err = pathTenant.Func(topdown.BuiltinContext{}, []*ast.Term{ast.StringTerm(path)}, func(r *ast.Term) error {
			got, err = ast.JSON(r.Value)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if want := rs[0].Bindings["x"]; !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: native %v, rego %v", path, got, want)
		}
		ms, err := mock.Eval(ctx, rego.EvalInput(map[string]any{"path": path}))
		if err != nil || len(ms) != 1 || !reflect.DeepEqual(ms[0].Bindings["x"], got) {
			t.Fatalf("%q: native %v, testing.path_tenant %v %v", path, got, ms, err)
		}
	}
}
