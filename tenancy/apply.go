package tenancy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// MaxBatch is the most operations one batch may carry.
const MaxBatch = 10000

// Op is one operation of a write: put an entity, or delete one by id.
type Op struct {
	// Op is "put" or "delete".
	Op         string `json:"op"`
	Collection string `json:"collection"`
	// ID is required for delete; for put it must match value.id when given.
	ID    string          `json:"id,omitempty"`
	Value json.RawMessage `json:"value,omitempty"`
	// Cascade deletes whatever refers to the deleted entity.
	Cascade bool `json:"cascade,omitempty"`
}

// Apply performs ops in order on w, with the control endpoint's cascades,
// then checks every invariant of SPEC §5 on the resulting state for what the
// ops touched. On error nothing must be committed: the caller rolls the
// transaction back.
//
// The ops are one change from the state before them to the state after
// them, whatever their order: every entity they touch (cascades included)
// is checked in the final state, and an entity present in both states
// keeps its immutable fields (a project's owner, a project grant's project
// and tenant), so deleting and re-creating it in one batch cannot re-target
// it. A tenant whose parent changes is checked with its whole subtree (no
// cycle, at most 64 ancestors for every descendant).
//
// Cascades: deleting a project grant deletes the user grants that depended
// on it (and memberships scoped to it); removing a role from a project or a
// grant removes it from dependent grants (also when the batch deleted the
// project or grant first and re-creates it with fewer roles); delete with
// Cascade removes everything that refers to the entity, recursively.
func Apply(w *Writer, ops []Op) error {
	if len(ops) == 0 {
		return malformed("no operations")
	}
	if len(ops) > MaxBatch {
		return malformed("%d operations, at most %d per batch", len(ops), MaxBatch)
	}
	a := &applier{w: w, touched: map[ref]int{}, before: map[ref]Entity{}}
	for i, op := range ops {
		a.current = i
		if err := a.op(op); err != nil {
			return opError(len(ops), i, op, err)
		}
	}
	if i, err := a.verify(); err != nil {
		return opError(len(ops), i, ops[i], err)
	}
	return nil
}

func opError(n, i int, op Op, err error) error {
	if n == 1 {
		return err
	}
	e, ok := err.(*Error)
	if !ok {
		return err
	}
	id := op.ID
	if id == "" {
		var v struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(op.Value, &v)
		id = v.ID
	}
	return &Error{Status: e.Status, Code: e.Code, Msg: fmt.Sprintf("ops[%d] (%s %s/%s): %s", i, op.Op, op.Collection, id, e.Msg)}
}

type ref struct{ collection, id string }

type applier struct {
	w       *Writer
	touched map[ref]int    // the op that first touched it
	before  map[ref]Entity // tenants, projects, grants: the value before the batch (nil: absent)
	order   []ref
	// deleting holds the entities whose cascade delete is under way.
	deleting map[ref]bool
	current  int
}

// touch records, before an entity changes, that the batch changes it;
// prev is its current value, which the first touch keeps as the value
// before the batch. Only tenants, projects and project grants keep it
// (their parent, owner, targets and roles are compared with it): a cascade
// may touch millions of user grants and memberships.
func (a *applier) touch(collection, id string, prev Entity) {
	r := ref{collection, id}
	if _, ok := a.touched[r]; !ok {
		a.touched[r] = a.current
		switch collection {
		case Tenants, Projects, ProjectGrants:
			a.before[r] = prev
		}
		a.order = append(a.order, r)
	}
}

// original returns an entity's value before the batch, when the batch
// touched it already.
func (a *applier) original(collection, id string) (Entity, bool) {
	e, ok := a.before[ref{collection, id}]
	return e, ok
}

