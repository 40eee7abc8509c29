package policytest

import (
	"context"
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
	// Chain is the tenancy chain of the decided subject, project and tenant.
	Chain *Chain `json:"chain,omitempty"`
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
	if subject == "" && in.project == "" {
		return ex
	}
	ex.Chain = s.chain(ctx, ans, subject, in.project)
	return ex
}

// chain reads the tenancy chain through one storage transaction on the
// store the decision read.
func (s *Sidecar) chain(ctx context.Context, ans *Answer, u, p string) *Chain {
	ten := s.Tenancy()
	txn, err := ten.NewTransaction(ctx)
	if err != nil {
		return nil
	}
	defer ten.Abort(ctx, txn)
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
	x := decidedTenant(ans, u, p, home)
	if p != "" {
		proj := entity("projects", p)
		c.Project = &proj
		owner, _ := proj.Entity["owner"].(string)
		c.Owner = x != "" && owner == x
	}
	if u != "" && p != "" && x != "" {
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
	if t, ok := d.DynamicMetadata["tenant"].(string); ok && t != "" {
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
