package tenancy_test

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// world is a small file with the seeds' shape: a vendor (service provider)
// with a project granted to two customers, and an external accountant.
const world = `[
 {"op":"put","collection":"tenants","value":{"id":"acme","name":"ACME","kind":"service_provider"}},
 {"op":"put","collection":"tenants","value":{"id":"alpha","name":"Alpha","parent":"acme","kind":"customer"}},
 {"op":"put","collection":"tenants","value":{"id":"beta","name":"Beta","parent":"acme","kind":"customer"}},
 {"op":"put","collection":"users","value":{"id":"alice","tenant":"alpha"}},
 {"op":"put","collection":"users","value":{"id":"bob","tenant":"beta"}},
 {"op":"put","collection":"users","value":{"id":"carol","tenant":"acme"}},
 {"op":"put","collection":"projects","value":{"id":"timekeeping","owner":"acme","roles":["accountant","developer","admin"]}},
 {"op":"put","collection":"project_grants","value":{"id":"pg-alpha","project":"timekeeping","tenant":"alpha","roles":["accountant","developer"]}},
 {"op":"put","collection":"project_grants","value":{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["accountant","developer"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-bob","user":"bob","project":"timekeeping","tenant":"beta","roles":["developer"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-alice-beta","user":"alice","project":"timekeeping","tenant":"beta","roles":["accountant"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-carol","user":"carol","project":"timekeeping","tenant":"acme","roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m-bob","user":"bob","scope":{"type":"project_grant","id":"pg-beta"},"roles":["admin"]}}
]`

type file struct {
	t   testing.TB
	db  *bolt.DB
	rev uint64
}

func newFile(t testing.TB) *file {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "t.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(tenancy.Init); err != nil {
		t.Fatal(err)
	}
	return &file{t: t, db: db}
}

func ops(t testing.TB, s string) []tenancy.Op {
	t.Helper()
	var out []tenancy.Op
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// apply applies a batch in one transaction; on error it rolls back.
func (f *file) apply(o []tenancy.Op) ([]tenancy.Change, error) {
	var changes []tenancy.Change
	err := f.db.Update(func(tx *bolt.Tx) error {
		w, err := tenancy.NewWriter(tx, f.rev+1)
		if err != nil {
			return err
		}
		if err := tenancy.Apply(w, o); err != nil {
			return err
		}
		changes = w.Changes()
		return w.Finish()
	})
	if err == nil {
		f.rev++
	}
	return changes, err
}

func (f *file) must(s string) []tenancy.Change {
	f.t.Helper()
	c, err := f.apply(ops(f.t, s))
	if err != nil {
		f.t.Fatalf("apply: %v", err)
	}
	return c
}

// index reads a policy or secondary index value as JSON.
func (f *file) index(bucket string, parts ...string) any {
	f.t.Helper()
	var out any
	_ = f.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte(bucket)).Get([]byte(strings.Join(parts, "\x00")))
		if v == nil {
			return nil
		}
		_, doc := tenancy.ModRevision(v)
		return json.Unmarshal(doc, &out)
	})
	return out
}

func (f *file) exists(collection, id string) bool {
	var e tenancy.Entity
	_ = f.db.View(func(tx *bolt.Tx) error {
		var err error
		e, err = tenancy.Get(tx, collection, id)
		return err
	})
	return e != nil
}

