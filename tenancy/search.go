package tenancy

import (
	"bytes"
	"slices"
)

// Reads for searches (the AuthZEN subject and resource searches, SPEC §10):
// who may be asked about, found from keyed indexes, never by scanning a
// collection. Their cost follows the size of the answer, not of the data.

// ProjectUsers returns the ids of the users holding user grants on project
// p in tenant x, sorted and without duplicates: the grants are found under
// the key (p, x) of the project_user_grants index (maintained on every
// write, checked by Validate), each grant read by its id. Listing the index
// is a scan: not recorded; the grants read are.
func (r *Reader) ProjectUsers(p, x string) ([]string, error) {
	if r.tx == nil || !ValidKeyPart(p) || !ValidKeyPart(x) {
		return []string{}, nil
	}
	b := r.tx.Bucket([]byte(xProjectUserGrants))
	if b == nil {
		return []string{}, nil
	}
	pre := prefix(p, x)
	var grants []string
	c := b.Cursor()
	for k, v := c.Seek(pre); k != nil && bytes.HasPrefix(k, pre); k, v = c.Next() {
		if err := CheckIndexKey(k, v); err != nil {
			return nil, err
		}
		grants = append(grants, string(k[len(pre):]))
	}
	users := make([]string, 0, len(grants))
	for _, id := range grants {
		doc, _, err := r.Get(DocUserGrants, id)
		if err != nil {
			return nil, err
		}
		if doc == nil {
			continue // the index and the grant disagree: Validate reports it
		}
		u, err := viewGrantUser(doc)
		if err != nil {
			return nil, r.undecodable(DocUserGrants, err, id)
		}
		users = append(users, u)
	}
	slices.Sort(users)
	return slices.Compact(users), nil
}

// UserTenants returns the tenants in which user u holds grants on project
// p (the keys of index.user_roles[u][p]), sorted. A scan: not recorded.
func (r *Reader) UserTenants(u, p string) ([]string, error) {
	out := []string{}
	if r.tx == nil {
		return out, nil
	}
	err := r.Scan(DocUserRoles, []string{u, p}, func(e Entry) (bool, error) {
		out = append(out, e.Parts[0])
		return true, nil
	})
	return out, err
}

// viewGrantUser reads the "user" field of a stored user grant.
func viewGrantUser(doc []byte) (string, error) {
	var user string
	d := decoder{b: doc}
	err := d.object(func(key []byte) (err error) {
		if string(key) == "user" {
			user, err = d.str()
			return err
		}
		return d.skip()
	})
	return user, err
}
