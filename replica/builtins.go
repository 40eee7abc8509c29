// builtins.go is long (about 640 lines) on purpose: it holds every
// gatehouse.tenancy.* built-in (SPEC §12) with its argument parsing and
// result terms, one declaration table and one way of reading the
// evaluation's transaction for all of them.

package replica

import (
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/open-policy-agent/opa/v1/types"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// Gatehouse built-in functions (SPEC §12): the tenancy questions of SPEC §6
// answered in Go from the bbolt cache, inside the evaluation's own read
// transaction (authz.TenancyTxn), through the transaction's tenancy.Reader.
// Every keyed read they make is recorded for the decision cache exactly as
// a storage read is (same documents, keys and stamps), so a revoked grant
// invalidates a cached decision whichever way the policy read it.
//
// Errors: damaged data (a checksum that fails, a value that is not what its
// bucket holds, a damaged page) marks the cache file damaged and halts the
// evaluation: the engine answers "cannot decide", never undefined (an
// undefined built-in could turn a `not` into an allow). Arguments of the
// wrong shape are ordinary built-in errors: undefined, as OPA's built-ins
// (SPEC §3). An evaluation with no tenancy transaction (a Rego unit test)
// halts with a hint to mock the built-in; under authz.EmptyTenancy (serve
// without a control endpoint) they answer from empty data.
const (
	BuiltinDecide         = "gatehouse.tenancy.decide"
	BuiltinUser           = "gatehouse.tenancy.user"
	BuiltinTenantActive   = "gatehouse.tenancy.tenant_active"
	BuiltinTenantRoles    = "gatehouse.tenancy.tenant_roles"
	BuiltinUserRoles      = "gatehouse.tenancy.user_roles"
	BuiltinEffectiveRoles = "gatehouse.tenancy.effective_roles"
	BuiltinPathTenant     = "gatehouse.tenancy.path_tenant"
)

var (
	rolesType  = types.NewArray(nil, types.S)
	roleSet    = types.NewSet(types.S)
	userType   = types.NewObject(nil, types.NewDynamicProperty(types.S, types.A))
	answerType = types.NewObject([]*types.StaticProperty{
		types.NewStaticProperty("reason", types.S),
		types.NewStaticProperty("tenant", types.S),
		types.NewStaticProperty("roles", roleSet),
	}, nil)
	// the keys are optional: checked when the built-in runs
	queryType = types.NewObject(nil, types.NewDynamicProperty(types.S, types.A))
)

// Builtins returns Gatehouse's built-in functions, for authz.Compile and
// authz.Config.Builtins, the capabilities file and policy tests.
func Builtins() []authz.Builtin {
	return append([]authz.Builtin{
		{Decl: &ast.Builtin{
			Name: BuiltinDecide,
			Description: "Answers SPEC §6 steps 2 to 6 for a verified token from the sidecar's tenancy data: " +
				"the first failing step's reason (unknown_user, user_inactive, tenant_inactive, invalid_token, tenant_unknown, " +
				"project_unknown, tenant_not_granted, role_required, no_role) or \"allowed\", the tenant it is about, and the effective roles. " +
				"Query keys: subject, issuer, trust_token_roles, tenant_binding, project, tenant (the tenant the request names) or " +
				"tenant_reading ({\"tenant\": X}, {} for none, {\"invalid\": why}), required (the route's roles, any one allows: a set, an array " +
				"or a comma list; without it step 5's requirement is left to the caller), token_roles (the token's authorization claim).",
			Categories: []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("query", queryType).Description("the question: who asks, for which project and tenant, needing which roles")),
				types.Named("answer", answerType).Description("{\"reason\", \"tenant\" (when the reason concerns one), \"roles\" (from step 5 on)}"),
			),
		}, Func: decideBuiltin},
		{Decl: &ast.Builtin{
			Name:        BuiltinUser,
			Description: "The data user a token's subject names, when the token's issuer may act as it (SPEC §6 step 2); undefined otherwise.",
			Categories:  []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(
					types.Named("subject", types.S).Description("the token's subject"),
					types.Named("issuer", types.S).Description("the token's issuer"),
					types.Named("trust_token_roles", types.B).Description("whether the issuer carries roles in its tokens"),
				),
				types.Named("user", userType).Description("users[subject]"),
			),
		}, Func: userBuiltin},
		{Decl: &ast.Builtin{
			Name:        BuiltinTenantActive,
			Description: "Whether a tenant exists and it and all its ancestors have status \"active\".",
			Categories:  []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("tenant", types.S).Description("tenant id")),
				types.Named("active", types.B).Description("true when active"),
			),
		}, Func: tenantActiveBuiltin},
		{Decl: &ast.Builtin{
			Name:        BuiltinTenantRoles,
			Description: "The roles a tenant holds on a project: all of its roles for the owner, those of its active project grant otherwise; undefined when neither.",
			Categories:  []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("project", types.S).Description("project id"), types.Named("tenant", types.S).Description("tenant id")),
				types.Named("roles", rolesType).Description("sorted roles"),
			),
		}, Func: tenantRolesBuiltin},
		{Decl: &ast.Builtin{
			Name:        BuiltinUserRoles,
			Description: "The union of the roles of a user's grants on a project inside a tenant ([] when none).",
			Categories:  []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("user", types.S).Description("user id"), types.Named("project", types.S).Description("project id"), types.Named("tenant", types.S).Description("tenant id")),
				types.Named("roles", rolesType).Description("sorted roles"),
			),
		}, Func: userRolesBuiltin},
		{Decl: &ast.Builtin{
			Name:        BuiltinEffectiveRoles,
			Description: "A user's roles on a project inside a tenant that the tenant still holds on the project (SPEC §6 step 5).",
			Categories:  []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("user", types.S).Description("user id"), types.Named("project", types.S).Description("project id"), types.Named("tenant", types.S).Description("tenant id")),
				types.Named("roles", roleSet).Description("effective roles"),
			),
		}, Func: effectiveRolesBuiltin},
		{Decl: &ast.Builtin{
			Name: BuiltinPathTenant,
			Description: "The tenant a raw request path names (SPEC §6 step 3, tenant_from path): {\"tenant\": X} for /t/X/..., {} for none, " +
				"{\"invalid\": why} for a path an upstream could read as another tenant or a tenant segment that is not a valid id. Reads no data.",
			Categories: []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("path", types.A).Description("the request's :path as the client sent it, query included (not a string: invalid)")),
				types.Named("reading", types.NewObject(nil, types.NewDynamicProperty(types.S, types.S))).Description("{\"tenant\": X}, {} or {\"invalid\": why}"),
			),
		}, Func: pathTenantBuiltin},
	}, SearchBuiltins()...)
}