func roles(rs ...string) any {
	out := make([]any, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

func TestIndexes(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	checks := map[string]struct {
		bucket string
		key    []string
		want   any
	}{
		"chain of a child":        {"i/tenant_chain", []string{"alpha"}, roles("alpha", "acme")},
		"chain of the root":       {"i/tenant_chain", []string{"acme"}, roles("acme")},
		"owner holds every role":  {"i/tenant_roles", []string{"timekeeping", "acme"}, roles("accountant", "admin", "developer")},
		"grantee holds its roles": {"i/tenant_roles", []string{"timekeeping", "beta"}, roles("accountant", "developer")},
		"external user's roles":   {"i/user_roles", []string{"alice", "timekeeping", "beta"}, roles("accountant")},
		"internal user's roles":   {"i/user_roles", []string{"bob", "timekeeping", "beta"}, roles("developer")},
		"no grant, no entry":      {"i/user_roles", []string{"alice", "timekeeping", "alpha"}, nil},
	}
	for name, c := range checks {
		if got := f.index(c.bucket, c.key...); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %s%v = %v, want %v", name, c.bucket, c.key, got, c.want)
		}
	}
}

func TestRefusedWritesLeaveNothing(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		ops    string
		status int
		msg    string
	}{
		"bad json":              {`[{"op":"put","collection":"users","value":{"id":"x",}}]`, 400, ""},
		"unknown field":         {`[{"op":"put","collection":"users","value":{"id":"x","tenant":"acme","colour":"red"}}]`, 422, "colour"},
		"bad id":                {`[{"op":"put","collection":"users","value":{"id":"a b","tenant":"acme"}}]`, 422, "not a valid id"},
		"wrong field type":      {`[{"op":"put","collection":"projects","value":{"id":"p","owner":"acme","roles":"admin"}}]`, 422, "roles"},
		"bad status":            {`[{"op":"put","collection":"users","value":{"id":"x","tenant":"acme","status":"gone"}}]`, 422, "status"},
		"dangling tenant":       {`[{"op":"put","collection":"users","value":{"id":"x","tenant":"nowhere"}}]`, 409, "nowhere"},
		"grant role not held":   {`[{"op":"put","collection":"project_grants","value":{"id":"pg-x","project":"timekeeping","tenant":"acme2","roles":["root"]}}]`, 409, ""},
		"grant to owner":        {`[{"op":"put","collection":"project_grants","value":{"id":"pg-x","project":"timekeeping","tenant":"acme","roles":[]}}]`, 409, "never granted to its owner"},
		"second grant":          {`[{"op":"put","collection":"project_grants","value":{"id":"pg-x","project":"timekeeping","tenant":"beta","roles":[]}}]`, 409, "already holds"},
		"user grant role":       {`[{"op":"put","collection":"user_grants","value":{"id":"ug-x","user":"bob","project":"timekeeping","tenant":"beta","roles":["admin"]}}]`, 409, "not held"},
		"user grant no grant":   {`[{"op":"put","collection":"user_grants","value":{"id":"ug-x","user":"bob","project":"timekeeping","tenant":"gamma","roles":[]}}]`, 409, ""},
		"cycle":                 {`[{"op":"put","collection":"tenants","value":{"id":"acme","parent":"alpha"}}]`, 409, "cycle"},
		"self parent":           {`[{"op":"put","collection":"tenants","value":{"id":"acme","parent":"acme"}}]`, 409, "own parent"},
		"delete with users":     {`[{"op":"delete","collection":"tenants","id":"beta"}]`, 409, "still has"},
		"delete unknown":        {`[{"op":"delete","collection":"users","id":"nobody"}]`, 404, ""},
		"unknown collection":    {`[{"op":"put","collection":"widgets","value":{}}]`, 404, ""},
		"owner change":          {`[{"op":"put","collection":"projects","value":{"id":"timekeeping","owner":"beta","roles":[]}}]`, 409, "owner cannot change"},
		"later op breaks batch": {`[{"op":"put","collection":"users","value":{"id":"new","tenant":"acme"}},{"op":"put","collection":"users","value":{"id":"new2","tenant":"missing"}}]`, 409, "ops[1]"},
		"delete then refer":     {`[{"op":"delete","collection":"user_grants","id":"ug-bob"},{"op":"delete","collection":"users","id":"bob"},{"op":"put","collection":"user_grants","value":{"id":"ug-y","user":"bob","project":"timekeeping","tenant":"beta","roles":[]}}]`, 409, ""},
		"path id mismatch":      {`[{"op":"put","collection":"users","id":"x","value":{"id":"y","tenant":"acme"}}]`, 422, "differ"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFile(t)
			f.must(world)
			var o []tenancy.Op
			if err := json.Unmarshal([]byte(c.ops), &o); err != nil {
				// a body that is not JSON at all is the API's 400; here the
				// value itself is bad JSON inside a valid batch
				o = []tenancy.Op{{Op: "put", Collection: "users", Value: json.RawMessage(`{"id":"x",}`)}}
			}
			before := f.rev
			_, err := f.apply(o)
			var te *tenancy.Error
			if !errors.As(err, &te) {
				t.Fatalf("err = %v, want *tenancy.Error", err)
			}
			if te.Status != c.status || !strings.Contains(te.Msg, c.msg) {
				t.Fatalf("got %d %q, want %d containing %q", te.Status, te.Msg, c.status, c.msg)
			}
			if f.rev != before {
				t.Fatal("revision advanced")
			}
			if !f.exists(tenancy.Users, "bob") || f.exists(tenancy.Users, "new") {
				t.Fatal("a refused batch changed the state")
			}
		})
	}
}

