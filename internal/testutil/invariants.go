package testutil

import (
	"fmt"
	"slices"
	"sort"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// State is a whole tenancy state: collection → id → entity. Tests build it
// from a bbolt file (StateFromTx), from the control API's lists, or from a
// model of their own, and judge it with Violations.
type State map[string]map[string]tenancy.Entity

// NewState returns an empty state with every collection present.
func NewState() State {
	s := State{}
	for _, c := range tenancy.Collections {
		s[c] = map[string]tenancy.Entity{}
	}
	return s
}

// Clone returns a copy of the maps (entities are shared: treat them as
// immutable).
func (s State) Clone() State {
	out := NewState()
	for c, m := range s {
		for id, e := range m {
			out[c][id] = e
		}
	}
	return out
}

// Count is the number of entities.
func (s State) Count() int {
	n := 0
	for _, m := range s {
		n += len(m)
	}
	return n
}

// StateFromTx reads every entity of a tenancy bbolt file (control or
// sidecar layout); an entity that does not decode is an error.
func StateFromTx(tx *bolt.Tx) (State, error) {
	s := NewState()
	for _, c := range tenancy.Collections {
		b := tx.Bucket([]byte("e/" + c))
		if b == nil {
			return nil, fmt.Errorf("bucket e/%s is missing", c)
		}
		err := b.ForEach(func(k, v []byte) error {
			_, doc := tenancy.ModRevision(v)
			e, err := tenancy.DecodeStored(c, doc)
			if err != nil {
				return fmt.Errorf("%s/%s: %w", c, k, err)
			}
			if e.Key() != string(k) {
				return fmt.Errorf("%s/%s holds id %q", c, k, e.Key())
			}
			s[c][string(k)] = e
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Violations lists, in a stable order, every invariant of SPEC §5 the
// state breaks, checked from scratch over the whole state (independently
// of tenancy.Apply, which checks only what a write touched): valid ids,
// references to existing entities, no parent cycles and at most 64
// ancestors, a project grant's roles within its project's and never to the
// owner, at most one grant per project and tenant, a user grant's roles
// within what its tenant holds on the project.
func (s State) Violations() []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	has := func(c, id string) bool { _, ok := s[c][id]; return ok }
	for _, c := range tenancy.Collections {
		for id := range s[c] {
			if !tenancy.ValidID(id) {
				bad("%s/%q: invalid id", c, id)
			}
		}
	}
	for id, e := range s[tenancy.Tenants] {
		t := e.(*tenancy.Tenant)
		if t.Parent == "" {
			continue
		}
		if !has(tenancy.Tenants, t.Parent) {
			bad("tenants/%s: parent %q does not exist", id, t.Parent)
			continue
		}
		seen := map[string]bool{id: true}
		for cur, depth := t.Parent, 0; cur != ""; depth++ {
			if seen[cur] {
				bad("tenants/%s: parent cycle through %q", id, cur)
				break
			}
			if depth >= 64 {
				bad("tenants/%s: more than 64 ancestors", id)
				break
			}
			seen[cur] = true
			p, ok := s[tenancy.Tenants][cur]
			if !ok {
				break // reported on the tenant whose parent is missing
			}
			cur = p.(*tenancy.Tenant).Parent
		}
	}
	for id, e := range s[tenancy.Users] {
		if u := e.(*tenancy.User); !has(tenancy.Tenants, u.Tenant) {
			bad("users/%s: tenant %q does not exist", id, u.Tenant)
		}
	}
	for id, e := range s[tenancy.Projects] {
		if p := e.(*tenancy.Project); !has(tenancy.Tenants, p.Owner) {
			bad("projects/%s: owner %q does not exist", id, p.Owner)
		}
	}
	grantOf := map[[2]string][]string{} // project, tenant → grant ids
	for id, e := range s[tenancy.ProjectGrants] {
		g := e.(*tenancy.ProjectGrant)
		grantOf[[2]string{g.Project, g.Tenant}] = append(grantOf[[2]string{g.Project, g.Tenant}], id)
		if !has(tenancy.Tenants, g.Tenant) {
			bad("project_grants/%s: tenant %q does not exist", id, g.Tenant)
		}
		pe, ok := s[tenancy.Projects][g.Project]
		if !ok {
			bad("project_grants/%s: project %q does not exist", id, g.Project)
			continue
		}
		p := pe.(*tenancy.Project)
		if p.Owner == g.Tenant {
			bad("project_grants/%s: project %q granted to its owner", id, p.ID)
		}
		if extra := minusRoles(g.Roles, p.Roles); len(extra) > 0 {
			bad("project_grants/%s: roles %v are not roles of project %q", id, extra, p.ID)
		}
	}
	for k, ids := range grantOf {
		if len(ids) > 1 {
			sort.Strings(ids)
			bad("project %q is granted to tenant %q %d times (%v)", k[0], k[1], len(ids), ids)
		}
	}
	for id, e := range s[tenancy.UserGrants] {
		g := e.(*tenancy.UserGrant)
		if !has(tenancy.Users, g.User) {
			bad("user_grants/%s: user %q does not exist", id, g.User)
		}
		if !has(tenancy.Tenants, g.Tenant) {
			bad("user_grants/%s: tenant %q does not exist", id, g.Tenant)
		}
		pe, ok := s[tenancy.Projects][g.Project]
		if !ok {
			bad("user_grants/%s: project %q does not exist", id, g.Project)
			continue
		}
		p := pe.(*tenancy.Project)
		held := p.Roles
		if p.Owner != g.Tenant {
			ids := grantOf[[2]string{g.Project, g.Tenant}]
			if len(ids) == 0 {
				bad("user_grants/%s: tenant %q neither owns nor holds project %q", id, g.Tenant, g.Project)
				continue
			}
			held = s[tenancy.ProjectGrants][ids[0]].(*tenancy.ProjectGrant).Roles
		}
		if extra := minusRoles(g.Roles, held); len(extra) > 0 {
			bad("user_grants/%s: roles %v are not held by tenant %q on project %q", id, extra, g.Tenant, g.Project)
		}
	}
	scopeColl := map[string]string{tenancy.ScopeTenant: tenancy.Tenants, tenancy.ScopeProject: tenancy.Projects, tenancy.ScopeProjectGrant: tenancy.ProjectGrants}
	for id, e := range s[tenancy.Memberships] {
		m := e.(*tenancy.Membership)
		if !has(tenancy.Users, m.User) {
			bad("memberships/%s: user %q does not exist", id, m.User)
		}
		if c, ok := scopeColl[m.Scope.Type]; !ok || !has(c, m.Scope.ID) {
			bad("memberships/%s: scope %s %q does not exist", id, m.Scope.Type, m.Scope.ID)
		}
	}
	sort.Strings(out)
	return out
}

// TransitionViolations lists the changes from before to after that SPEC §5
// forbids whatever the invariants: a project's owner, or a project grant's
// project or tenant, changed in place.
func TransitionViolations(before, after State) []string {
	var out []string
	for id, e := range after[tenancy.Projects] {
		if p, ok := before[tenancy.Projects][id]; ok && p.(*tenancy.Project).Owner != e.(*tenancy.Project).Owner {
			out = append(out, fmt.Sprintf("projects/%s: owner changed from %q to %q", id, p.(*tenancy.Project).Owner, e.(*tenancy.Project).Owner))
		}
	}
	for id, e := range after[tenancy.ProjectGrants] {
		if p, ok := before[tenancy.ProjectGrants][id]; ok {
			a, b := p.(*tenancy.ProjectGrant), e.(*tenancy.ProjectGrant)
			if a.Project != b.Project || a.Tenant != b.Tenant {
				out = append(out, fmt.Sprintf("project_grants/%s: target changed from %s/%s to %s/%s", id, a.Project, a.Tenant, b.Project, b.Tenant))
			}
		}
	}
	sort.Strings(out)
	return out
}

func minusRoles(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
