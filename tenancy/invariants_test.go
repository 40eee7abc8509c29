package tenancy_test

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// validate runs the full validator over the file.
func (f *file) validate() error {
	return f.db.View(tenancy.Validate)
}

// digest hashes every bucket's keys and values (meta included).
func (f *file) digest() string {
	h := sha256.New()
	_ = f.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			fmt.Fprintf(h, "[%s]", name)
			return b.ForEach(func(k, v []byte) error {
				fmt.Fprintf(h, "%q=%q;", k, v)
				return nil
			})
		})
	})
	return fmt.Sprintf("%x", h.Sum(nil))
}

// op builds one op of a batch as JSON.
func put(collection, value string) string {
	return fmt.Sprintf(`{"op":"put","collection":%q,"value":%s}`, collection, value)
}

func del(collection, id string, cascade bool) string {
	return fmt.Sprintf(`{"op":"delete","collection":%q,"id":%q,"cascade":%t}`, collection, id, cascade)
}

// orders returns the batch in its order and reversed (both are one
// change: the outcome class must not depend on the order).
func orders(o ...string) map[string]string {
	fwd := "[" + strings.Join(o, ",") + "]"
	rev := make([]string, len(o))
	for i, x := range o {
		rev[len(o)-1-i] = x
	}
	return map[string]string{"in order": fwd, "reversed": "[" + strings.Join(rev, ",") + "]"}
}

// chainWorld adds two chains of tenants: c1 < c2 < ... < c40 (c1 the
// root) and d1 < ... < d32 (d1 the root).
func chainWorld(f *file) {
	f.t.Helper()
	var o []string
	for i := 1; i <= 40; i++ {
		parent := "null"
		if i > 1 {
			parent = strconv.Quote("c" + strconv.Itoa(i-1))
		}
		o = append(o, put(tenancy.Tenants, fmt.Sprintf(`{"id":"c%d","parent":%s}`, i, parent)))
	}
	for i := 1; i <= 32; i++ {
		parent := "null"
		if i > 1 {
			parent = strconv.Quote("d" + strconv.Itoa(i-1))
		}
		o = append(o, put(tenancy.Tenants, fmt.Sprintf(`{"id":"d%d","parent":%s}`, i, parent)))
	}
	f.must("[" + strings.Join(o, ",") + "]")
}

