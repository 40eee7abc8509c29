package tenancy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// maxProblems bounds the problems Validate reports.
const maxProblems = 100

// Validate checks a whole tenancy file from scratch, independently of how
// it was written (Apply checks only what a write touches): every entity
// decodes, is valid alone and is stored under its id; every invariant of
// SPEC §5 holds across collections (references, roles, grants never to the
// owner, one grant per tenant and project, tenants without cycles and with
// at most MaxAncestors ancestors); and every secondary and policy index
// holds exactly what the entities imply, so a complete tenant chain is
// never cut. It reads every entity into memory: it is meant for tests and
// offline checks, not for the request path. The error wraps
// ErrInconsistent and lists the problems found (at most 100).
func Validate(tx *bolt.Tx) error {
	if err := Check(tx); err != nil {
		return err
	}
	v := &validator{tx: tx}
	v.load()
	v.entities()
	v.indexes()
	if len(v.problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w:\n%s", ErrInconsistent, strings.Join(v.problems, "\n"))
}

type validator struct {
	tx       *bolt.Tx
	problems []string

	tenants     map[string]*Tenant
	users       map[string]*User
	projects    map[string]*Project
	grants      map[string]*ProjectGrant
	userGrants  map[string]*UserGrant
	memberships map[string]*Membership
	all         []Entity
	// chains of the tenants whose chain is valid
	chains map[string][]string
}

func (v *validator) fail(format string, args ...any) {
	if len(v.problems) < maxProblems {
		v.problems = append(v.problems, fmt.Sprintf(format, args...))
	}
}

// load decodes every entity.
func (v *validator) load() {
	v.tenants = map[string]*Tenant{}
	v.users = map[string]*User{}
	v.projects = map[string]*Project{}
	v.grants = map[string]*ProjectGrant{}
	v.userGrants = map[string]*UserGrant{}
	v.memberships = map[string]*Membership{}
	for _, c := range Collections {
		_ = v.tx.Bucket(entityBucket(c)).ForEach(func(k, val []byte) error {
			_, doc := ModRevision(val)
			e, err := DecodeStored(c, doc)
			switch {
			case err != nil:
				v.fail("%s/%s: %v", c, k, err)
				return nil
			case e.Key() != string(k):
				v.fail("%s/%s: stored under another id than its own (%q)", c, k, e.Key())
				return nil
			}
			v.all = append(v.all, e)
			switch e := e.(type) {
			case *Tenant:
				v.tenants[e.ID] = e
			case *User:
				v.users[e.ID] = e
			case *Project:
				v.projects[e.ID] = e
			case *ProjectGrant:
				v.grants[e.ID] = e
			case *UserGrant:
				v.userGrants[e.ID] = e
			case *Membership:
				v.memberships[e.ID] = e
			}
			return nil
		})
	}
}

// entities checks the invariants between entities.
func (v *validator) entities() {
	v.chains = map[string][]string{}
	for id, t := range v.tenants {
		if t.Parent != "" && v.tenants[t.Parent] == nil {
			v.fail("tenants/%s: parent %q does not exist", id, t.Parent)
			continue
		}
		chain := []string{id}
		for cur := t.Parent; cur != ""; cur = v.tenants[cur].Parent {
			if slices.Contains(chain, cur) {
				v.fail("tenants/%s: its ancestors loop (%s)", id, strings.Join(append(chain, cur), " > "))
				chain = nil
				break
			}
			if v.tenants[cur] == nil {
				chain = nil // reported for the tenant whose parent it is
				break
			}
			chain = append(chain, cur)
			if len(chain)-1 > MaxAncestors {
				v.fail("tenants/%s: more than %d ancestors", id, MaxAncestors)
				chain = nil
				break
			}
		}
		if chain != nil {
			v.chains[id] = chain
		}
	}
	for id, u := range v.users {
		if v.tenants[u.Tenant] == nil {
			v.fail("users/%s: tenant %q does not exist", id, u.Tenant)
		}
	}
	for id, p := range v.projects {
		if v.tenants[p.Owner] == nil {
			v.fail("projects/%s: owner %q does not exist", id, p.Owner)
		}
	}
	grantOf := map[[2]string]string{} // project, tenant → grant
	for id, g := range v.grants {
		p := v.projects[g.Project]
		if p == nil {
			v.fail("project_grants/%s: project %q does not exist", id, g.Project)
		}
		if v.tenants[g.Tenant] == nil {
			v.fail("project_grants/%s: tenant %q does not exist", id, g.Tenant)
		}
		if other, ok := grantOf[[2]string{g.Project, g.Tenant}]; ok {
			v.fail("project_grants/%s and %s: two grants of project %q to tenant %q", min(id, other), max(id, other), g.Project, g.Tenant)
		}
		grantOf[[2]string{g.Project, g.Tenant}] = id
		if p == nil {
			continue
		}
		if p.Owner == g.Tenant {
			v.fail("project_grants/%s: project %q is granted to its owner %q", id, g.Project, g.Tenant)
		}
		if extra := minus(g.Roles, p.Roles); len(extra) > 0 {
			v.fail("project_grants/%s: roles %v are not roles of project %q", id, extra, g.Project)
		}
	}
	for id, g := range v.userGrants {
		if v.users[g.User] == nil {
			v.fail("user_grants/%s: user %q does not exist", id, g.User)
		}
		if v.tenants[g.Tenant] == nil {
			v.fail("user_grants/%s: tenant %q does not exist", id, g.Tenant)
		}
		p := v.projects[g.Project]
		if p == nil {
			v.fail("user_grants/%s: project %q does not exist", id, g.Project)
			continue
		}
		held := p.Roles
		if p.Owner != g.Tenant {
			pg, ok := grantOf[[2]string{g.Project, g.Tenant}]
			if !ok {
				v.fail("user_grants/%s: tenant %q neither owns project %q nor holds a grant on it", id, g.Tenant, g.Project)
				continue
			}
			held = v.grants[pg].Roles
		}
		if extra := minus(g.Roles, held); len(extra) > 0 {
			v.fail("user_grants/%s: roles %v are not held by tenant %q on project %q", id, extra, g.Tenant, g.Project)
		}
	}
	for id, m := range v.memberships {
		if v.users[m.User] == nil {
			v.fail("memberships/%s: user %q does not exist", id, m.User)
		}
		var ok bool
		switch m.Scope.Type {
		case ScopeTenant:
			ok = v.tenants[m.Scope.ID] != nil
		case ScopeProject:
			ok = v.projects[m.Scope.ID] != nil
		case ScopeProjectGrant:
			ok = v.grants[m.Scope.ID] != nil
		}
		if !ok {
			v.fail("memberships/%s: scope %s %q does not exist", id, m.Scope.Type, m.Scope.ID)
		}
	}
}

// indexes compares every index bucket with what the entities imply.
func (v *validator) indexes() {
	want := map[string]map[string]any{}
	for _, b := range secondaryBuckets {
		want[b] = map[string]any{}
	}
	for _, e := range v.all {
		for b, k := range secondaryKeys(e) {
			want[b][string(k)] = nil
		}
	}
	chains, tenantRoles, userRoles := map[string]any{}, map[string]any{}, map[string]any{}
	for id, c := range v.chains {
		chains[id] = c
	}
	for _, p := range v.projects {
		tenantRoles[string(key(p.ID, p.Owner))] = p.Roles
	}
	for _, g := range v.grants {
		if g.Status == StatusActive && v.projects[g.Project] != nil && v.projects[g.Project].Owner != g.Tenant {
			tenantRoles[string(key(g.Project, g.Tenant))] = g.Roles
		}
	}
	union := map[string][]string{}
	for _, g := range v.userGrants {
		k := string(key(g.User, g.Project, g.Tenant))
		union[k] = append(union[k], g.Roles...)
	}
	for k, rs := range union {
		userRoles[k] = NormalizeRoles(rs)
	}
	want[iTenantChain], want[iTenantRoles], want[iUserRoles] = chains, tenantRoles, userRoles

	for _, b := range append(slices.Clone(secondaryBuckets), policyBuckets...) {
		policy := slices.Contains(policyBuckets, b)
		seen := map[string]bool{}
		_ = v.tx.Bucket([]byte(b)).ForEach(func(k, val []byte) error {
			name := strings.ReplaceAll(string(k), "\x00", "/")
			exp, ok := want[b][string(k)]
			seen[string(k)] = true
			if !ok {
				if b != iTenantChain || v.tenants[string(k)] == nil { // invalid chains are reported above
					v.fail("index %s: %s should not be there", b, name)
				}
				return nil
			}
			if !policy {
				return nil
			}
			_, doc := ModRevision(val)
			var got []string
			if err := json.Unmarshal(doc, &got); err != nil || !slices.Equal(got, exp.([]string)) {
				v.fail("index %s: %s is %s, want %v", b, name, doc, exp)
			}
			return nil
		})
		for k := range want[b] {
			if !seen[k] {
				v.fail("index %s: %s is missing", b, strings.ReplaceAll(k, "\x00", "/"))
			}
		}
	}
}
