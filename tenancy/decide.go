package tenancy

import (
	"bytes"
	"slices"
)

// Reasons of the shipped policy (SPEC §6): the first failing step decides.
const (
	ReasonAllowed          = "allowed"
	ReasonInvalidToken     = "invalid_token"
	ReasonUnknownUser      = "unknown_user"
	ReasonUserInactive     = "user_inactive"
	ReasonTenantInactive   = "tenant_inactive"
	ReasonTenantUnknown    = "tenant_unknown"
	ReasonProjectUnknown   = "project_unknown"
	ReasonTenantNotGranted = "tenant_not_granted"
	ReasonRoleRequired     = "role_required"
	ReasonNoRole           = "no_role"
)

// Query is one question of SPEC §6, steps 2 to 6, for a verified token
// (step 1 — a missing or invalid token — is the caller's).
type Query struct {
	// Subject is the token's subject; "" for none (never a user).
	Subject string
	// Issuer is the token's issuer.
	Issuer string
	// TrustTokenRoles: the issuer carries per-tenant roles in its tokens.
	TrustTokenRoles bool
	// TenantBinding is the tenant the issuer is bound to ("" for none).
	TenantBinding string
	// Project is the route's project ("" for none).
	Project string
	// Tenant is the tenant the request names, when HasTenant. Otherwise the
	// request names none (the user's home tenant) or, with TenantInvalid,
	// something that is not a tenant an upstream would read the same way.
	Tenant        string
	HasTenant     bool
	TenantInvalid bool
	// Required are the route's roles (any one allows); they are checked
	// (step 5) only with CheckRoles, otherwise Decide stops after step 4
	// and answers "allowed" with the effective roles, whatever they are.
	Required   []string
	CheckRoles bool
	// TokenRoles returns the roles a token of a trusting issuer carries for
	// a tenant (step 6); nil for none.
	TokenRoles func(tenant string) []string
}

// Answer is the first failing step of a Query, or "allowed".
type Answer struct {
	// Reason is one of the Reason* constants.
	Reason string
	// Tenant is the tenant the reason is about (HasTenant): the user's home
	// tenant when it is inactive (step 2), the target tenant from step 3 on.
	Tenant    string
	HasTenant bool
	// Roles are the effective roles, sorted (nil before step 5).
	Roles []string
}

// ActsAs reports whether a token of issuer (with trust_token_roles trust)
// may act as the data user u (SPEC §6 step 2): u names this issuer, or
// names none and the issuer does not carry roles in its tokens.
func ActsAs(u *User, issuer string, trust bool) bool {
	if u.Issuer != "" {
		return u.Issuer == issuer
	}
	return !trust
}

// TenantActive reports whether tenant t exists and it and every ancestor
// in index.tenant_chain[t] have status "active" (a chain ending in
// ChainCut, or in a missing ancestor, is not active). Every read is
// recorded.
func (r *Reader) TenantActive(t string) (bool, error) {
	chain, _, err := r.Get(DocTenantChain, t)
	if err != nil || chain == nil {
		return false, err
	}
	active := true
	var readErr error
	err = eachString(chain, func(c []byte) bool {
		if bytes.IndexByte(c, sep) >= 0 {
			active = false
			return false
		}
		doc, _, err := r.getKey(DocTenants, c)
		if err != nil || doc == nil {
			active, readErr = false, err
			return false
		}
		status, err := viewStatus(doc)
		if err != nil {
			active, readErr = false, r.undecodable(DocTenants, err, string(c))
			return false
		}
		if string(status) != StatusActive {
			active = false
			return false
		}
		return true
	})
	if err != nil {
		return false, r.undecodable(DocTenantChain, err, t)
	}
	return active && readErr == nil, readErr
}

// EffectiveRoles returns u's roles on project p in tenant x that x still
// holds on p (index.user_roles[u][p][x] ∩ index.tenant_roles[p][x]),
// sorted; empty when none.
func (r *Reader) EffectiveRoles(u, p, x string) ([]string, error) {
	held, err := r.heldRoles(p, x)
	if err != nil || held == nil {
		return []string{}, err
	}
	return r.userRolesIn(u, p, x, held)
}

// heldRoles returns index.tenant_roles[p][x] as slices of the stored
// document; nil when x holds no role on p (neither owns it nor holds an
// active grant), empty (not nil) when it holds an empty list.
func (r *Reader) heldRoles(p, x string) ([][]byte, error) {
	doc, _, err := r.Get(DocTenantRoles, p, x)
	if err != nil || doc == nil {
		return nil, err
	}
	held := make([][]byte, 0, 8)
	if err := eachString(doc, func(s []byte) bool { held = append(held, s); return true }); err != nil {
		return nil, r.undecodable(DocTenantRoles, err, p, x)
	}
	return held, nil
}

