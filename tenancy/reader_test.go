package tenancy_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// reads records what a Reader reports.
type reads []string

func (r *reads) KeyedRead(doc int, key []byte, st tenancy.Stamp) {
	mark := "absent"
	if st != (tenancy.Stamp{}) {
		mark = "present"
	}
	*r = append(*r, strings.Join(tenancy.Docs[doc].Path, ".")+"["+strings.ReplaceAll(string(key), "\x00", "][")+"] "+mark)
}

func view(t testing.TB, db *bolt.DB, fn func(tx *bolt.Tx)) {
	t.Helper()
	if err := db.View(func(tx *bolt.Tx) error { fn(tx); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestDocIndexes(t *testing.T) {
	t.Parallel()
	want := map[int]string{
		tenancy.DocTenants: "tenants", tenancy.DocUsers: "users", tenancy.DocProjects: "projects",
		tenancy.DocProjectGrants: "project_grants", tenancy.DocUserGrants: "user_grants", tenancy.DocMemberships: "memberships",
		tenancy.DocTenantChain: "index.tenant_chain", tenancy.DocTenantRoles: "index.tenant_roles", tenancy.DocUserRoles: "index.user_roles",
		tenancy.DocUserGrantIDs: "index.user_grants", tenancy.DocProjectGrantIDs: "index.project_grants", tenancy.DocTenantGrantIDs: "index.tenant_grants",
		tenancy.DocTenantChildren: "index.tenant_children", tenancy.DocTenantUsers: "index.tenant_users", tenancy.DocTenantProjects: "index.tenant_projects",
		tenancy.DocUserMemberships: "index.user_memberships",
	}
	if len(want) != len(tenancy.Docs) {
		t.Fatalf("%d doc constants, %d docs", len(want), len(tenancy.Docs))
	}
	for i, p := range want {
		if got := strings.Join(tenancy.Docs[i].Path, "."); got != p {
			t.Errorf("Docs[%d] is %s, want %s", i, got, p)
		}
	}
}

// TestReaderTypedReads: the typed reads answer what the entities and the
// policy indexes hold, and every one is recorded with the stamp of what was
// read (absent reads too), exactly as a keyed storage read is.
func TestReaderTypedReads(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	f.must(`[{"op":"put","collection":"users","value":{"id":"quinn","tenant":"alpha","issuer":"https://login.alpha.example.com/","status":"suspended","labels":{"team":"a\"b"}}}]`)
	view(t, f.db, func(tx *bolt.Tx) {
		var rec reads
		r := tenancy.NewReader(tx, &rec)
		u, err := r.User("quinn")
		if err != nil || u == nil {
			t.Fatalf("User(quinn) = %v, %v", u, err)
		}
		want := &tenancy.User{ID: "quinn", Tenant: "alpha", Kind: "human", Status: "suspended", Issuer: "https://login.alpha.example.com/", Labels: map[string]string{"team": `a"b`}}
		if !reflect.DeepEqual(u, want) {
			t.Fatalf("User(quinn) = %+v, want %+v", u, want)
		}
		if u, err := r.User("nobody"); u != nil || err != nil {
			t.Fatalf("User(nobody) = %v, %v", u, err)
		}
		tn, err := r.Tenant("alpha")
		if err != nil || tn.Parent != "acme" || tn.Status != "active" || tn.Kind != "customer" || tn.Name != "Alpha" {
			t.Fatalf("Tenant(alpha) = %+v, %v", tn, err)
		}
		if tn, err := r.Tenant("acme"); err != nil || tn.Parent != "" {
			t.Fatalf("Tenant(acme) = %+v, %v", tn, err)
		}
		p, err := r.Project("timekeeping")
		if err != nil || p.Owner != "acme" || !slices.Equal(p.Roles, []string{"accountant", "admin", "developer"}) {
			t.Fatalf("Project = %+v, %v", p, err)
		}
		if c, err := r.TenantChain("alpha"); err != nil || !slices.Equal(c, []string{"alpha", "acme"}) {
			t.Fatalf("TenantChain(alpha) = %v, %v", c, err)
		}
		if c, err := r.TenantChain("nowhere"); err != nil || c != nil {
			t.Fatalf("TenantChain(nowhere) = %v, %v", c, err)
		}
		if rs, ok, err := r.TenantRoles("timekeeping", "beta"); err != nil || !ok || !slices.Equal(rs, []string{"accountant", "developer"}) {
			t.Fatalf("TenantRoles = %v %v %v", rs, ok, err)
		}
		if _, ok, err := r.TenantRoles("timekeeping", "nowhere"); err != nil || ok {
			t.Fatalf("TenantRoles(nowhere) ok=%v %v", ok, err)
		}
		if rs, err := r.UserRoles("alice", "timekeeping", "beta"); err != nil || !slices.Equal(rs, []string{"accountant"}) {
			t.Fatalf("UserRoles = %v, %v", rs, err)
		}
		// a key part holding the separator addresses nothing, and is not
		// confused with a composite key
		if rs, err := r.UserRoles("alice\x00timekeeping", "beta", ""); err != nil || rs != nil {
			t.Fatalf("UserRoles with a separator = %v, %v", rs, err)
		}
		wantReads := reads{
			"users[quinn] present", "users[nobody] absent", "tenants[alpha] present", "tenants[acme] present",
			"projects[timekeeping] present", "index.tenant_chain[alpha] present", "index.tenant_chain[nowhere] absent",
			"index.tenant_roles[timekeeping][beta] present", "index.tenant_roles[timekeeping][nowhere] absent",
			"index.user_roles[alice][timekeeping][beta] present",
		}
		if !slices.Equal(rec, wantReads) {
			t.Fatalf("recorded\n %v\nwant\n %v", rec, wantReads)
		}
	})
}

// TestReaderStamps: Get returns the stamp StampAt sees and a recorder
// receives; a rewrite by a later revision changes it, an unchanged index
// value keeps it.
func TestReaderStamps(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	stamp := func(doc int, keys ...string) (got, at tenancy.Stamp) {
		view(t, f.db, func(tx *bolt.Tx) {
			r := tenancy.NewReader(tx, nil)
			var err error
			if _, got, err = r.Get(doc, keys...); err != nil {
				t.Fatal(err)
			}
			if at, err = r.StampAt(doc, strings.Join(keys, "\x00")); err != nil {
				t.Fatal(err)
			}
		})
		return got, at
	}
	bob, bobAt := stamp(tenancy.DocUsers, "bob")
	roles, rolesAt := stamp(tenancy.DocTenantRoles, "timekeeping", "beta")
	if bob != bobAt || roles != rolesAt || bob.Rev != 1 || bob.Sum == 0 {
		t.Fatalf("stamps %v/%v %v/%v", bob, bobAt, roles, rolesAt)
	}
	if none, at := stamp(tenancy.DocUsers, "nobody"); none != (tenancy.Stamp{}) || at != none {
		t.Fatalf("absent stamp %v %v", none, at)
	}
	f.must(`[{"op":"put","collection":"users","value":{"id":"bob","tenant":"beta","status":"suspended"}},
	         {"op":"put","collection":"project_grants","value":{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["accountant","developer"],"status":"active"}}]`)
	if got, _ := stamp(tenancy.DocUsers, "bob"); got == bob || got.Rev != 2 {
		t.Fatalf("rewritten user: stamp %v, was %v", got, bob)
	}
	if got, _ := stamp(tenancy.DocTenantRoles, "timekeeping", "beta"); got != roles {
		t.Fatalf("unchanged tenant roles: stamp %v, was %v", got, roles)
	}
}

// TestReaderScans: id sets and partial keys list what the indexes hold.
func TestReaderScans(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	view(t, f.db, func(tx *bolt.Tx) {
		var rec reads
		r := tenancy.NewReader(tx, &rec)
		var ids []string
		if err := r.IDs(tenancy.DocProjectGrantIDs, []string{"timekeeping", "beta"}, func(id []byte) bool {
			ids = append(ids, string(id))
			return true
		}); err != nil || !slices.Equal(ids, []string{"pg-beta"}) {
			t.Fatalf("IDs = %v, %v", ids, err)
		}
		var got []string
		err := r.Scan(tenancy.DocTenantRoles, []string{"timekeeping"}, func(e tenancy.Entry) (bool, error) {
			got = append(got, strings.Join(e.Parts, "/")+"="+string(e.Doc))
			if e.Stamp.Rev != 1 {
				t.Errorf("%v: stamp %v", e.Parts, e.Stamp)
			}
			return true, nil
		})
		want := []string{`acme=["accountant","admin","developer"]`, `alpha=["accountant","developer"]`, `beta=["accountant","developer"]`}
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("Scan = %v, %v", got, err)
		}
		got = nil
		err = r.Scan(tenancy.DocUserGrantIDs, []string{"alice"}, func(e tenancy.Entry) (bool, error) {
			got = append(got, strings.Join(e.Parts, "/"))
			return true, nil
		})
		if err != nil || !slices.Equal(got, []string{"timekeeping/beta/ug-alice-beta"}) {
			t.Fatalf("Scan ids = %v, %v", got, err)
		}
		if len(rec) != 0 {
			t.Fatalf("scans were recorded as keyed reads: %v", rec)
		}
		if err := r.IDs(tenancy.DocUsers, []string{"bob"}, func([]byte) bool { return true }); err == nil {
			t.Fatal("IDs of a document that is not an id set")
		}
		if _, _, err := r.Get(tenancy.DocUserRoles, "bob"); err == nil {
			t.Fatal("Get with a partial key")
		}
	})
}

// TestReaderDamage: a value whose checksum fails, or whose document is not
// what its bucket holds, is an error wrapping ErrDamaged for every typed
// read; the read is still recorded with the stamp as stored.
func TestReaderDamage(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		doc  int
		key  []string
		bad  func(b *bolt.Bucket, k []byte) error
		read func(r *tenancy.Reader) error
	}{
		"flipped byte": {tenancy.DocUsers, []string{"bob"}, flip, func(r *tenancy.Reader) error { _, err := r.User("bob"); return err }},
		"flipped chain": {tenancy.DocTenantChain, []string{"beta"}, flip, func(r *tenancy.Reader) error {
			_, err := r.TenantChain("beta")
			return err
		}},
		"roles not a list": {tenancy.DocUserRoles, []string{"bob", "timekeeping", "beta"}, rewrite(`{"developer":true}`), func(r *tenancy.Reader) error {
			_, err := r.UserRoles("bob", "timekeeping", "beta")
			return err
		}},
		"user not an object": {tenancy.DocUsers, []string{"bob"}, rewrite(`["bob"]`), func(r *tenancy.Reader) error { _, err := r.User("bob"); return err }},
		"tenant truncated": {tenancy.DocTenants, []string{"beta"}, rewrite(`{"id":"beta","status":"act`), func(r *tenancy.Reader) error {
			_, err := r.Tenant("beta")
			return err
		}},
		"project roles of numbers": {tenancy.DocProjects, []string{"timekeeping"}, rewrite(`{"id":"timekeeping","owner":"acme","roles":[1]}`), func(r *tenancy.Reader) error {
			_, err := r.Project("timekeeping")
			return err
		}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFile(t)
			f.must(world)
			k := []byte(strings.Join(c.key, "\x00"))
			if err := f.db.Update(func(tx *bolt.Tx) error { return c.bad(tx.Bucket([]byte(tenancy.Docs[c.doc].Bucket)), k) }); err != nil {
				t.Fatal(err)
			}
			view(t, f.db, func(tx *bolt.Tx) {
				var rec reads
				err := c.read(tenancy.NewReader(tx, &rec))
				if !errors.Is(err, tenancy.ErrDamaged) {
					t.Fatalf("err = %v, want ErrDamaged", err)
				}
				if len(rec) != 1 || !strings.HasSuffix(rec[0], " present") {
					t.Fatalf("recorded %v", rec)
				}
			})
		})
	}
}