func (a *applier) op(op Op) error {
	if !IsCollection(op.Collection) {
		return notFound("unknown collection %q (want one of %s)", op.Collection, strings.Join(Collections, ", "))
	}
	switch op.Op {
	case OpPut:
		if len(op.Value) == 0 {
			return malformed("put %s: value is missing", op.Collection)
		}
		if op.ID != "" && !ValidID(op.ID) {
			return malformed("put %s: id %q is not a valid id ([a-zA-Z0-9._-]{1,128}, not . or ..)", op.Collection, op.ID)
		}
		e, err := Decode(op.Collection, op.Value)
		if err != nil {
			return err
		}
		if op.ID != "" && op.ID != e.Key() {
			return invalid("%s: the id in the path (%q) and in the body (%q) differ", op.Collection, op.ID, e.Key())
		}
		return a.put(e)
	case OpDelete:
		if op.ID == "" {
			return malformed("delete %s: id is missing", op.Collection)
		}
		if !ValidID(op.ID) {
			return malformed("delete %s: id %q is not a valid id ([a-zA-Z0-9._-]{1,128}, not . or ..)", op.Collection, op.ID)
		}
		prev, err := a.w.Get(op.Collection, op.ID)
		if err != nil {
			return err
		}
		if prev == nil {
			return notFound("%s/%s does not exist", op.Collection, op.ID)
		}
		if op.Cascade {
			return a.deleteCascade(op.Collection, op.ID)
		}
		return a.delete(op.Collection, op.ID)
	}
	return malformed("op %q is not put or delete", op.Op)
}

// put writes e after the cascades its change calls for.
func (a *applier) put(e Entity) error {
	prev, err := a.w.Get(e.Collection(), e.Key())
	if err != nil {
		return err
	}
	orig, seen := a.original(e.Collection(), e.Key())
	for _, p := range []Entity{prev, orig} {
		if p != nil {
			if err := immutable(p, e); err != nil {
				return err
			}
		}
	}
	a.touch(e.Collection(), e.Key(), prev)
	if err := a.w.Put(e); err != nil {
		return err
	}
	// The roles this change removes: from the current value or, for an
	// entity the batch deleted earlier, from its value before the batch
	// (a delete without cascade left its dependents in place).
	base := prev
	if base == nil && seen {
		base = orig
	}
	if base == nil {
		return nil
	}
	switch e := e.(type) {
	case *Project:
		if removed := minus(base.(*Project).Roles, e.Roles); len(removed) > 0 {
			return a.removeRoles(e.ID, "", removed)
		}
	case *ProjectGrant:
		if removed := minus(base.(*ProjectGrant).Roles, e.Roles); len(removed) > 0 {
			return a.removeRoles(e.Project, e.Tenant, removed)
		}
	}
	return nil
}

// immutable refuses changes that would re-target an entity others depend on.
func immutable(prev, next Entity) error {
	switch p := prev.(type) {
	case *Project:
		if n := next.(*Project); n.Owner != p.Owner {
			return conflict("projects/%s: owner cannot change (%q to %q): create a new project", p.ID, p.Owner, n.Owner)
		}
	case *ProjectGrant:
		if n := next.(*ProjectGrant); n.Project != p.Project || n.Tenant != p.Tenant {
			return conflict("project_grants/%s: project and tenant cannot change: delete the grant and create another", p.ID)
		}
	}
	return nil
}