// TestBatchIsOneChange: a batch is validated as one change from the state
// before it to the state after it, whatever the order of its ops; an
// accepted batch leaves a state the full validator accepts, a refused one
// leaves the file as it was.
func TestBatchIsOneChange(t *testing.T) {
	t.Parallel()
	type outcome struct {
		status int    // 0: accepted
		msg    string // in the refusal
	}
	cases := map[string]struct {
		ops   []string
		order bool // also try the reversed order
		want  outcome
		after func(t *testing.T, f *file)
	}{
		"recreate a project with another owner": {
			ops:  []string{del(tenancy.Projects, "timekeeping", false), put(tenancy.Projects, `{"id":"timekeeping","owner":"alpha","roles":["accountant","developer","admin"]}`)},
			want: outcome{409, "owner cannot change"},
		},
		"recreate a project with another owner after a cascade": {
			ops:  []string{del(tenancy.Projects, "timekeeping", true), put(tenancy.Projects, `{"id":"timekeeping","owner":"beta","roles":["admin"]}`)},
			want: outcome{409, "owner cannot change"},
		},
		"recreate a grant for another tenant": {
			ops:  []string{del(tenancy.ProjectGrants, "pg-beta", false), put(tenancy.ProjectGrants, `{"id":"pg-beta","project":"timekeeping","tenant":"gamma","roles":["accountant"]}`)},
			want: outcome{409, "cannot change"},
		},
		"recreate a grant for the owner": {
			ops:  []string{del(tenancy.ProjectGrants, "pg-beta", true), put(tenancy.ProjectGrants, `{"id":"pg-beta","project":"timekeeping","tenant":"acme","roles":[]}`)},
			want: outcome{409, ""},
		},
		"recreate a grant on another project": {
			ops: []string{
				put(tenancy.Projects, `{"id":"payroll","owner":"acme","roles":["accountant"]}`),
				del(tenancy.ProjectGrants, "pg-alpha", false),
				put(tenancy.ProjectGrants, `{"id":"pg-alpha","project":"payroll","tenant":"alpha","roles":["accountant"]}`),
			},
			want: outcome{409, "cannot change"},
		},
		"recreate a project with fewer roles cascades like a put": {
			ops:  []string{del(tenancy.Projects, "timekeeping", false), put(tenancy.Projects, `{"id":"timekeeping","owner":"acme","roles":["developer","admin"]}`)},
			want: outcome{},
			after: func(t *testing.T, f *file) {
				if got := f.index("i/tenant_roles", "timekeeping", "beta"); fmt.Sprint(got) != "[developer]" {
					t.Errorf("beta holds %v, want [developer]", got)
				}
				if got := f.index("i/user_roles", "alice", "timekeeping", "beta"); fmt.Sprint(got) != "[]" {
					t.Errorf("alice holds %v, want []", got)
				}
			},
		},
		"recreate a grant with fewer roles": {
			ops:  []string{del(tenancy.ProjectGrants, "pg-beta", false), put(tenancy.ProjectGrants, `{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["developer"]}`)},
			want: outcome{},
		},
		"delete a grant and keep a user grant under it": {
			ops:  []string{del(tenancy.ProjectGrants, "pg-beta", false), put(tenancy.UserGrants, `{"id":"ug-bob","user":"bob","project":"timekeeping","tenant":"beta","roles":["developer"]}`)},
			want: outcome{409, "neither owns"},
		},
		"a project losing a role and a user grant taking it": {
			ops:  []string{put(tenancy.Projects, `{"id":"timekeeping","owner":"acme","roles":["developer","admin"]}`), put(tenancy.UserGrants, `{"id":"ug-alice-beta","user":"alice","project":"timekeeping","tenant":"beta","roles":["accountant"]}`)},
			want: outcome{409, "not held"},
		},
		"delete a user and recreate it elsewhere keeps its grants valid": {
			ops:  []string{del(tenancy.Users, "bob", false), put(tenancy.Users, `{"id":"bob","tenant":"alpha"}`)},
			want: outcome{},
		},
		"delete a tenant without cascade and recreate it": {
			ops:  []string{del(tenancy.Tenants, "beta", false), put(tenancy.Tenants, `{"id":"beta","name":"Beta again","parent":"acme"}`)},
			want: outcome{},
		},
		"delete a tenant and recreate it under its child": {
			ops:  []string{del(tenancy.Tenants, "acme", false), put(tenancy.Tenants, `{"id":"acme","parent":"alpha"}`)},
			want: outcome{409, "cycle"},
		},
		"a grant of an owner made by two puts": {
			ops:   []string{put(tenancy.Tenants, `{"id":"delta"}`), put(tenancy.Projects, `{"id":"p2","owner":"delta","roles":["r"]}`), put(tenancy.ProjectGrants, `{"id":"pg2","project":"p2","tenant":"delta","roles":["r"]}`)},
			order: true,
			want:  outcome{409, ""},
		},
		"a cycle made mid-batch, then a cascade delete": {
			ops:  []string{put(tenancy.Tenants, `{"id":"acme","parent":"beta"}`), del(tenancy.Tenants, "acme", true)},
			want: outcome{},
		},
		"a cycle made mid-batch and left": {
			ops:   []string{put(tenancy.Tenants, `{"id":"gamma","parent":"delta"}`), put(tenancy.Tenants, `{"id":"delta","parent":"gamma"}`)},
			order: true,
			want:  outcome{409, "cycle"},
		},
		"a grant written before its project": {
			ops:   []string{put(tenancy.Tenants, `{"id":"delta"}`), put(tenancy.ProjectGrants, `{"id":"pg2","project":"p2","tenant":"alpha","roles":["r"]}`), put(tenancy.Projects, `{"id":"p2","owner":"delta","roles":["r"]}`)},
			order: true,
			want:  outcome{},
			after: func(t *testing.T, f *file) {
				if got := f.index("i/tenant_roles", "p2", "alpha"); fmt.Sprint(got) != "[r]" {
					t.Errorf("alpha holds %v on p2, want [r]", got)
				}
			},
		},
		"create a tenant and its users together": {
			ops:   []string{put(tenancy.Tenants, `{"id":"delta","parent":"acme"}`), put(tenancy.Users, `{"id":"dan","tenant":"delta"}`)},
			order: true,
			want:  outcome{},
		},
	}
	for name, c := range cases {
		variants := map[string]string{"in order": "[" + strings.Join(c.ops, ",") + "]"}
		if c.order {
			variants = orders(c.ops...)
		}
		for vname, batch := range variants {
			t.Run(name+"/"+vname, func(t *testing.T) {
				t.Parallel()
				f := newFile(t)
				f.must(world)
				f.must(`[{"op":"put","collection":"tenants","value":{"id":"gamma"}}]`)
				before, rev := f.digest(), f.rev
				_, err := f.apply(ops(t, batch))
				if c.want.status == 0 {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					if err := f.validate(); err != nil {
						t.Fatalf("accepted batch left an invalid state: %v", err)
					}
					if c.after != nil {
						c.after(t, f)
					}
					return
				}
				var te *tenancy.Error
				if !errors.As(err, &te) || te.Status != c.want.status || !strings.Contains(te.Msg, c.want.msg) {
					t.Fatalf("err = %v, want %d containing %q", err, c.want.status, c.want.msg)
				}
				if f.digest() != before || f.rev != rev {
					t.Fatal("a refused batch changed the file")
				}
			})
		}
	}
}