var keyInvalidReading = ast.InternedTerm("invalid")

// pathTenantBuiltin reads no tenancy data: it runs anywhere, Rego unit
// tests included.
func pathTenantBuiltin(_ topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	path, _ := ops[0].Value.(ast.String)
	rd := tenancy.PathTenant(string(path))
	obj := ast.NewObjectWithCapacity(1)
	switch {
	case rd.Invalid != "":
		obj.Insert(keyInvalidReading, ast.StringTerm(rd.Invalid))
	case rd.Named:
		obj.Insert(keyTenant, ast.StringTerm(rd.Tenant))
	}
	return iter(ast.NewTerm(obj))
}

// errNoTenancy halts an evaluation that calls a tenancy built-in without
// tenancy data to read.
func errNoTenancy(name string, loc *ast.Location) error {
	return topdown.Halt{Err: &topdown.Error{
		Code:     topdown.BuiltinErr,
		Location: loc,
		Message: name + ": no tenancy cache in this evaluation: the built-ins read the sidecar's data " +
			"(gatehouse test fixtures, eval and serve provide it); in Rego unit tests mock them, e.g. " +
			"`with " + BuiltinDecide + " as testing.decide`",
	}}
}

// withReader runs fn with the reader of the evaluation's tenancy
// transaction and passes its result on: nil is undefined. Damage halts.
func withReader(bctx topdown.BuiltinContext, name string, iter func(*ast.Term) error, fn func(r *tenancy.Reader) (*ast.Term, error)) (err error) {
	var r *tenancy.Reader
	var t *txn
	switch x := authz.TenancyTxn(bctx.Context).(type) {
	case *txn:
		t, r = x, &x.r
	case nil:
		return errNoTenancy(name, bctx.Location)
	default:
		if !authz.IsEmptyTenancyTxn(x) {
			return errNoTenancy(name, bctx.Location)
		}
		r = tenancy.NewReader(nil, nil) // no tenancy data at all
	}
	if t != nil {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true)) // a fault in the mapped file panics, recovered below
		defer func() {
			if p := recover(); p != nil { // bbolt panics on damaged pages
				cause := fmt.Errorf("%w: %s: %v", tenancy.ErrDamaged, name, p)
				t.s.markCorrupt(t.file, cause)
				err = halt(bctx, cause)
			}
		}()
	}
	res, err := fn(r)
	if errors.Is(err, tenancy.ErrDamaged) {
		if t != nil {
			t.s.markCorrupt(t.file, err)
		}
		return halt(bctx, fmt.Errorf("%s: %w", name, err))
	}
	if err != nil {
		return err // the arguments: undefined, as for OPA's built-ins
	}
	if res == nil {
		return nil
	}
	return iter(res)
}