// removeRoles removes roles from the project grants of project p (when
// tenant is "") and from the user grants of p (in tenant, or in every
// tenant when tenant is "").
func (a *applier) removeRoles(p, tenant string, roles []string) error {
	if tenant == "" {
		for _, id := range a.ids(xProjectGrants, p) {
			if err := a.updateRoles(ProjectGrants, id, roles); err != nil {
				return err
			}
		}
	}
	parts := []string{p}
	if tenant != "" {
		parts = append(parts, tenant)
	}
	for _, id := range a.ids(xProjectUserGrants, parts...) {
		if err := a.updateRoles(UserGrants, id, roles); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) updateRoles(collection, id string, removed []string) error {
	e, err := a.w.Get(collection, id)
	if err != nil || e == nil {
		return err
	}
	switch e := e.(type) {
	case *ProjectGrant:
		if kept := minus(e.Roles, removed); len(kept) != len(e.Roles) {
			e.Roles = kept
			return a.put(e)
		}
	case *UserGrant:
		if kept := minus(e.Roles, removed); len(kept) != len(e.Roles) {
			e.Roles = kept
			return a.put(e)
		}
	}
	return nil
}

// ids lists the last key part of every key under prefix(parts...) in an
// index bucket.
func (a *applier) ids(bucket string, parts ...string) []string {
	var out []string
	scanPrefix(a.w.bucket(bucket), prefix(parts...), func(rest []string) bool {
		out = append(out, rest[len(rest)-1])
		return true
	})
	return out
}

// delete removes one entity with the cascade SPEC §5 always applies: a
// project grant takes its user grants and memberships with it.
func (a *applier) delete(collection, id string) error {
	prev, err := a.w.Get(collection, id)
	if err != nil || prev == nil {
		return err
	}
	if pg, ok := prev.(*ProjectGrant); ok {
		for _, ug := range a.ids(xProjectUserGrants, pg.Project, pg.Tenant) {
			if err := a.delete(UserGrants, ug); err != nil {
				return err
			}
		}
		for _, m := range a.ids(xScopeMemberships, ScopeProjectGrant, id) {
			if err := a.delete(Memberships, m); err != nil {
				return err
			}
		}
	}
	a.touch(collection, id, prev)
	_, err = a.w.Delete(collection, id)
	return err
}

// deleteCascade removes an entity and everything that refers to it. An
// entity whose cascade is under way is not entered again: parents can
// loop in the middle of a batch (verify refuses the batch afterwards), and
// the recursion must end anyway.
func (a *applier) deleteCascade(collection, id string) error {
	r := ref{collection, id}
	if a.deleting[r] {
		return nil
	}
	if a.deleting == nil {
		a.deleting = map[ref]bool{}
	}
	a.deleting[r] = true
	defer delete(a.deleting, r)
	var deps []ref
	add := func(c string, ids []string) {
		for _, x := range ids {
			deps = append(deps, ref{c, x})
		}
	}
	switch collection {
	case Tenants:
		add(Tenants, a.ids(xTenantChildren, id))
		add(Memberships, a.ids(xScopeMemberships, ScopeTenant, id))
		add(UserGrants, a.ids(xTenantUserGrants, id))
		for _, k := range a.keys(xTenantGrants, id) {
			deps = append(deps, ref{ProjectGrants, k[len(k)-1]})
		}
		add(Projects, a.ids(xTenantProjects, id))
		add(Users, a.ids(xTenantUsers, id))
	case Users:
		add(UserGrants, a.ids(xUserGrants, id))
		add(Memberships, a.ids(xUserMemberships, id))
	case Projects:
		add(Memberships, a.ids(xScopeMemberships, ScopeProject, id))
		add(ProjectGrants, a.ids(xProjectGrants, id))
		add(UserGrants, a.ids(xProjectUserGrants, id))
	}
	for _, d := range deps {
		e, err := a.w.Get(d.collection, d.id)
		if err != nil {
			return err
		}
		if e == nil {
			continue // already removed by an earlier cascade
		}
		if err := a.deleteCascade(d.collection, d.id); err != nil {
			return err
		}
	}
	return a.delete(collection, id)
}

func (a *applier) keys(bucket string, parts ...string) [][]string {
	var out [][]string
	scanPrefix(a.w.bucket(bucket), prefix(parts...), func(rest []string) bool {
		out = append(out, rest)
		return true
	})
	return out
}

// verify checks the invariants for every touched entity, between its value
// before the batch and its value after: an existing one has valid
// references and, if it existed before, the same immutable fields; a
// tenant whose parent changed keeps its whole subtree within the depth
// bound; a deleted one is referred to by nothing. On error it also returns
// the index of the op that touched the entity first.
func (a *applier) verify() (int, error) {
	for _, r := range a.order {
		err := a.verifyOne(r)
		if err != nil {
			return a.touched[r], err
		}
	}
	return 0, nil
}

func (a *applier) verifyOne(r ref) error {
	after, err := a.w.Get(r.collection, r.id)
	if err != nil {
		return err
	}
	if after == nil {
		return a.noDependents(r.collection, r.id)
	}
	if err := a.references(after); err != nil {
		return err
	}
	before := a.before[r]
	if before != nil {
		if err := immutable(before, after); err != nil {
			return err
		}
	}
	if t, ok := after.(*Tenant); ok && (before == nil || before.(*Tenant).Parent != t.Parent) {
		return a.subtree(t)
	}
	return nil
}

func (a *applier) exists(collection, id string) (Entity, error) {
	e, err := a.w.Get(collection, id)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, conflict("%s/%s does not exist", collection, id)
	}
	return e, nil
}

