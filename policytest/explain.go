package policytest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Explanation says why a decision came out as it did: the rules that
// produced a value, the tenancy data the evaluation read, and for a
// tenancy decision the chain user → user grants → project → project grants
// → tenant (and its ancestors).
type Explanation struct {
	// Rules are the rules that produced a value, by file and line.
	Rules []FiredRule `json:"rules"`
	// TenancyReads are the data.tenancy paths read, in first-read order.
	TenancyReads []string `json:"tenancy_reads"`
	// Identity says whether the token's issuer may act as the data user
	// its subject names; nil without a valid token.
	Identity *Identity `json:"identity,omitempty"`
	// Chain is the tenancy chain of the decided subject, project and tenant.
	Chain *Chain `json:"chain,omitempty"`
}

// Identity is SPEC §6 step 2 for one token: a token acts as the data user
// U = users[sub] only when U.issuer equals the token's issuer, or U.issuer
// is empty and the issuer lacks trust_token_roles; otherwise U counts as
// absent (unknown_user, or the token-roles path of a trusted issuer).
type Identity struct {
	// Subject and Issuer are the token's sub and iss.
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	// TrustTokenRoles is the issuer's trust_token_roles.
	TrustTokenRoles bool `json:"trust_token_roles"`
	// InData is true when users[Subject] exists.
	InData bool `json:"in_data"`
	// UserIssuer is users[Subject].issuer ("" when it names none).
	UserIssuer string `json:"user_issuer,omitempty"`
	// MayActAs says which issuers may act as the user.
	MayActAs string `json:"may_act_as,omitempty"`
	// ActsAsUser is true when the token acts as the data user.
	ActsAsUser bool `json:"acts_as_user"`
	// Why explains ActsAsUser.
	Why string `json:"why"`
}

// FiredRule is a rule (or function call) that produced a value.
type FiredRule struct {
	// Rule is the rule's path, with its arguments for a function.
	Rule string `json:"rule"`
	// Location is the rule's head.
	Location *Location `json:"location"`
	// Value is the value it produced (shortened).
	Value string `json:"value"`
	// Times counts how often it produced a value.
	Times int `json:"times"`
}

// Chain is the tenancy data behind a decision for subject U, project P and
// target tenant X: users[U]; the user grants index.user_grants[U][P][X];
// projects[P]; the project grants index.project_grants[P][X] (none when X
// owns P); the tenants of index.tenant_chain[X], and of U's home tenant
// when U is an external user.
type Chain struct {
	Revision      uint64        `json:"revision"`
	User          *ChainEntity  `json:"user"`
	UserGrants    []ChainEntity `json:"user_grants"`
	Project       *ChainEntity  `json:"project"`
	ProjectGrants []ChainEntity `json:"project_grants"`
	Owner         bool          `json:"tenant_owns_project"`
	Tenant        []ChainEntity `json:"tenant"`
	HomeTenant    []ChainEntity `json:"home_tenant,omitempty"`
}

// ChainEntity is one entity of a chain; Entity is nil when the data holds
// no entity with that id.
type ChainEntity struct {
	ID     string         `json:"id"`
	Entity map[string]any `json:"entity"`
}

// ruleTracer records, while the query is evaluated, the rules that
// produced a value: topdown emits an Exit event on a rule when its body
// succeeded, and the head is plugged with the bindings at that moment.
type ruleTracer struct {
	mu    sync.Mutex
	seen  map[*ast.Rule]int
	keys  map[string]int
	rules []FiredRule
	token ast.Value // input.token as the first policy rule saw it
}

func (t *ruleTracer) Enabled() bool               { return true }
func (t *ruleTracer) Config() topdown.TraceConfig { return topdown.TraceConfig{} }