func TestCascades(t *testing.T) {
	t.Parallel()
	t.Run("deleting a project grant deletes its user grants and memberships", func(t *testing.T) {
		t.Parallel()
		f := newFile(t)
		f.must(world)
		changes := f.must(`[{"op":"delete","collection":"project_grants","id":"pg-beta"}]`)
		for _, g := range []string{"ug-bob", "ug-alice-beta"} {
			if f.exists(tenancy.UserGrants, g) {
				t.Errorf("%s survived", g)
			}
		}
		if f.exists(tenancy.Memberships, "m-bob") {
			t.Error("membership scoped to the grant survived")
		}
		if got := f.index("i/user_roles", "bob", "timekeeping", "beta"); got != nil {
			t.Errorf("user_roles = %v after the grant went", got)
		}
		if got := f.index("i/tenant_roles", "timekeeping", "beta"); got != nil {
			t.Errorf("tenant_roles = %v after the grant went", got)
		}
		if len(changes) != 4 {
			t.Errorf("changes = %+v, want the grant, two user grants, one membership", changes)
		}
	})
	t.Run("removing a project role removes it from grants and user grants", func(t *testing.T) {
		t.Parallel()
		f := newFile(t)
		f.must(world)
		f.must(`[{"op":"put","collection":"projects","value":{"id":"timekeeping","owner":"acme","roles":["developer","admin"]}}]`)
		if got := f.index("i/tenant_roles", "timekeeping", "beta"); !reflect.DeepEqual(got, roles("developer")) {
			t.Errorf("beta holds %v", got)
		}
		if got := f.index("i/user_roles", "alice", "timekeeping", "beta"); !reflect.DeepEqual(got, roles()) {
			t.Errorf("alice has %v, want []", got)
		}
	})
	t.Run("removing a grant role removes it from user grants under the grant", func(t *testing.T) {
		t.Parallel()
		f := newFile(t)
		f.must(world)
		f.must(`[{"op":"put","collection":"project_grants","value":{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["accountant"]}}]`)
		if got := f.index("i/user_roles", "bob", "timekeeping", "beta"); !reflect.DeepEqual(got, roles()) {
			t.Errorf("bob has %v", got)
		}
		if got := f.index("i/user_roles", "carol", "timekeeping", "acme"); !reflect.DeepEqual(got, roles("admin")) {
			t.Errorf("carol (owner tenant) lost roles: %v", got)
		}
	})
	t.Run("cascade deletes a service provider and everything below it", func(t *testing.T) {
		t.Parallel()
		f := newFile(t)
		f.must(world)
		f.must(`[{"op":"delete","collection":"tenants","id":"acme","cascade":true}]`)
		for _, c := range []struct{ coll, id string }{
			{tenancy.Tenants, "alpha"}, {tenancy.Users, "bob"}, {tenancy.Projects, "timekeeping"},
			{tenancy.UserGrants, "ug-alice-beta"}, {tenancy.Memberships, "m-bob"},
		} {
			if f.exists(c.coll, c.id) {
				t.Errorf("%s/%s survived", c.coll, c.id)
			}
		}
		if got := f.index("i/tenant_chain", "alpha"); got != nil {
			t.Errorf("chain of deleted tenant = %v", got)
		}
	})
	t.Run("suspending a grant drops the tenant's roles but keeps user grants", func(t *testing.T) {
		t.Parallel()
		f := newFile(t)
		f.must(world)
		f.must(`[{"op":"put","collection":"project_grants","value":{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["accountant","developer"],"status":"suspended"}}]`)
		if got := f.index("i/tenant_roles", "timekeeping", "beta"); got != nil {
			t.Errorf("suspended grant still gives %v", got)
		}
		if !f.exists(tenancy.UserGrants, "ug-bob") {
			t.Error("user grant removed by a suspension")
		}
	})
	t.Run("moving a tenant rewrites the chains of its subtree", func(t *testing.T) {
		t.Parallel()
		f := newFile(t)
		f.must(world)
		f.must(`[{"op":"put","collection":"tenants","value":{"id":"root"}},
		        {"op":"put","collection":"tenants","value":{"id":"gamma","parent":"alpha"}},
		        {"op":"put","collection":"tenants","value":{"id":"acme","parent":"root","kind":"service_provider"}}]`)
		if got := f.index("i/tenant_chain", "gamma"); !reflect.DeepEqual(got, roles("gamma", "alpha", "acme", "root")) {
			t.Errorf("chain = %v", got)
		}
	})
}

func TestApplyChangeReplaysTheFeed(t *testing.T) {
	t.Parallel()
	src := newFile(t)
	changes := src.must(world)
	changes = append(changes, src.must(`[{"op":"delete","collection":"project_grants","id":"pg-alpha"}]`)...)
	dst := newFile(t)
	err := dst.db.Update(func(tx *bolt.Tx) error {
		w, err := tenancy.NewWriter(tx, 2)
		if err != nil {
			return err
		}
		for _, c := range changes {
			if err := w.ApplyChange(c); err != nil {
				return err
			}
		}
		return w.Finish()
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct {
		bucket string
		key    []string
	}{{"i/tenant_chain", []string{"beta"}}, {"i/tenant_roles", []string{"timekeeping", "alpha"}}, {"i/user_roles", []string{"alice", "timekeeping", "beta"}}} {
		if a, d := src.index(b.bucket, b.key...), dst.index(b.bucket, b.key...); !reflect.DeepEqual(a, d) {
			t.Errorf("%s%v: source %v, replica %v", b.bucket, b.key, a, d)
		}
	}
}
