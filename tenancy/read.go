package tenancy

import (
	bolt "go.etcd.io/bbolt"
)

// UserMemberships returns the memberships of user, in membership id order,
// read through the x/user_memberships index (no scan of the collection).
// The control endpoint resolves a delegated administrator's rights with it.
func UserMemberships(tx *bolt.Tx, user string) ([]*Membership, error) {
	idx := tx.Bucket([]byte(xUserMemberships))
	if idx == nil {
		return nil, ErrNotInitialized
	}
	var ids []string
	scanPrefix(idx, prefix(user), func(rest []string) bool {
		ids = append(ids, rest[len(rest)-1])
		return true
	})
	out := make([]*Membership, 0, len(ids))
	for _, id := range ids {
		e, err := Get(tx, Memberships, id)
		if err != nil {
			return nil, err
		}
		if e != nil {
			out = append(out, e.(*Membership))
		}
	}
	return out, nil
}

// TenantChildren returns the ids of the tenants whose parent is t, in id
// order, read through the x/tenant_children index (no scan of the
// collection). The control endpoint widens a service-provider admin's
// audit view with it.
func TenantChildren(tx *bolt.Tx, t string) ([]string, error) {
	idx := tx.Bucket([]byte(xTenantChildren))
	if idx == nil {
		return nil, ErrNotInitialized
	}
	var ids []string
	scanPrefix(idx, prefix(t), func(rest []string) bool {
		ids = append(ids, rest[len(rest)-1])
		return true
	})
	return ids, nil
}