// halt stops the evaluation: the engine cannot decide.
func halt(bctx topdown.BuiltinContext, err error) error {
	return topdown.Halt{Err: &topdown.Error{Code: topdown.BuiltinErr, Message: "tenancy cache damaged: " + err.Error(), Location: bctx.Location}}
}

// stringArg returns operand i as a string.
func stringArg(name string, ops []*ast.Term, i int) (string, error) {
	s, ok := ops[i].Value.(ast.String)
	if !ok {
		return "", fmt.Errorf("%s: operand %d must be a string, got %s", name, i+1, ast.ValueName(ops[i].Value))
	}
	return string(s), nil
}

func stringArgs(name string, ops []*ast.Term, n int) ([]string, error) {
	out := make([]string, n)
	for i := range n {
		s, err := stringArg(name, ops, i)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}

func decideBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	q, err := parseQuery(ops[0].Value)
	if err != nil {
		return err
	}
	return withReader(bctx, BuiltinDecide, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		a, err := tenancy.Decide(r, q)
		if err != nil {
			return nil, err
		}
		return answerTerm(a), nil
	})
}

var (
	keyReason = ast.InternedTerm("reason")
	keyTenant = ast.InternedTerm("tenant")
	keyRoles  = ast.InternedTerm("roles")
)

// reasonTerms are the reasons' terms, built once.
var reasonTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, r := range []string{tenancy.ReasonAllowed, tenancy.ReasonInvalidToken, tenancy.ReasonUnknownUser, tenancy.ReasonUserInactive,
		tenancy.ReasonTenantInactive, tenancy.ReasonTenantUnknown, tenancy.ReasonProjectUnknown, tenancy.ReasonTenantNotGranted,
		tenancy.ReasonRoleRequired, tenancy.ReasonNoRole} {
		m[r] = ast.StringTerm(r)
	}
	return m
}()

func answerTerm(a tenancy.Answer) *ast.Term {
	obj := ast.NewObjectWithCapacity(3)
	reason := reasonTerms[a.Reason]
	if reason == nil {
		reason = ast.StringTerm(a.Reason)
	}
	obj.Insert(keyReason, reason)
	if a.HasTenant {
		obj.Insert(keyTenant, ast.StringTerm(a.Tenant))
	}
	if a.Roles != nil {
		obj.Insert(keyRoles, roleSetTerm(a.Roles))
	}
	return ast.NewTerm(obj)
}

func roleSetTerm(roles []string) *ast.Term {
	terms := make([]*ast.Term, len(roles))
	for i, r := range roles {
		terms[i] = ast.StringTerm(r)
	}
	return ast.SetTerm(terms...)
}