// TestReparentChecksTheSubtree: re-parenting a tenant moves its subtree;
// no descendant may end up with more than 64 ancestors (a chain cut at 64
// would hide a suspended root: fail open), through a single put or inside
// a batch, in any order.
func TestReparentChecksTheSubtree(t *testing.T) {
	t.Parallel()
	unrelated := put(tenancy.Users, `{"id":"zed","tenant":"alpha"}`)
	cases := map[string]struct {
		ops    []string
		status int
	}{
		// d32 would have 40 + 31 = 71 ancestors (72 tenants in its chain)
		"put d1 under c40":                                {[]string{put(tenancy.Tenants, `{"id":"d1","parent":"c40"}`)}, 409},
		"batch, move first":                               {[]string{put(tenancy.Tenants, `{"id":"d1","parent":"c40"}`), unrelated}, 409},
		"batch, move last":                                {[]string{unrelated, put(tenancy.Tenants, `{"id":"d1","parent":"c40"}`)}, 409},
		"delete and recreate d1 under c40":                {[]string{del(tenancy.Tenants, "d1", false), put(tenancy.Tenants, `{"id":"d1","parent":"c40"}`)}, 409},
		"move d1 under c33: d32 has exactly 64 ancestors": {[]string{put(tenancy.Tenants, `{"id":"d1","parent":"c33"}`)}, 0},
		"move d1 under c34: d32 has 65":                   {[]string{put(tenancy.Tenants, `{"id":"d1","parent":"c34"}`)}, 409},
		"move a middle tenant":                            {[]string{put(tenancy.Tenants, `{"id":"d5","parent":"c40"}`)}, 409},
		"deepen the top of a chain":                       {[]string{put(tenancy.Tenants, `{"id":"x1"}`), put(tenancy.Tenants, `{"id":"x2","parent":"x1"}`), put(tenancy.Tenants, `{"id":"c1","parent":"x2"}`), put(tenancy.Tenants, `{"id":"d1","parent":"c33"}`)}, 409},
		"deepen the top of a chain, reversed":             {[]string{put(tenancy.Tenants, `{"id":"d1","parent":"c33"}`), put(tenancy.Tenants, `{"id":"x1"}`), put(tenancy.Tenants, `{"id":"x2","parent":"x1"}`), put(tenancy.Tenants, `{"id":"c1","parent":"x2"}`)}, 409},
		"move two subtrees that fit":                      {[]string{put(tenancy.Tenants, `{"id":"d20","parent":"c40"}`), put(tenancy.Tenants, `{"id":"d30","parent":"c1"}`)}, 0},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFile(t)
			f.must(world)
			chainWorld(f)
			before := f.digest()
			_, err := f.apply(ops(t, "["+strings.Join(c.ops, ",")+"]"))
			if c.status == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if err := f.validate(); err != nil {
					t.Fatal(err)
				}
				return
			}
			var te *tenancy.Error
			if !errors.As(err, &te) || te.Status != c.status || !strings.Contains(te.Msg, "ancestors") {
				t.Fatalf("err = %v, want %d naming the ancestors", err, c.status)
			}
			if f.digest() != before {
				t.Fatal("a refused batch changed the file")
			}
		})
	}
}