func (a *applier) references(e Entity) error {
	switch e := e.(type) {
	case *Tenant:
		if e.Parent == "" {
			return nil
		}
		if _, err := a.exists(Tenants, e.Parent); err != nil {
			return refErr(e, "parent", err)
		}
		_, err := a.ancestors(e)
		return err
	case *User:
		if _, err := a.exists(Tenants, e.Tenant); err != nil {
			return refErr(e, "tenant", err)
		}
	case *Project:
		if _, err := a.exists(Tenants, e.Owner); err != nil {
			return refErr(e, "owner", err)
		}
	case *ProjectGrant:
		return a.grantRefs(e)
	case *UserGrant:
		return a.userGrantRefs(e)
	case *Membership:
		if _, err := a.exists(Users, e.User); err != nil {
			return refErr(e, "user", err)
		}
		coll := map[string]string{ScopeTenant: Tenants, ScopeProject: Projects, ScopeProjectGrant: ProjectGrants}[e.Scope.Type]
		if _, err := a.exists(coll, e.Scope.ID); err != nil {
			return refErr(e, "scope", err)
		}
	}
	return nil
}

func refErr(e Entity, field string, err error) error {
	return conflict("%s/%s: %s: %v", e.Collection(), e.Key(), field, err)
}

// ancestors counts t's ancestors: a cycle, or more than maxDepth of them,
// is a conflict. A missing ancestor ends the count (references reports
// it).
func (a *applier) ancestors(t *Tenant) (int, error) {
	seen := map[string]bool{t.ID: true}
	n := 0
	for cur := t.Parent; cur != ""; n++ {
		if seen[cur] {
			return 0, conflict("tenants/%s: parent %q makes a cycle", t.ID, t.Parent)
		}
		if n >= maxDepth {
			return 0, conflict("tenants/%s: more than %d ancestors", t.ID, maxDepth)
		}
		seen[cur] = true
		p, err := a.w.Get(Tenants, cur)
		if err != nil {
			return 0, err
		}
		if p == nil {
			return n + 1, nil
		}
		cur = p.(*Tenant).Parent
	}
	return n, nil
}

// subtree checks that every descendant of t has at most maxDepth
// ancestors once t is where it is now: re-parenting a tenant moves its
// whole subtree. It reads the children index level by level (no level is
// visited twice: t's chain has no cycle, so below it is a tree).
func (a *applier) subtree(t *Tenant) error {
	d, err := a.ancestors(t)
	if err != nil {
		return err
	}
	level := []string{t.ID}
	for depth := d + 1; len(level) > 0; depth++ {
		var next []string
		for _, id := range level {
			next = append(next, a.ids(xTenantChildren, id)...)
		}
		if len(next) > 0 && depth > maxDepth {
			return conflict("tenants/%s: its descendant %q would have %d ancestors, at most %d (a tenant's subtree moves with it)", t.ID, next[0], depth, maxDepth)
		}
		level = next
	}
	return nil
}