func roleArrayTerm(roles []string) *ast.Term {
	terms := make([]*ast.Term, len(roles))
	for i, r := range roles {
		terms[i] = ast.StringTerm(r)
	}
	return ast.ArrayTerm(terms...)
}

// parseQuery reads a decide query (see the declaration).
func parseQuery(v ast.Value) (*tenancy.Query, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return nil, fmt.Errorf("%s: the query must be an object, got %s", BuiltinDecide, ast.ValueName(v))
	}
	q := &tenancy.Query{}
	var err error
	str := func(key string, t *ast.Term) string {
		s, ok := t.Value.(ast.String)
		if !ok && err == nil {
			err = fmt.Errorf("%s: query.%s must be a string, got %s", BuiltinDecide, key, ast.ValueName(t.Value))
		}
		return string(s)
	}
	reading := false
	obj.Foreach(func(k, t *ast.Term) {
		key, ok := k.Value.(ast.String)
		if !ok {
			if err == nil {
				err = fmt.Errorf("%s: query keys are strings, got %v", BuiltinDecide, k)
			}
			return
		}
		switch key {
		case "subject":
			q.Subject = str("subject", t)
		case "issuer":
			q.Issuer = str("issuer", t)
		case "tenant_binding":
			q.TenantBinding = str("tenant_binding", t)
		case "project":
			q.Project = str("project", t)
		case "trust_token_roles":
			b, ok := t.Value.(ast.Boolean)
			if !ok && err == nil {
				err = fmt.Errorf("%s: query.trust_token_roles must be a boolean, got %s", BuiltinDecide, ast.ValueName(t.Value))
			}
			q.TrustTokenRoles = bool(b)
		case "tenant":
			q.Tenant, q.HasTenant = str("tenant", t), true
		case "tenant_reading":
			reading = true
			if e := parseReading(q, t.Value); e != nil && err == nil {
				err = e
			}
		case "required":
			q.CheckRoles = true
			if e := parseRequired(q, t.Value); e != nil && err == nil {
				err = e
			}
		case "token_roles":
			q.TokenRoles = tokenRoles(t.Value)
		default:
			if err == nil {
				err = fmt.Errorf("%s: unknown query key %q", BuiltinDecide, string(key))
			}
		}
	})
	if err == nil && reading && obj.Get(keyTenant) != nil {
		err = fmt.Errorf("%s: query holds both tenant and tenant_reading", BuiltinDecide)
	}
	return q, err
}

var (
	keyInvalid = ast.InternedTerm("invalid")
)

// parseReading reads a tenant reading: {"tenant": X}, {} or {"invalid": why}.
func parseReading(q *tenancy.Query, v ast.Value) error {
	obj, ok := v.(ast.Object)
	if !ok {
		return fmt.Errorf("%s: query.tenant_reading must be an object, got %s", BuiltinDecide, ast.ValueName(v))
	}
	var err error
	obj.Foreach(func(k, t *ast.Term) {
		switch {
		case k.Equal(keyTenant):
			s, ok := t.Value.(ast.String)
			if !ok {
				err = fmt.Errorf("%s: query.tenant_reading.tenant must be a string", BuiltinDecide)
			}
			q.Tenant, q.HasTenant = string(s), true
		case k.Equal(keyInvalid):
			if b, isBool := t.Value.(ast.Boolean); !isBool || bool(b) {
				q.TenantInvalid = true
			}
		default:
			err = fmt.Errorf("%s: unknown query.tenant_reading key %v", BuiltinDecide, k)
		}
	})
	if err == nil && q.HasTenant && q.TenantInvalid {
		err = fmt.Errorf("%s: query.tenant_reading holds both tenant and invalid", BuiltinDecide)
	}
	return err
}