// flip flips a bit of a stored document.
func flip(b *bolt.Bucket, k []byte) error {
	v := append([]byte(nil), b.Get(k)...)
	v[len(v)-2] ^= 0x04
	return b.Put(k, v)
}

// rewrite stores doc under k with a valid checksum: damage a checksum
// cannot see (a writer bug), which the typed reads still refuse.
func rewrite(doc string) func(b *bolt.Bucket, k []byte) error {
	return func(b *bolt.Bucket, k []byte) error { return b.Put(k, tenancy.EncodeValueForTest(k, 7, []byte(doc))) }
}

// TestDecodeMatchesEncodingJSON: the typed reads decode stored entities as
// encoding/json does, for random entities whose strings hold quotes,
// escapes, control characters and any Unicode, with unknown fields.
func TestDecodeMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"a", "Z", "0", ".", "-", `"`, `\`, "/", "\n", "\t", "\x01", "<", "&", "é", "世", "😀", "\u2028", " ", "\ufffd"}
	str := func() string {
		var b strings.Builder
		for range rng.IntN(6) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	strs := func() []string {
		if rng.IntN(5) == 0 {
			return nil
		}
		out := []string{}
		for range rng.IntN(4) {
			out = append(out, str())
		}
		return out
	}
	labels := func() map[string]string {
		if rng.IntN(4) == 0 {
			return nil
		}
		m := map[string]string{}
		for range rng.IntN(3) {
			m[str()] = str()
		}
		return m
	}
	extra := func(doc []byte) []byte {
		if rng.IntN(2) == 0 {
			return doc
		}
		var m map[string]any
		if err := json.Unmarshal(doc, &m); err != nil {
			t.Fatal(err)
		}
		m["extra_"+str()] = []any{1.5e3, map[string]any{"x": []any{true, false, nil, str()}}, -2}
		out, _ := json.Marshal(m)
		return out
	}
	for i := range 3000 {
		u := tenancy.User{ID: str(), Tenant: str(), Kind: str(), Status: str(), Issuer: str(), Labels: labels()}
		tn := tenancy.Tenant{ID: str(), Name: str(), Parent: str(), Kind: str(), Status: str(), Labels: labels()}
		p := tenancy.Project{ID: str(), Owner: str(), Roles: strs(), Labels: labels()}
		roles := strs()
		ud, _ := json.Marshal(&u)
		td, _ := json.Marshal(&tn)
		pd, _ := json.Marshal(&p)
		rd, _ := json.Marshal(roles)
		ud, td, pd = extra(ud), extra(td), extra(pd)

		var wu tenancy.User
		var wt tenancy.Tenant
		var wp tenancy.Project
		var wr []string
		for _, err := range []error{json.Unmarshal(ud, &wu), json.Unmarshal(td, &wt), json.Unmarshal(pd, &wp), json.Unmarshal(rd, &wr)} {
			if err != nil {
				t.Fatal(err)
			}
		}
		gu, gt, gp, gr, err := tenancy.DecodeForTest(ud, td, pd, rd)
		if err != nil {
			t.Fatalf("case %d: %v\n%s\n%s\n%s\n%s", i, err, ud, td, pd, rd)
		}
		if wr == nil {
			wr = []string{} // a present list is never nil
		}
		if !reflect.DeepEqual(*gu, wu) || !reflect.DeepEqual(*gt, wt) || !reflect.DeepEqual(*gp, wp) || !reflect.DeepEqual(gr, wr) {
			t.Fatalf("case %d differs:\n%+v\n%+v\n%+v\n%+v\n%+v\n%+v\n%q\n%q", i, *gu, wu, *gt, wt, *gp, wp, gr, wr)
		}
	}
}

// TestDecodeRefusesMalformed: truncations and corruptions of well-formed
// documents never decode as something else silently, and never panic.
func TestDecodeRefusesMalformed(t *testing.T) {
	t.Parallel()
	docs := []string{
		`{"id":"bob","tenant":"beta","kind":"human","status":"active","issuer":"https://idp/","labels":{"a":"b"}}`,
		`["alpha","acme"]`,
		`{"id":"p","owner":"acme","roles":["a","b\"c"],"labels":{},"x":[1,{"y":null}]}`,
	}
	for _, doc := range docs {
		for n := range len(doc) {
			cut := doc[:n]
			if json.Valid([]byte(cut)) {
				continue
			}
			if _, _, _, _, err := tenancy.DecodeForTest([]byte(cut), []byte(cut), []byte(cut), []byte(cut)); err == nil {
				t.Errorf("%q decoded", cut)
			}
		}
	}
}
