package tenancy_test

import (
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// The search reads answer from the indexes the writes maintain: users of
// a project in a tenant (once each, whatever their number of grants; gone
// with their last grant), tenants of a user on a project.
func TestSearchReads(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	f.must(`[{"op":"put","collection":"user_grants","value":{"id":"alice-tk-beta-2","user":"alice","project":"timekeeping","tenant":"beta","roles":["developer"]}}]`)
	check := func(wantUsers, wantTenants []string) {
		t.Helper()
		view(t, f.db, func(tx *bolt.Tx) {
			r := tenancy.NewReader(tx, nil)
			users, err := r.ProjectUsers("timekeeping", "beta")
			if err != nil || !slices.Equal(users, wantUsers) {
				t.Errorf("ProjectUsers(timekeeping, beta) = %v, %v; want %v", users, err, wantUsers)
			}
			tenants, err := r.UserTenants("alice", "timekeeping")
			if err != nil || !slices.Equal(tenants, wantTenants) {
				t.Errorf("UserTenants(alice, timekeeping) = %v, %v; want %v", tenants, err, wantTenants)
			}
			for _, bad := range [][2]string{{"timekeeping\x00beta", ""}, {"nope", "beta"}, {"timekeeping", "nowhere"}} {
				if u, err := r.ProjectUsers(bad[0], bad[1]); err != nil || len(u) != 0 {
					t.Errorf("ProjectUsers(%q, %q) = %v, %v", bad[0], bad[1], u, err)
				}
			}
		})
	}
	check([]string{"alice", "bob"}, []string{"beta"})
	f.must(`[{"op":"put","collection":"user_grants","value":{"id":"ug-alice-alpha","user":"alice","project":"timekeeping","tenant":"alpha","roles":["developer"]}}]`)
	check([]string{"alice", "bob"}, []string{"alpha", "beta"})
	f.must(`[{"op":"delete","collection":"user_grants","id":"ug-alice-beta"},{"op":"delete","collection":"user_grants","id":"ug-bob"}]`)
	check([]string{"alice"}, []string{"alpha", "beta"})
	f.must(`[{"op":"delete","collection":"user_grants","id":"alice-tk-beta-2"}]`)
	check([]string{}, []string{"alpha"})
	// deleting the project grant takes its user grants along
	f.must(`[{"op":"put","collection":"user_grants","value":{"id":"ug-bob","user":"bob","project":"timekeeping","tenant":"beta","roles":["developer"]}},{"op":"delete","collection":"project_grants","id":"pg-beta"}]`)
	check([]string{}, []string{"alpha"})
	view(t, f.db, func(tx *bolt.Tx) {
		if err := tenancy.Validate(tx); err != nil {
			t.Fatal(err)
		}
	})
}