// parseRequired reads the required roles: an array or a set of strings,
// or a route's comma list ("reader, writer": each part trimmed of space,
// empty ones left out, as tenancy.route_roles reads it).
func parseRequired(q *tenancy.Query, v ast.Value) error {
	if s, ok := v.(ast.String); ok {
		q.Required = []string{}
		for part := range strings.SplitSeq(string(s), ",") {
			if r := strings.TrimSpace(part); r != "" && !slices.Contains(q.Required, r) {
				q.Required = append(q.Required, r)
			}
		}
		return nil
	}
	var err error
	add := func(t *ast.Term) {
		s, ok := t.Value.(ast.String)
		if !ok {
			err = fmt.Errorf("%s: query.required holds %s, not a role", BuiltinDecide, ast.ValueName(t.Value))
			return
		}
		if !slices.Contains(q.Required, string(s)) {
			q.Required = append(q.Required, string(s))
		}
	}
	switch x := v.(type) {
	case ast.Set:
		x.Foreach(add)
	case *ast.Array:
		x.Foreach(add)
	default:
		return fmt.Errorf("%s: query.required must be a set or an array of roles, or a comma list, got %s", BuiltinDecide, ast.ValueName(v))
	}
	return err
}

// tokenRoles reads the roles a token carries per tenant from its
// authorization claim, as the policy did in Rego: authorization[x].roles,
// its string elements (the values of an object).
func tokenRoles(v ast.Value) func(string) []string {
	authz, ok := v.(ast.Object)
	if !ok {
		return nil
	}
	return func(x string) []string {
		t := authz.Get(ast.StringTerm(x))
		if t == nil {
			return nil
		}
		entry, ok := t.Value.(ast.Object)
		if !ok {
			return nil
		}
		rt := entry.Get(keyRoles)
		if rt == nil {
			return nil
		}
		var out []string
		add := func(t *ast.Term) {
			if s, ok := t.Value.(ast.String); ok {
				out = append(out, string(s))
			}
		}
		switch roles := rt.Value.(type) {
		case *ast.Array:
			roles.Foreach(add)
		case ast.Set:
			roles.Foreach(add)
		case ast.Object:
			roles.Foreach(func(_, v *ast.Term) { add(v) })
		}
		return out
	}
}

func userBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	args, err := stringArgs(BuiltinUser, ops, 2)
	if err != nil {
		return err
	}
	trust, ok := ops[2].Value.(ast.Boolean)
	if !ok {
		return fmt.Errorf("%s: operand 3 must be a boolean, got %s", BuiltinUser, ast.ValueName(ops[2].Value))
	}
	return withReader(bctx, BuiltinUser, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		if args[0] == "" {
			return nil, nil // no subject is never a user
		}
		u, err := r.User(args[0])
		if err != nil || u == nil || !tenancy.ActsAs(u, args[1], bool(trust)) {
			return nil, err
		}
		return userTerm(u), nil
	})
}

// userTerm is a user as data.tenancy.users holds it.
func userTerm(u *tenancy.User) *ast.Term {
	obj := ast.NewObjectWithCapacity(6)
	obj.Insert(ast.InternedTerm("id"), ast.StringTerm(u.ID))
	obj.Insert(ast.InternedTerm("tenant"), ast.StringTerm(u.Tenant))
	obj.Insert(ast.InternedTerm("kind"), ast.StringTerm(u.Kind))
	obj.Insert(ast.InternedTerm("status"), ast.StringTerm(u.Status))
	if u.Issuer != "" {
		obj.Insert(ast.InternedTerm("issuer"), ast.StringTerm(u.Issuer))
	}
	labels := ast.NewObjectWithCapacity(len(u.Labels))
	for k, v := range u.Labels {
		labels.Insert(ast.StringTerm(k), ast.StringTerm(v))
	}
	obj.Insert(ast.InternedTerm("labels"), ast.NewTerm(labels))
	return ast.NewTerm(obj)
}

func tenantActiveBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	t, err := stringArg(BuiltinTenantActive, ops, 0)
	if err != nil {
		return err
	}
	return withReader(bctx, BuiltinTenantActive, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		ok, err := r.TenantActive(t)
		if err != nil {
			return nil, err
		}
		return ast.InternedTerm(ok), nil
	})
}

func tenantRolesBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	args, err := stringArgs(BuiltinTenantRoles, ops, 2)
	if err != nil {
		return err
	}
	return withReader(bctx, BuiltinTenantRoles, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		roles, ok, err := r.TenantRoles(args[0], args[1])
		if err != nil || !ok {
			return nil, err
		}
		return roleArrayTerm(roles), nil
	})
}

func userRolesBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	args, err := stringArgs(BuiltinUserRoles, ops, 3)
	if err != nil {
		return err
	}
	return withReader(bctx, BuiltinUserRoles, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		roles, err := r.UserRoles(args[0], args[1], args[2])
		if err != nil {
			return nil, err
		}
		return roleArrayTerm(roles), nil
	})
}

func effectiveRolesBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	args, err := stringArgs(BuiltinEffectiveRoles, ops, 3)
	if err != nil {
		return err
	}
	return withReader(bctx, BuiltinEffectiveRoles, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		roles, err := r.EffectiveRoles(args[0], args[1], args[2])
		if err != nil {
			return nil, err
		}
		return roleSetTerm(roles), nil
	})
}

// --- search built-ins (SPEC §10: the AuthZEN searches) ---

// Built-ins that list who or where from keyed indexes, for searches. They
// are scans of one index key: a decision that calls them is cached for its
// own data version only.
const (
	BuiltinProjectUsers = "gatehouse.tenancy.project_users"
	BuiltinUserTenants  = "gatehouse.tenancy.user_tenants"
)

// SearchBuiltins returns the built-ins that list entities for searches.
// Builtins includes them.
func SearchBuiltins() []authz.Builtin {
	idList := types.NewArray(nil, types.S)
	return []authz.Builtin{
		{Decl: &ast.Builtin{
			Name: BuiltinProjectUsers,
			Description: "The users holding user grants on a project inside a tenant, sorted (from the project_user_grants index; " +
				"whether each may act is for the caller to decide, e.g. with gatehouse.tenancy.decide).",
			Categories: []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("project", types.S).Description("project id"), types.Named("tenant", types.S).Description("tenant id")),
				types.Named("users", idList).Description("sorted user ids"),
			),
		}, Func: projectUsersBuiltin},
		{Decl: &ast.Builtin{
			Name:        BuiltinUserTenants,
			Description: "The tenants in which a user holds grants on a project, sorted (the keys of index.user_roles[user][project]).",
			Categories:  []string{"gatehouse"},
			Decl: types.NewFunction(
				types.Args(types.Named("user", types.S).Description("user id"), types.Named("project", types.S).Description("project id")),
				types.Named("tenants", idList).Description("sorted tenant ids"),
			),
		}, Func: userTenantsBuiltin},
	}
}

// withScanReader is withReader for a built-in that scans an index key: the
// decision depends on more than its keyed reads.
func withScanReader(bctx topdown.BuiltinContext, name string, iter func(*ast.Term) error, fn func(r *tenancy.Reader) (*ast.Term, error)) error {
	if t, ok := authz.TenancyTxn(bctx.Context).(*txn); ok && t.rec != nil {
		t.rec.untracked = true
	}
	return withReader(bctx, name, iter, fn)
}

func idArrayTerm(ids []string) *ast.Term { return roleArrayTerm(ids) }

func projectUsersBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	args, err := stringArgs(BuiltinProjectUsers, ops, 2)
	if err != nil {
		return err
	}
	return withScanReader(bctx, BuiltinProjectUsers, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		users, err := r.ProjectUsers(args[0], args[1])
		if err != nil {
			return nil, err
		}
		return idArrayTerm(users), nil
	})
}

func userTenantsBuiltin(bctx topdown.BuiltinContext, ops []*ast.Term, iter func(*ast.Term) error) error {
	args, err := stringArgs(BuiltinUserTenants, ops, 2)
	if err != nil {
		return err
	}
	return withScanReader(bctx, BuiltinUserTenants, iter, func(r *tenancy.Reader) (*ast.Term, error) {
		tenants, err := r.UserTenants(args[0], args[1])
		if err != nil {
			return nil, err
		}
		return idArrayTerm(tenants), nil
	})
}
