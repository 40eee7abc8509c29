package worldgen

import (
	"fmt"
	"math/rand/v2"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// Spec sizes a world.
type Spec struct {
	// Providers are service-provider tenants; every other tenant is a
	// customer of one of them.
	Providers int
	Tenants   int
	Users     int
	// Projects are owned by providers; each is granted to GrantsPerProject
	// customers of its provider.
	Projects         int
	GrantsPerProject int
	// UserGrants in total: mostly in the user's home tenant, ExternalPct
	// percent in another tenant holding a grant on the project.
	UserGrants  int
	ExternalPct int
	Seed        uint64
}

// Default is the size of issue 3's benchmark: 1,000 tenants, 50,000 users,
// over 200,000 user grants (250,000 drawn; duplicates of user, project and
// tenant are skipped).
var Default = Spec{Providers: 10, Tenants: 1000, Users: 50000, Projects: 200, GrantsPerProject: 40, UserGrants: 250000, ExternalPct: 10, Seed: 1}

// Scale1M is the Default world five times over: 5,000 tenants, 250,000
// users, over 1,000,000 user grants (1,250,000 drawn; duplicates skipped).
var Scale1M = Spec{Providers: 50, Tenants: 5000, Users: 250000, Projects: 1000, GrantsPerProject: 40, UserGrants: 1250000, ExternalPct: 10, Seed: 1}

// Scale10M is the scale run: 10,000 tenants, 2,500,000 users, over
// 10,000,000 user grants (10,700,000 drawn; duplicates skipped).
var Scale10M = Spec{Providers: 50, Tenants: 10000, Users: 2500000, Projects: 2000, GrantsPerProject: 100, UserGrants: 10700000, ExternalPct: 10, Seed: 1}

// Small is a world of the same shape, small.
var Small = Spec{Providers: 2, Tenants: 20, Users: 100, Projects: 10, GrantsPerProject: 4, UserGrants: 400, ExternalPct: 10, Seed: 1}

// Roles every generated project defines.
var Roles = []string{"admin", "reader", "writer"}

// World is a generated world's structure (ids only), enough to derive
// requests with known answers.
type World struct {
	Spec Spec
	// grants[p] lists the customer tenants holding a grant on project p.
	grants [][]int
	// owner[p] is the provider owning project p.
	owner []int
	// userTenant[u] is u's home tenant.
	userTenant []int
	// ug lists generated user grants.
	ug []userGrant
}

type userGrant struct {
	id                    int
	user, project, tenant int
	roles                 []string
}

// IDs.
func TenantID(i int) string  { return fmt.Sprintf("t%05d", i) }
func UserID(i int) string    { return fmt.Sprintf("u%07d", i) }
func ProjectID(i int) string { return fmt.Sprintf("p%04d", i) }
func GrantID(p, k int) string {
	return fmt.Sprintf("pg%04d-%03d", p, k)
}
func UserGrantID(i int) string { return fmt.Sprintf("ug%08d", i) }

// Generate calls emit for every entity, in an order where references point
// backwards (tenants, projects, grants, users, user grants).
func Generate(s Spec, emit func(tenancy.Entity) error) (*World, error) {
	r := rand.New(rand.NewPCG(s.Seed, 2))
	w := &World{Spec: s}
	customers := make([][]int, s.Providers) // provider → its customer tenants
	for i := 0; i < s.Tenants; i++ {
		t := &tenancy.Tenant{ID: TenantID(i), Name: fmt.Sprintf("Tenant %d", i), Status: tenancy.StatusActive, Labels: map[string]string{}}
		if i < s.Providers {
			t.Kind = "service_provider"
		} else {
			prov := i % s.Providers
			t.Parent, t.Kind = TenantID(prov), "customer"
			customers[prov] = append(customers[prov], i)
		}
		if err := emit(t); err != nil {
			return nil, err
		}
	}
	w.owner = make([]int, s.Projects)
	w.grants = make([][]int, s.Projects)
	for p := 0; p < s.Projects; p++ {
		prov := p % s.Providers
		w.owner[p] = prov
		if err := emit(&tenancy.Project{ID: ProjectID(p), Owner: TenantID(prov), Roles: Roles, Labels: map[string]string{}}); err != nil {
			return nil, err
		}
	}
	for p := 0; p < s.Projects; p++ {
		cs := customers[w.owner[p]]
		n := min(s.GrantsPerProject, len(cs))
		for k, idx := range r.Perm(len(cs))[:n] {
			w.grants[p] = append(w.grants[p], cs[idx])
			g := &tenancy.ProjectGrant{ID: GrantID(p, k), Project: ProjectID(p), Tenant: TenantID(cs[idx]), Roles: []string{"reader", "writer"}, Status: tenancy.StatusActive}
			if err := emit(g); err != nil {
				return nil, err
			}
		}
	}
	// customer tenant → projects granted to it
	grantedTo := map[int][]int{}
	for p, ts := range w.grants {
		for _, t := range ts {
			grantedTo[t] = append(grantedTo[t], p)
		}
	}
	w.userTenant = make([]int, s.Users)
	for u := 0; u < s.Users; u++ {
		t := s.Providers + r.IntN(s.Tenants-s.Providers)
		w.userTenant[u] = t
		if err := emit(&tenancy.User{ID: UserID(u), Tenant: TenantID(t), Kind: tenancy.KindHuman, Status: tenancy.StatusActive, Labels: map[string]string{}}); err != nil {
			return nil, err
		}
	}
	seen := map[[3]int]bool{}
	for i := 0; i < s.UserGrants; i++ {
		u := i % s.Users
		home := w.userTenant[u]
		x := home
		if r.IntN(100) < s.ExternalPct {
			x = s.Providers + r.IntN(s.Tenants-s.Providers)
		}
		ps := grantedTo[x]
		if len(ps) == 0 {
			continue
		}
		p := ps[r.IntN(len(ps))]
		if seen[[3]int{u, p, x}] {
			continue
		}
		seen[[3]int{u, p, x}] = true
		roles := []string{"reader"}
		if r.IntN(3) == 0 {
			roles = []string{"reader", "writer"}
		}
		w.ug = append(w.ug, userGrant{id: i, user: u, project: p, tenant: x, roles: roles})
		if err := emit(&tenancy.UserGrant{ID: UserGrantID(i), User: UserID(u), Project: ProjectID(p), Tenant: TenantID(x), Roles: roles}); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// Request is a request with a known answer under the shipped policy.
type Request struct {
	Subject string
	Path    string
	// Context are the route's context extensions.
	Context map[string]string
	Allow   bool
	// Reason is the shipped policy's reason code.
	Reason string
	// Grant is the user grant behind the request's user, project and
	// tenant (the one that allows it, or whose roles are insufficient).
	Grant *tenancy.UserGrant
}

// Requests returns n requests, allowPct percent of them allowed.
func (w *World) Requests(n, allowPct int, seed uint64) []Request {
	r := rand.New(rand.NewPCG(seed, 3))
	out := make([]Request, 0, n)
	for len(out) < n {
		g := w.ug[r.IntN(len(w.ug))]
		req := Request{
			Grant:   &tenancy.UserGrant{ID: UserGrantID(g.id), User: UserID(g.user), Project: ProjectID(g.project), Tenant: TenantID(g.tenant), Roles: g.roles},
			Subject: UserID(g.user),
			Path:    fmt.Sprintf("/t/%s/api/items/%d", TenantID(g.tenant), r.IntN(1000)),
			Context: map[string]string{"project": ProjectID(g.project)},
		}
		if r.IntN(100) < allowPct {
			req.Context["roles"] = g.roles[r.IntN(len(g.roles))]
			req.Allow, req.Reason = true, "allowed"
		} else {
			switch r.IntN(2) {
			case 0: // a role the user lacks
				req.Context["roles"] = "admin"
				req.Reason = "role_required"
			default: // a project the tenant does not hold
				q := (g.project + 1) % w.Spec.Projects
				if w.owner[q] == g.tenant || contains(w.grants[q], g.tenant) {
					continue
				}
				req.Context["project"] = ProjectID(q)
				req.Reason = "tenant_not_granted"
			}
		}
		out = append(out, req)
	}
	return out
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// UserGrantCount is the number of user grants actually generated
// (duplicates of (user, project, tenant) are skipped).
func (w *World) UserGrantCount() int { return len(w.ug) }

// CheckRequest is r as Envoy's ext_authz filter would send it, with token
// as the bearer token.
func (r Request) CheckRequest(token string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.7", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 51234}}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: "1234", Method: "GET", Path: r.Path, Host: "api.example.com", Scheme: "https", Protocol: "HTTP/1.1",
			Headers: map[string]string{
				":authority": "api.example.com", ":method": "GET", ":path": r.Path,
				"authorization": "Bearer " + token, "user-agent": "bench", "x-request-id": "1234",
			},
		}},
		ContextExtensions: r.Context,
	}}
}