// userRolesIn returns the roles of index.user_roles[u][p][x] found in held,
// sorted and without duplicates (never nil).
func (r *Reader) userRolesIn(u, p, x string, held [][]byte) ([]string, error) {
	doc, _, err := r.Get(DocUserRoles, u, p, x)
	out := []string{}
	if err != nil || doc == nil {
		return out, err
	}
	err = eachString(doc, func(s []byte) bool {
		if containsBytes(held, s) && !slices.Contains(out, string(s)) {
			out = append(out, string(s))
		}
		return true
	})
	if err != nil {
		return nil, r.undecodable(DocUserRoles, err, u, p, x)
	}
	slices.Sort(out)
	return out, nil
}

func containsString(list [][]byte, s string) bool {
	for _, x := range list {
		if string(x) == s {
			return true
		}
	}
	return false
}

func containsBytes(list [][]byte, s []byte) bool {
	for _, x := range list {
		if string(x) == string(s) {
			return true
		}
	}
	return false
}

// Decide answers q from the data r reads, step by step as SPEC §6 orders
// them: the first failing step's reason, or "allowed" with the effective
// roles. Every read is recorded. An error (damaged data) is never an
// answer: the caller cannot decide. Stored values are read in place (only
// the fields each step needs, nothing decoded twice).
func Decide(r *Reader, q *Query) (Answer, error) {
	var user userView
	acts := false
	if q.Subject != "" {
		doc, _, err := r.Get(DocUsers, q.Subject)
		if err != nil {
			return Answer{}, err
		}
		if doc != nil {
			if user, err = viewUser(doc); err != nil {
				return Answer{}, r.undecodable(DocUsers, err, q.Subject)
			}
			if len(user.issuer) > 0 {
				acts = string(user.issuer) == q.Issuer
			} else {
				acts = !q.TrustTokenRoles
			}
		}
	}
	trusted := q.Subject != "" && q.TrustTokenRoles && !acts

	// step 2: the subject
	if acts && q.TenantBinding != "" && string(user.tenant) != q.TenantBinding {
		return Answer{Reason: ReasonInvalidToken}, nil
	}
	if !acts && !trusted {
		return Answer{Reason: ReasonUnknownUser}, nil
	}
	var active activeMemo
	home := ""
	if acts {
		if string(user.status) != StatusActive {
			return Answer{Reason: ReasonUserInactive}, nil
		}
		home = string(user.tenant)
		ok, err := active.check(r, home)
		if err != nil {
			return Answer{}, err
		}
		if !ok {
			return Answer{Reason: ReasonTenantInactive, Tenant: home, HasTenant: true}, nil
		}
	}

	// step 3: the target tenant
	if q.TenantInvalid {
		return Answer{Reason: ReasonTenantUnknown}, nil
	}
	if trusted && !q.HasTenant {
		return Answer{Reason: ReasonTenantUnknown}, nil
	}
	if trusted && q.TenantBinding != "" && q.Tenant != q.TenantBinding {
		return Answer{Reason: ReasonInvalidToken}, nil
	}
	x := q.Tenant
	if !q.HasTenant {
		x = home
	}
	at := func(reason string) Answer { return Answer{Reason: reason, Tenant: x, HasTenant: true} }
	if !active.known(x) {
		doc, _, err := r.Get(DocTenants, x)
		if err != nil {
			return Answer{}, err
		}
		if doc == nil {
			return at(ReasonTenantUnknown), nil
		}
		ok, err := active.check(r, x)
		if err != nil {
			return Answer{}, err
		}
		if !ok {
			return at(ReasonTenantInactive), nil
		}
	}

	// step 4: the project
	if q.Project == "" {
		return at(ReasonProjectUnknown), nil
	}
	p, _, err := r.Get(DocProjects, q.Project)
	if err != nil {
		return Answer{}, err
	}
	if p == nil {
		return at(ReasonProjectUnknown), nil
	}
	held, err := r.heldRoles(q.Project, x)
	if err != nil {
		return Answer{}, err
	}
	if held == nil {
		return at(ReasonTenantNotGranted), nil
	}

	// step 5 (and 6): the roles
	a := at(ReasonAllowed)
	if acts {
		if a.Roles, err = r.userRolesIn(q.Subject, q.Project, x, held); err != nil {
			return Answer{}, err
		}
	} else {
		a.Roles = []string{}
		if q.TokenRoles != nil {
			for _, role := range q.TokenRoles(x) {
				if containsString(held, role) && !slices.Contains(a.Roles, role) {
					a.Roles = append(a.Roles, role)
				}
			}
			slices.Sort(a.Roles)
		}
	}
	if q.CheckRoles {
		switch {
		case len(q.Required) > 0 && !slices.ContainsFunc(q.Required, func(r string) bool { return slices.Contains(a.Roles, r) }):
			a.Reason = ReasonRoleRequired
		case len(q.Required) == 0 && len(a.Roles) == 0:
			a.Reason = ReasonNoRole
		}
	}
	return a, nil
}

// activeMemo remembers the tenants found active within one decision (a
// user's home tenant is usually the target too).
type activeMemo struct{ yes []string }

func (m *activeMemo) known(t string) bool { return slices.Contains(m.yes, t) }

func (m *activeMemo) check(r *Reader, t string) (bool, error) {
	if m.known(t) {
		return true, nil
	}
	ok, err := r.TenantActive(t)
	if ok {
		m.yes = append(m.yes, t)
	}
	return ok, err
}
