package control

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
	"github.com/gatehouse-dev/gatehouse/token"
)

// AdminRole is the membership role that grants administration of the
// membership's scope.
const AdminRole = "admin"

// role is what a bearer token is.
type role int

const (
	roleAdmin role = iota + 1 // the admin token: everything
	roleSync                  // the sync token: feed and bundle downloads
	roleUser                  // an issuer's JWT: users[sub] with the rights of its memberships
)

// principal is the authenticated caller.
type principal struct {
	role role
	// user is users[sub] for roleUser.
	user string
	// binding is the issuer's tenant binding ("" when unbound).
	binding string
	// issuer is the token's issuer, and trustRoles its trust_token_roles:
	// together they decide whether the token may act as users[sub]
	// (SPEC §6 step 2, applied to the admin API as to decisions).
	issuer     string
	trustRoles bool
}

// authenticate identifies the caller by its bearer token. The admin and
// sync tokens are compared in constant time (as sha256 sums, so that not
// even their length leaks); other tokens must verify with a configured
// issuer. Tokens are never logged.
func (s *Server) authenticate(r *http.Request) (principal, error) {
	raw, ok := token.BearerToken(r.Header.Get("Authorization"))
	if !ok {
		return principal{}, unauthorized("missing bearer token (Authorization: Bearer <token>)")
	}
	sum := sha256.Sum256([]byte(raw))
	isAdmin := subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1
	isSync := s.sync != nil && subtle.ConstantTimeCompare(sum[:], s.sync[:]) == 1
	switch {
	case isAdmin:
		return principal{role: roleAdmin}, nil
	case isSync:
		return principal{role: roleSync}, nil
	case s.verifier == nil:
		return principal{}, unauthorized("token not accepted")
	}
	t := s.verifier.Verify(r.Context(), raw)
	if !t.Valid {
		return principal{}, unauthorized("token not accepted: %s", string(t.Error))
	}
	if t.Subject == "" {
		return principal{}, unauthorized("token not accepted: no subject")
	}
	return principal{role: roleUser, user: t.Subject, binding: t.TenantBinding, issuer: t.Issuer, trustRoles: t.TrustTokenRoles}, nil
}

// requireAdmin refuses every caller but the admin token.
func requireAdmin(p principal, what string) error {
	if p.role != roleAdmin {
		return forbidden("%s needs the admin token", what)
	}
	return nil
}

// requireReader refuses every caller but the admin and sync tokens.
func requireReader(p principal, what string) error {
	if p.role != roleAdmin && p.role != roleSync {
		return forbidden("%s needs the admin or the sync token", what)
	}
	return nil
}

// rights are what a delegated administrator may change: read from the
// user's memberships with role admin.
type rights struct {
	user string
	// tenants the user is tenant admin of: their users, the user grants
	// living in them, and their child tenants.
	tenants map[string]bool
	// grants the user is project-grant admin of: the user grants with the
	// grant's project and tenant.
	grants []*tenancy.ProjectGrant
}

// loadRights resolves a roleUser principal in tx: users[sub] must exist and
// be active, belong to the issuer's bound tenant if any, have an active home
// tenant (with active ancestors), and administer something.
func loadRights(tx *bolt.Tx, p principal) (*rights, error) {
	e, err := tenancy.Get(tx, tenancy.Users, p.user)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, forbidden("token subject %q is not a user of the tenancy data", p.user)
	}
	u := e.(*tenancy.User)
	if !issuerMayActAs(p, u) {
		// The same answer as an absent user: an issuer learns nothing
		// about the users it cannot act as.
		return nil, forbidden("token subject %q is not a user of the tenancy data", p.user)
	}
	if u.Status != tenancy.StatusActive {
		return nil, forbidden("user %q is %s", u.ID, u.Status)
	}
	if p.binding != "" && u.Tenant != p.binding {
		return nil, forbidden("the token's issuer acts only for tenant %q; user %q belongs to tenant %q", p.binding, u.ID, u.Tenant)
	}
	if err := activeChain(tx, u.Tenant); err != nil {
		return nil, forbidden("user %q: %v", u.ID, err)
	}
	ms, err := tenancy.UserMemberships(tx, u.ID)
	if err != nil {
		return nil, err
	}
	r := &rights{user: u.ID, tenants: map[string]bool{}}
	for _, m := range ms {
		if !slices.Contains(m.Roles, AdminRole) {
			continue
		}
		switch m.Scope.Type {
		case tenancy.ScopeTenant:
			r.tenants[m.Scope.ID] = true
		case tenancy.ScopeProjectGrant:
			g, err := tenancy.Get(tx, tenancy.ProjectGrants, m.Scope.ID)
			if err != nil {
				return nil, err
			}
			if g != nil {
				r.grants = append(r.grants, g.(*tenancy.ProjectGrant))
			}
		}
	}
	if len(r.tenants) == 0 && len(r.grants) == 0 {
		return nil, forbidden("user %q administers no tenant and no project grant", u.ID)
	}
	return r, nil
}

// issuerMayActAs reports whether p's token may act as data user u: u names
// p's issuer, or u names none and the issuer does not carry roles in its
// tokens (a tenant-managed IdP could mint any sub). SPEC §6 step 2.
func issuerMayActAs(p principal, u *tenancy.User) bool {
	if u.Issuer != "" {
		return u.Issuer == p.issuer
	}
	return !p.trustRoles
}

