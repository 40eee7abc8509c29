package tenancy_test

import (
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

func TestUserMemberships(t *testing.T) {
	t.Parallel()
	f := newFile(t)
	f.must(world)
	// "bo" is a prefix of "bob": the index lookup must not mix them up.
	f.must(`[{"op":"put","collection":"users","value":{"id":"bo","tenant":"beta"}},
	        {"op":"put","collection":"memberships","value":{"id":"m-bo","user":"bo","scope":{"type":"tenant","id":"beta"},"roles":["admin"]}},
	        {"op":"put","collection":"memberships","value":{"id":"m-bob-2","user":"bob","scope":{"type":"tenant","id":"beta"},"roles":["viewer"]}}]`)
	cases := map[string][]string{
		"bob":    {"m-bob", "m-bob-2"},
		"bo":     {"m-bo"},
		"alice":  {},
		"nobody": {},
	}
	for user, want := range cases {
		var got []string
		err := f.db.View(func(tx *bolt.Tx) error {
			ms, err := tenancy.UserMemberships(tx, user)
			for _, m := range ms {
				got = append(got, m.ID)
			}
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: memberships %v, want %v", user, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%s: memberships %v, want %v", user, got, want)
			}
		}
	}
}
