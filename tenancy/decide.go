package tenancy

import (
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
	chain, err := r.TenantChain(t)
	if err != nil || chain == nil {
		return false, err
	}
	for _, c := range chain {
		e, err := r.Tenant(c)
		if err != nil || e == nil || e.Status != StatusActive {
			return false, err
		}
	}
	return true, nil
}

// EffectiveRoles returns u's roles on project p in tenant x that x still
// holds on p (index.user_roles[u][p][x] ∩ index.tenant_roles[p][x]),
// sorted; empty when none.
func (r *Reader) EffectiveRoles(u, p, x string) ([]string, error) {
	held, ok, err := r.TenantRoles(p, x)
	if err != nil || !ok {
		return []string{}, err
	}
	mine, err := r.UserRoles(u, p, x)
	if err != nil {
		return nil, err
	}
	return intersect(mine, held), nil
}

// intersect returns the elements of a found in held, sorted and without
// duplicates (never nil).
func intersect(a, held []string) []string {
	out := make([]string, 0, len(a))
	for _, r := range a {
		if slices.Contains(held, r) && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}

// Decide answers q from the data r reads, step by step as SPEC §6 orders
// them: the first failing step's reason, or "allowed" with the effective
// roles. Every read is recorded. An error (damaged data) is never an
// answer: the caller cannot decide.
func Decide(r *Reader, q *Query) (Answer, error) {
	var user *User
	if q.Subject != "" {
		u, err := r.User(q.Subject)
		if err != nil {
			return Answer{}, err
		}
		if u != nil && ActsAs(u, q.Issuer, q.TrustTokenRoles) {
			user = u
		}
	}
	trusted := q.Subject != "" && q.TrustTokenRoles && user == nil

	// step 2: the subject
	if user != nil && q.TenantBinding != "" && user.Tenant != q.TenantBinding {
		return Answer{Reason: ReasonInvalidToken}, nil
	}
	if user == nil && !trusted {
		return Answer{Reason: ReasonUnknownUser}, nil
	}
	var active activeMemo
	if user != nil {
		if user.Status != StatusActive {
			return Answer{Reason: ReasonUserInactive}, nil
		}
		ok, err := active.check(r, user.Tenant)
		if err != nil {
			return Answer{}, err
		}
		if !ok {
			return Answer{Reason: ReasonTenantInactive, Tenant: user.Tenant, HasTenant: true}, nil
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
		x = user.Tenant
	}
	at := func(reason string) Answer { return Answer{Reason: reason, Tenant: x, HasTenant: true} }
	t, err := r.Tenant(x)
	if err != nil {
		return Answer{}, err
	}
	if t == nil {
		return at(ReasonTenantUnknown), nil
	}
	ok, err := active.check(r, x)
	if err != nil {
		return Answer{}, err
	}
	if !ok {
		return at(ReasonTenantInactive), nil
	}

	// step 4: the project
	if q.Project == "" {
		return at(ReasonProjectUnknown), nil
	}
	p, err := r.Project(q.Project)
	if err != nil {
		return Answer{}, err
	}
	if p == nil {
		return at(ReasonProjectUnknown), nil
	}
	held, granted, err := r.TenantRoles(q.Project, x)
	if err != nil {
		return Answer{}, err
	}
	if !granted {
		return at(ReasonTenantNotGranted), nil
	}

	// step 5 (and 6): the roles
	var mine []string
	if user != nil {
		if mine, err = r.UserRoles(q.Subject, q.Project, x); err != nil {
			return Answer{}, err
		}
	} else if q.TokenRoles != nil {
		mine = q.TokenRoles(x)
	}
	a := at(ReasonAllowed)
	a.Roles = intersect(mine, held)
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

func (m *activeMemo) check(r *Reader, t string) (bool, error) {
	if slices.Contains(m.yes, t) {
		return true, nil
	}
	ok, err := r.TenantActive(t)
	if ok {
		m.yes = append(m.yes, t)
	}
	return ok, err
}