func (a *applier) grantRefs(g *ProjectGrant) error {
	p, err := a.exists(Projects, g.Project)
	if err != nil {
		return refErr(g, "project", err)
	}
	if _, err := a.exists(Tenants, g.Tenant); err != nil {
		return refErr(g, "tenant", err)
	}
	proj := p.(*Project)
	if proj.Owner == g.Tenant {
		return conflict("project_grants/%s: tenant %q owns project %q: a project is never granted to its owner", g.ID, g.Tenant, g.Project)
	}
	if extra := minus(g.Roles, proj.Roles); len(extra) > 0 {
		return conflict("project_grants/%s: roles %s are not roles of project %q (%s)", g.ID, strings.Join(extra, ", "), proj.ID, strings.Join(proj.Roles, ", "))
	}
	if others := slices.DeleteFunc(a.ids(xProjectGrants, g.Project, g.Tenant), func(id string) bool { return id == g.ID }); len(others) > 0 {
		return conflict("project_grants/%s: tenant %q already holds grant %q on project %q", g.ID, g.Tenant, others[0], g.Project)
	}
	return nil
}

func (a *applier) userGrantRefs(g *UserGrant) error {
	if _, err := a.exists(Users, g.User); err != nil {
		return refErr(g, "user", err)
	}
	p, err := a.exists(Projects, g.Project)
	if err != nil {
		return refErr(g, "project", err)
	}
	if _, err := a.exists(Tenants, g.Tenant); err != nil {
		return refErr(g, "tenant", err)
	}
	proj := p.(*Project)
	held, from := proj.Roles, "project "+proj.ID
	if proj.Owner != g.Tenant {
		grants := a.ids(xProjectGrants, g.Project, g.Tenant)
		if len(grants) == 0 {
			return conflict("user_grants/%s: tenant %q neither owns project %q nor holds a grant on it", g.ID, g.Tenant, g.Project)
		}
		pg, err := a.exists(ProjectGrants, grants[0])
		if err != nil {
			return err
		}
		held, from = pg.(*ProjectGrant).Roles, "project grant "+grants[0]
	}
	if extra := minus(g.Roles, held); len(extra) > 0 {
		return conflict("user_grants/%s: roles %s are not held by tenant %q on project %q (%s has: %s)", g.ID, strings.Join(extra, ", "), g.Tenant, g.Project, from, strings.Join(held, ", "))
	}
	return nil
}

// noDependents refuses a deletion that would leave references dangling.
func (a *applier) noDependents(collection, id string) error {
	type dep struct {
		what   string
		bucket string
		parts  []string
	}
	var deps []dep
	switch collection {
	case Tenants:
		deps = []dep{
			{"child tenants", xTenantChildren, []string{id}},
			{"users", xTenantUsers, []string{id}},
			{"projects", xTenantProjects, []string{id}},
			{"project grants", xTenantGrants, []string{id}},
			{"user grants", xTenantUserGrants, []string{id}},
			{"memberships", xScopeMemberships, []string{ScopeTenant, id}},
		}
	case Users:
		deps = []dep{
			{"user grants", xUserGrants, []string{id}},
			{"memberships", xUserMemberships, []string{id}},
		}
	case Projects:
		deps = []dep{
			{"project grants", xProjectGrants, []string{id}},
			{"user grants", xProjectUserGrants, []string{id}},
			{"memberships", xScopeMemberships, []string{ScopeProject, id}},
		}
	case ProjectGrants:
		deps = []dep{{"memberships", xScopeMemberships, []string{ScopeProjectGrant, id}}}
	}
	for _, d := range deps {
		if ids := a.ids(d.bucket, d.parts...); len(ids) > 0 {
			shown := ids[:min(len(ids), 5)]
			return conflict("%s/%s still has %s (%s%s): delete them first or use cascade", collection, id, d.what, strings.Join(shown, ", "), more(len(ids)-len(shown)))
		}
	}
	return nil
}

func more(n int) string {
	if n <= 0 {
		return ""
	}
	return fmt.Sprintf(" and %d more", n)
}

// minus returns the elements of a not in b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