func (t *ruleTracer) TraceEvent(e topdown.Event) {
	if e.Op != topdown.ExitOp {
		return
	}
	r, ok := e.Node.(*ast.Rule)
	if !ok || r.Module == nil || strings.HasPrefix(r.Module.Package.Path.String(), "data."+shimPackage) {
		return
	}
	name := r.Module.Package.Path.Extend(r.Head.Ref().GroundPrefix()).String()
	if len(r.Head.Args) > 0 {
		args := make([]string, len(r.Head.Args))
		for i, a := range r.Head.Args {
			args[i] = e.Plug(a).String()
		}
		name += "(" + strings.Join(args, ", ") + ")"
	}
	value := "true"
	if r.Head.Value != nil {
		value = e.Plug(r.Head.Value).String()
	} else if r.Head.Key != nil {
		value = "contains " + e.Plug(r.Head.Key).String()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.token == nil && e.Input() != nil {
		// inside the eval shim's `with input.token`: the token that decided
		t.token = lookup(e.Input().Value, "token")
	}
	if t.keys == nil {
		t.keys = map[string]int{}
	}
	key := r.Location.String() + "\x00" + name
	if i, ok := t.keys[key]; ok {
		t.rules[i].Times++
		return
	}
	t.keys[key] = len(t.rules)
	t.rules = append(t.rules, FiredRule{Rule: name, Location: location(r.Location), Value: shorten(value, 160), Times: 1})
}

// fired returns the recorded rules sorted by file and line.
func (t *ruleTracer) fired() []FiredRule {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := slices.Clone(t.rules)
	slices.SortStableFunc(out, func(a, b FiredRule) int {
		if c := strings.Compare(a.Location.File, b.Location.File); c != 0 {
			return c
		}
		return a.Location.Row - b.Location.Row
	})
	if out == nil {
		out = []FiredRule{}
	}
	return out
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + " …"
}

// explain assembles the explanation of a traced check.
func (s *Sidecar) explain(ctx context.Context, t *ruleTracer, ans *Answer, in evalInput) *Explanation {
	ex := &Explanation{Rules: t.fired(), TenancyReads: []string{}}
	seen := map[string]bool{}
	for _, p := range ans.Reads {
		k := strings.Join(p, ".")
		if !seen[k] {
			seen[k] = true
			ex.TenancyReads = append(ex.TenancyReads, k)
		}
	}
	subject := ans.Decision.Subject
	if subject == "" {
		subject = in.subject
	}
	t.mu.Lock()
	tok := t.token
	t.mu.Unlock()
	if subject == "" && in.project == "" && tok == nil {
		return ex
	}
	ten := s.Tenancy()
	txn, err := ten.NewTransaction(ctx)
	if err != nil {
		return ex
	}
	defer ten.Abort(ctx, txn)
	var user map[string]any
	if subject != "" {
		if v, err := ten.Read(ctx, txn, storage.Path{authz.TenancyRoot, "users", subject}); err == nil {
			if val, ok := v.(ast.Value); ok {
				if j, err := ast.JSON(val); err == nil {
					user, _ = j.(map[string]any)
				}
			}
		}
	}
	ex.Identity = identify(tok, user)
	if subject == "" && in.project == "" {
		return ex
	}
	ex.Chain = s.chain(ctx, ten, txn, ans, subject, in.project, ex.Identity)
	return ex
}

// identify applies SPEC §6 step 2 to a valid input.token and the data user
// its subject names (nil when absent); nil for an invalid or missing token.
func identify(tok ast.Value, user map[string]any) *Identity {
	if v, ok := lookup(tok, "valid").(ast.Boolean); !ok || !bool(v) {
		return nil
	}
	id := &Identity{}
	if s, ok := lookup(tok, "subject").(ast.String); ok {
		id.Subject = string(s)
	}
	if s, ok := lookup(tok, "issuer").(ast.String); ok {
		id.Issuer = string(s)
	}
	if b, ok := lookup(tok, "trust_token_roles").(ast.Boolean); ok {
		id.TrustTokenRoles = bool(b)
	}
	id.InData = user != nil && id.Subject != ""
	userIssuer, hasIssuer := "", false
	if user != nil {
		if v, ok := user["issuer"]; ok {
			s, isString := v.(string)
			userIssuer, hasIssuer = s, !isString || s != ""
		}
	}
	id.UserIssuer = userIssuer
	switch {
	case id.Subject == "":
		id.Why = "the token names no subject: no user is ever decided for an empty one"
	case !id.InData && id.TrustTokenRoles:
		id.Why = fmt.Sprintf("no user %q in the data; %s has trust_token_roles: roles come from the token", id.Subject, id.Issuer)
	case !id.InData:
		id.Why = fmt.Sprintf("no user %q in the data, and %s does not have trust_token_roles (unknown_user)", id.Subject, id.Issuer)
	case hasIssuer && userIssuer == "":
		id.MayActAs = "no issuer"
		id.Why = fmt.Sprintf("users[%q].issuer is not a string: no issuer may act as the user, who counts as absent", id.Subject)
	case hasIssuer:
		id.MayActAs = userIssuer
		id.ActsAsUser = userIssuer == id.Issuer
		if id.ActsAsUser {
			id.Why = fmt.Sprintf("users[%q].issuer is the token's issuer", id.Subject)
		} else {
			id.Why = fmt.Sprintf("users[%q].issuer is %s: only that issuer may act as the user; for a token of %s the user counts as absent (%s)",
				id.Subject, userIssuer, id.Issuer, absentAs(id.TrustTokenRoles))
		}
	default:
		id.MayActAs = "any issuer without trust_token_roles"
		id.ActsAsUser = !id.TrustTokenRoles
		if id.ActsAsUser {
			id.Why = fmt.Sprintf("users[%q] names no issuer, and %s does not have trust_token_roles", id.Subject, id.Issuer)
		} else {
			id.Why = fmt.Sprintf("users[%q] names no issuer, and %s has trust_token_roles: it may not act as a data user it does not authenticate, so the user counts as absent (%s)",
				id.Subject, id.Issuer, absentAs(true))
		}
	}
	return id
}

func absentAs(trust bool) string {
	if trust {
		return "roles come from the token"
	}
	return "unknown_user"
}

// chain reads the tenancy chain through txn, a storage transaction on the
// store the decision read. When the token does not act as the data user,
// the user's grants and home tenant play no part and are left out.
func (s *Sidecar) chain(ctx context.Context, ten authz.Tenancy, txn storage.Transaction, ans *Answer, u, p string, ident *Identity) *Chain {
	read := func(path ...string) ast.Value {
		v, err := ten.Read(ctx, txn, append(storage.Path{authz.TenancyRoot}, path...))
		if err != nil {
			return nil
		}
		val, _ := v.(ast.Value)
		return val
	}
	entity := func(collection, id string) ChainEntity {
		ce := ChainEntity{ID: id}
		if id == "" {
			return ce
		}
		if v := read(collection, id); v != nil {
			if j, err := ast.JSON(v); err == nil {
				ce.Entity, _ = j.(map[string]any)
			}
		}
		return ce
	}
	ids := func(path ...string) []string {
		var out []string
		if arr, ok := read(path...).(*ast.Array); ok {
			arr.Foreach(func(t *ast.Term) {
				if s, ok := t.Value.(ast.String); ok {
					out = append(out, string(s))
				}
			})
		}
		return out
	}
	tenantChain := func(x string) []ChainEntity {
		chain := ids("index", "tenant_chain", x)
		if len(chain) == 0 {
			chain = []string{x}
		}
		var out []ChainEntity
		for _, t := range chain {
			out = append(out, entity("tenants", t))
		}
		return out
	}

	c := &Chain{Revision: ten.TxnRevision(txn), UserGrants: []ChainEntity{}, ProjectGrants: []ChainEntity{}}
	user := entity("users", u)
	c.User = &user
	home, _ := user.Entity["tenant"].(string)
	acts := ident == nil || ident.ActsAsUser
	if !acts {
		home = ""
	}
	x := decidedTenant(ans, u, p, home)
	if p != "" {
		proj := entity("projects", p)
		c.Project = &proj
		owner, _ := proj.Entity["owner"].(string)
		c.Owner = x != "" && owner == x
	}
	if acts && u != "" && p != "" && x != "" {
		for _, id := range ids("index", "user_grants", u, p, x) {
			c.UserGrants = append(c.UserGrants, entity("user_grants", id))
		}
	}
	if p != "" && x != "" {
		for _, id := range ids("index", "project_grants", p, x) {
			c.ProjectGrants = append(c.ProjectGrants, entity("project_grants", id))
		}
	}
	if x != "" {
		c.Tenant = tenantChain(x)
	}
	if home != "" && home != x {
		c.HomeTenant = tenantChain(home)
	}
	return c
}

// decidedTenant finds the target tenant of a decision: the tenant the
// decision names (x-gatehouse-tenant on allow, or a "tenant" in its dynamic
// metadata), else the last tenant the evaluation looked up for the project
// (index.tenant_roles[P][X], index.user_roles[U][P][X]), else the last
// other tenant it read, else the user's home tenant.
func decidedTenant(ans *Answer, u, p, home string) string {
	d := ans.Decision
	for _, h := range d.Headers {
		if d.Allowed && strings.EqualFold(h.Key, "x-gatehouse-tenant") && h.Value != "" {
			return h.Value
		}
	}
	if t, ok := d.DynamicMetadata.String("tenant"); ok && t != "" {
		return t
	}
	x := ""
	for _, r := range ans.Reads {
		switch {
		case len(r) == 5 && r[1] == "index" && r[2] == "tenant_roles" && r[3] == p:
			x = r[4]
		case len(r) == 6 && r[1] == "index" && r[2] == "user_roles" && r[3] == u && r[4] == p:
			x = r[5]
		}
	}
	if x != "" {
		return x
	}
	for _, r := range ans.Reads {
		if len(r) == 3 && r[1] == "tenants" && r[2] != home {
			x = r[2]
		}
	}
	if x != "" {
		return x
	}
	return home
}