// TestChainIsNeverCut: a tenant with exactly 64 ancestors has its whole
// chain in the index (the root included), and a chain the index cannot
// hold whole (data written raw, bypassing Apply) ends with ChainCut, which
// names no tenant, so that a policy requiring every tenant of the chain to
// be active fails closed.
func TestChainIsNeverCut(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	var o []string
	for i := 0; i <= 64; i++ {
		parent := "null"
		if i > 0 {
			parent = strconv.Quote("t" + strconv.Itoa(i-1))
		}
		o = append(o, put(tenancy.Tenants, fmt.Sprintf(`{"id":"t%d","parent":%s}`, i, parent)))
	}
	f.must("[" + strings.Join(o, ",") + "]")
	chain, _ := f.index("i/tenant_chain", "t64").([]any)
	if len(chain) != 65 || chain[64] != "t0" {
		t.Fatalf("chain of t64 (64 ancestors) has %d entries ending %v, want 65 ending at the root t0", len(chain), chain[len(chain)-1])
	}
	if err := f.validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.apply(ops(t, "["+put(tenancy.Tenants, `{"id":"t65","parent":"t64"}`)+"]")); err == nil {
		t.Fatal("a tenant with 65 ancestors was accepted")
	}

	// Raw writes (as a feed from a misbehaving control endpoint would
	// carry): a 66th level, and a cycle.
	err := f.db.Update(func(tx *bolt.Tx) error {
		w, err := tenancy.NewWriter(tx, f.rev+1)
		if err != nil {
			return err
		}
		for _, c := range []tenancy.Change{
			{Op: "put", Collection: "tenants", ID: "t65", Value: json.RawMessage(`{"id":"t65","parent":"t64"}`)},
			{Op: "put", Collection: "tenants", ID: "a", Value: json.RawMessage(`{"id":"a","parent":"b"}`)},
			{Op: "put", Collection: "tenants", ID: "b", Value: json.RawMessage(`{"id":"b","parent":"a"}`)},
		} {
			if err := w.ApplyChange(c); err != nil {
				return err
			}
		}
		return w.Finish()
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"t65", "a", "b"} {
		chain, _ := f.index("i/tenant_chain", id).([]any)
		if len(chain) == 0 || chain[len(chain)-1] != tenancy.ChainCut {
			t.Errorf("chain of %s = %v, want it to end with %q", id, chain, tenancy.ChainCut)
		}
	}
	if err := f.validate(); !errors.Is(err, tenancy.ErrInconsistent) || !strings.Contains(err.Error(), "more than 64 ancestors") || !strings.Contains(err.Error(), "loop") {
		t.Fatalf("Validate = %v, want the depth and the cycle reported", err)
	}
}

// TestStrictDecoding: ids are [a-zA-Z0-9._-]{1,128} but never "." or "..",
// wherever they appear; field names match exactly at every level (no case
// folding, no duplicates, no unknown fields).
func TestStrictDecoding(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		op     string
		status int
		msg    string
	}{
		"id .":                    {put(tenancy.Users, `{"id":".","tenant":"acme"}`), 422, "not a valid id"},
		"id ..":                   {put(tenancy.Tenants, `{"id":".."}`), 422, "not a valid id"},
		"parent ..":               {put(tenancy.Tenants, `{"id":"x","parent":".."}`), 422, "parent"},
		"reference .":             {put(tenancy.UserGrants, `{"id":"x","user":".","project":"timekeeping","tenant":"beta"}`), 422, "user"},
		"scope id ..":             {put(tenancy.Memberships, `{"id":"x","user":"bob","scope":{"type":"tenant","id":".."}}`), 422, "scope.id"},
		"delete op id ..":         {del(tenancy.Users, "..", false), 400, "not a valid id"},
		"delete op id .":          {del(tenancy.Users, ".", true), 400, "not a valid id"},
		"put op id ..":            {`{"op":"put","collection":"users","id":"..","value":{"id":"..","tenant":"acme"}}`, 400, "not a valid id"},
		"delete op bad id":        {del(tenancy.Users, "a/b", false), 400, "not a valid id"},
		"ID":                      {put(tenancy.Users, `{"ID":"x","tenant":"acme"}`), 422, `"ID"`},
		"Tenant":                  {put(tenancy.Users, `{"id":"x","Tenant":"acme"}`), 422, "case-sensitive"},
		"OWNER":                   {put(tenancy.Projects, `{"id":"p","OWNER":"acme"}`), 422, "OWNER"},
		"Kelvin sign folds to k":  {put(tenancy.Users, `{"id":"x","tenant":"acme","\u212aind":"machine"}`), 422, "unknown field"},
		"long s folds to s":       {put(tenancy.Users, `{"id":"x","tenant":"acme","\u017ftatus":"suspended"}`), 422, "unknown field"},
		"duplicate id":            {put(tenancy.Users, `{"id":"x","tenant":"acme","id":"y"}`), 422, "twice"},
		"duplicate after folding": {put(tenancy.Users, `{"id":"x","tenant":"acme","Tenant":"beta"}`), 422, "Tenant"},
		"duplicate parent":        {put(tenancy.Tenants, `{"id":"x","parent":null,"parent":"acme"}`), 422, "twice"},
		"scope Type":              {put(tenancy.Memberships, `{"id":"x","user":"bob","scope":{"Type":"tenant","id":"beta"}}`), 422, "scope.Type"},
		"scope duplicate id":      {put(tenancy.Memberships, `{"id":"x","user":"bob","scope":{"type":"tenant","id":"beta","id":"acme"}}`), 422, "scope.id"},
		"scope unknown field":     {put(tenancy.Memberships, `{"id":"x","user":"bob","scope":{"type":"tenant","id":"beta","x":1}}`), 422, "scope.x"},
		"labels duplicate key":    {put(tenancy.Users, `{"id":"x","tenant":"acme","labels":{"a":"1","a":"2"}}`), 422, "labels.a"},
		"unknown field":           {put(tenancy.Users, `{"id":"x","tenant":"acme","colour":"red"}`), 422, "colour"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFile(t)
			f.must(world)
			before := f.digest()
			_, err := f.apply(ops(t, "["+c.op+"]"))
			var te *tenancy.Error
			if !errors.As(err, &te) || te.Status != c.status || !strings.Contains(te.Msg, c.msg) {
				t.Fatalf("err = %v, want %d containing %q", err, c.status, c.msg)
			}
			if f.digest() != before {
				t.Fatal("a refused batch changed the file")
			}
		})
	}
	// Exact names, labels with any keys, and escaped spellings of exact
	// names are accepted.
	f := newFile(t)
	f.must(world)
	f.must(`[` + put(tenancy.Users, `{"\u0069d":"x","tenant":"acme","labels":{"A":"1","a":"2","ID":"3"}}`) + `]`)
	if !f.exists(tenancy.Users, "x") {
		t.Fatal("users/x not written")
	}
}