// activeChain checks that tenant t and its ancestors are active. A chain
// longer than tenancy.MaxAncestors (never written by Apply) fails closed.
func activeChain(tx *bolt.Tx, t string) error {
	for cur, depth := t, 0; cur != ""; depth++ {
		if depth > tenancy.MaxAncestors {
			return fmt.Errorf("tenant %q has more than %d ancestors", t, tenancy.MaxAncestors)
		}
		e, err := tenancy.Get(tx, tenancy.Tenants, cur)
		if err != nil {
			return err
		}
		if e == nil {
			return fmt.Errorf("tenant %q does not exist", cur)
		}
		tn := e.(*tenancy.Tenant)
		if tn.Status != tenancy.StatusActive {
			return fmt.Errorf("tenant %q is %s", cur, tn.Status)
		}
		cur = tn.Parent
	}
	return nil
}

// writable lists the collections a delegated administrator can ever
// change.
var writable = []string{tenancy.Tenants, tenancy.Users, tenancy.UserGrants}

// mayWriteCollection refuses the collections a delegated administrator
// never changes.
func (r *rights) mayWriteCollection(op, collection string) error {
	if !slices.Contains(writable, collection) {
		return forbidden("user %q may not %s %s: delegated administrators change only %s", r.user, opVerb(op), collection, strings.Join(writable, ", "))
	}
	return nil
}

// allows reports whether the administrator may hold e in its scope.
func (r *rights) allows(e tenancy.Entity) bool {
	switch e := e.(type) {
	case *tenancy.User:
		return r.tenants[e.Tenant]
	case *tenancy.UserGrant:
		if r.tenants[e.Tenant] {
			return true
		}
		for _, g := range r.grants {
			if g.Project == e.Project && g.Tenant == e.Tenant {
				return true
			}
		}
	case *tenancy.Tenant:
		return e.Parent != "" && r.tenants[e.Parent]
	}
	return false
}

// scope describes the rights, for refusals.
func (r *rights) scope() string {
	var parts []string
	if len(r.tenants) > 0 {
		ts := make([]string, 0, len(r.tenants))
		for t := range r.tenants {
			ts = append(ts, t)
		}
		slices.Sort(ts)
		parts = append(parts, "tenant admin of "+strings.Join(ts, ", "))
	}
	if len(r.grants) > 0 {
		gs := make([]string, 0, len(r.grants))
		for _, g := range r.grants {
			gs = append(gs, g.ID)
		}
		parts = append(parts, "project-grant admin of "+strings.Join(gs, ", "))
	}
	return strings.Join(parts, "; ")
}

// refuse is the 403 of a change outside the rights.
func (r *rights) refuse(verb string, e tenancy.Entity, why string) error {
	return forbidden("user %q may not %s %s%s: outside what the user administers (%s)", r.user, verb, describe(e), why, r.scope())
}

// describe names an entity with the fields rights depend on.
func describe(e tenancy.Entity) string {
	name := e.Collection() + "/" + e.Key()
	switch e := e.(type) {
	case *tenancy.User:
		return fmt.Sprintf("%s (tenant %s)", name, e.Tenant)
	case *tenancy.UserGrant:
		return fmt.Sprintf("%s (user %s, project %s, tenant %s)", name, e.User, e.Project, e.Tenant)
	case *tenancy.Tenant:
		if e.Parent == "" {
			return name + " (no parent)"
		}
		return fmt.Sprintf("%s (parent %s)", name, e.Parent)
	}
	return name
}

// precheck refuses the requested ops that are outside the rights before
// they are applied: a put whose new value or current value is out of
// scope, a delete of an entity out of scope, anything on a collection a
// delegated administrator never writes. Ops that do not parse are left to
// tenancy.Apply. snap is the state the write starts from.
func (r *rights) precheck(snap *bolt.Tx, ops []tenancy.Op) error {
	for _, op := range ops {
		if !tenancy.IsCollection(op.Collection) {
			continue
		}
		if err := r.mayWriteCollection(op.Op, op.Collection); err != nil {
			return err
		}
		id := op.ID
		switch op.Op {
		case tenancy.OpPut:
			next, err := tenancy.Decode(op.Collection, op.Value)
			if err != nil {
				continue
			}
			if !r.allows(next) {
				return r.refuse("write", next, "")
			}
			id = next.Key()
		case tenancy.OpDelete:
		default:
			continue
		}
		if !tenancy.ValidID(id) {
			continue
		}
		prev, err := tenancy.Get(snap, op.Collection, id)
		if err != nil {
			return err
		}
		if prev != nil && !r.allows(prev) {
			return r.refuse(opVerb(op.Op), prev, "")
		}
	}
	return nil
}

// postcheck checks the change set a write produced, cascades included:
// every changed entity must be in scope before (its value in snap) and
// after (the value written).
func (r *rights) postcheck(snap *bolt.Tx, ops []tenancy.Op, changes []tenancy.Change) error {
	requested := map[[2]string]bool{}
	for _, op := range ops {
		id := op.ID
		if id == "" && op.Op == tenancy.OpPut {
			var v struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal(op.Value, &v)
			id = v.ID
		}
		requested[[2]string{op.Collection, id}] = true
	}
	checked := map[[2]string]bool{}
	for _, c := range changes {
		k := [2]string{c.Collection, c.ID}
		why := ""
		if !requested[k] {
			why = " (a consequence of the requested change)"
		}
		if !checked[k] {
			checked[k] = true
			prev, err := tenancy.Get(snap, c.Collection, c.ID)
			if err != nil {
				return err
			}
			if prev != nil && !r.allows(prev) {
				return r.refuse(opVerb(c.Op), prev, why)
			}
		}
		if c.Op == tenancy.OpPut {
			next, err := tenancy.DecodeStored(c.Collection, c.Value)
			if err != nil {
				return err
			}
			if !r.allows(next) {
				return r.refuse("write", next, why)
			}
		}
	}
	return nil
}

func opVerb(op string) string {
	if op == tenancy.OpDelete {
		return "delete"
	}
	return "write"
}