// TestRandomBatchesKeepTheInvariants applies random batches over a small
// world. After every accepted batch, the whole state must pass the full
// validator (which knows nothing of the order of the ops or of what they
// touched); after every refused batch, the file must be unchanged.
// GATEHOUSE_SEED=N replays a run.
func TestRandomBatchesKeepTheInvariants(t *testing.T) {
	t.Parallel()
	seed := rand.Uint64()
	if s := os.Getenv("GATEHOUSE_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (GATEHOUSE_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	g := &gen{rng: rng}
	var f *file
	batches := 1500
	if testing.Short() {
		batches = 300
	}
	accepted := 0
	for i := range batches {
		if i%100 == 0 { // a fresh world now and then: cascades erode it
			f = newFile(t)
			f.must(randomWorld)
		}
		batch := g.batch()
		before, rev := f.digest(), f.rev
		_, err := f.apply(ops(t, batch))
		if err != nil {
			var te *tenancy.Error
			if !errors.As(err, &te) || te.Status >= 500 {
				t.Fatalf("batch %d %s: %v", i, batch, err)
			}
			if f.digest() != before || f.rev != rev {
				t.Fatalf("batch %d refused (%v) but changed the file: %s", i, err, batch)
			}
			continue
		}
		accepted++
		if err := f.validate(); err != nil {
			t.Fatalf("batch %d accepted, the state is invalid: %v\nbatch: %s", i, err, batch)
		}
	}
	if accepted < batches/20 {
		t.Fatalf("only %d of %d batches accepted: the generator explores too little", accepted, batches)
	}
	t.Logf("%d of %d batches accepted", accepted, batches)
}

// randomWorld is where random batches start: every id the generator draws
// exists, with a provider tree (t0 > t1 > t3, t0 > t2), grants and user
// grants across tenants.
const randomWorld = `[
 {"op":"put","collection":"tenants","value":{"id":"t0"}},
 {"op":"put","collection":"tenants","value":{"id":"t1","parent":"t0"}},
 {"op":"put","collection":"tenants","value":{"id":"t2","parent":"t0"}},
 {"op":"put","collection":"tenants","value":{"id":"t3","parent":"t1"}},
 {"op":"put","collection":"tenants","value":{"id":"t4"}},
 {"op":"put","collection":"tenants","value":{"id":"t5","parent":"t4"}},
 {"op":"put","collection":"users","value":{"id":"u0","tenant":"t0"}},
 {"op":"put","collection":"users","value":{"id":"u1","tenant":"t1"}},
 {"op":"put","collection":"users","value":{"id":"u2","tenant":"t2"}},
 {"op":"put","collection":"users","value":{"id":"u3","tenant":"t3"}},
 {"op":"put","collection":"users","value":{"id":"u4","tenant":"t4"}},
 {"op":"put","collection":"users","value":{"id":"u5","tenant":"t5"}},
 {"op":"put","collection":"projects","value":{"id":"p0","owner":"t0","roles":["r0","r1","r2","r3"]}},
 {"op":"put","collection":"projects","value":{"id":"p1","owner":"t4","roles":["r0","r1","r2"]}},
 {"op":"put","collection":"projects","value":{"id":"p2","owner":"t1","roles":["r1","r2","r3"]}},
 {"op":"put","collection":"project_grants","value":{"id":"g0","project":"p0","tenant":"t1","roles":["r0","r1"]}},
 {"op":"put","collection":"project_grants","value":{"id":"g1","project":"p0","tenant":"t2","roles":["r1","r2"]}},
 {"op":"put","collection":"project_grants","value":{"id":"g2","project":"p1","tenant":"t0","roles":["r0"]}},
 {"op":"put","collection":"project_grants","value":{"id":"g3","project":"p2","tenant":"t3","roles":["r2","r3"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug0","user":"u1","project":"p0","tenant":"t1","roles":["r0"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug1","user":"u3","project":"p0","tenant":"t2","roles":["r1","r2"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug2","user":"u0","project":"p1","tenant":"t0","roles":["r0"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug3","user":"u3","project":"p2","tenant":"t3","roles":["r3"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug4","user":"u4","project":"p1","tenant":"t4","roles":["r0","r2"]}},
 {"op":"put","collection":"memberships","value":{"id":"m0","user":"u0","scope":{"type":"tenant","id":"t0"},"roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m1","user":"u3","scope":{"type":"project_grant","id":"g3"},"roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m2","user":"u4","scope":{"type":"project","id":"p1"},"roles":["admin"]}}
]`

// gen draws ops over a small id space, so that batches collide: the same
// ids are deleted, recreated, re-parented and referred to.
type gen struct{ rng *rand.Rand }

func (g *gen) pick(prefix string, n int) string { return prefix + strconv.Itoa(g.rng.IntN(n)) }

func (g *gen) roles() string {
	var rs []string
	for _, r := range []string{"r0", "r1", "r2", "r3"} {
		if g.rng.IntN(2) == 0 {
			rs = append(rs, strconv.Quote(r))
		}
	}
	return "[" + strings.Join(rs, ",") + "]"
}

func (g *gen) status() string {
	if g.rng.IntN(4) == 0 {
		return "suspended"
	}
	return "active"
}

// batch draws 1 to 4 steps; a step is one op or, one time in four, an
// entity deleted and put again (the same id before and after).
func (g *gen) batch() string {
	var o []string
	for range 1 + g.rng.IntN(4) {
		c, id := g.entity()
		switch g.rng.IntN(8) {
		case 0, 1:
			o = append(o, del(c, id, g.rng.IntN(2) == 0), g.put(c, id))
		case 2:
			o = append(o, del(c, id, g.rng.IntN(2) == 0))
		default:
			o = append(o, g.put(c, id))
		}
	}
	return "[" + strings.Join(o, ",") + "]"
}

var genCollections = []string{tenancy.Tenants, tenancy.Tenants, tenancy.Users, tenancy.Projects, tenancy.Projects, tenancy.ProjectGrants, tenancy.ProjectGrants, tenancy.UserGrants, tenancy.UserGrants, tenancy.Memberships}

func (g *gen) entity() (collection, id string) {
	c := genCollections[g.rng.IntN(len(genCollections))]
	prefix := map[string]string{tenancy.Tenants: "t", tenancy.Users: "u", tenancy.Projects: "p", tenancy.ProjectGrants: "g", tenancy.UserGrants: "ug", tenancy.Memberships: "m"}[c]
	return c, g.pick(prefix, 6)
}

func (g *gen) put(c, id string) string {
	var v string
	switch c {
	case tenancy.Tenants:
		parent := "null"
		if g.rng.IntN(3) > 0 {
			parent = strconv.Quote(g.pick("t", 6))
		}
		v = fmt.Sprintf(`{"id":%q,"parent":%s,"status":%q}`, id, parent, g.status())
	case tenancy.Users:
		v = fmt.Sprintf(`{"id":%q,"tenant":%q}`, id, g.pick("t", 6))
	case tenancy.Projects:
		v = fmt.Sprintf(`{"id":%q,"owner":%q,"roles":%s}`, id, g.pick("t", 6), g.roles())
	case tenancy.ProjectGrants:
		v = fmt.Sprintf(`{"id":%q,"project":%q,"tenant":%q,"roles":%s,"status":%q}`, id, g.pick("p", 6), g.pick("t", 6), g.roles(), g.status())
	case tenancy.UserGrants:
		v = fmt.Sprintf(`{"id":%q,"user":%q,"project":%q,"tenant":%q,"roles":%s}`, id, g.pick("u", 6), g.pick("p", 6), g.pick("t", 6), g.roles())
	case tenancy.Memberships:
		scopes := []struct{ typ, prefix string }{{"tenant", "t"}, {"project", "p"}, {"project_grant", "g"}}
		s := scopes[g.rng.IntN(3)]
		v = fmt.Sprintf(`{"id":%q,"user":%q,"scope":{"type":%q,"id":%q},"roles":["admin"]}`, id, g.pick("u", 6), s.typ, g.pick(s.prefix, 6))
	}
	return put(c, v)
}
