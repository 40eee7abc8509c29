package crashtest

import (
	"bytes"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

const issuer = "https://idp.crash.test/"

// newKeys writes the admin and sync tokens and the issuer's public key.
func newKeys(t *testing.T) *keys {
	t.Helper()
	dir := t.TempDir()
	k := &keys{dir: dir, admin: "crash-admin-token"}
	k.adminFile = filepath.Join(dir, "admin.token")
	k.syncFile = filepath.Join(dir, "sync.token")
	k.pubFile = filepath.Join(dir, "issuer.pem")
	testutil.WriteFile(t, k.adminFile, k.admin)
	testutil.WriteFile(t, k.syncFile, "crash-sync-token")
	testutil.WriteFile(t, k.pubFile, string(testutil.PublicKeyPEM(t, &signingKey(t).PublicKey)))
	return k
}

func signingKey(t testing.TB) *rsa.PrivateKey { return testutil.RSAKey(t, "crashtest") }

var (
	tokenMu sync.Mutex
	tokens  = map[string]string{}
)

// token returns an RS256 token of the test issuer for subject.
func token(t testing.TB, subject string) string {
	tokenMu.Lock()
	defer tokenMu.Unlock()
	if s, ok := tokens[subject]; ok {
		return s
	}
	s := testutil.MintJWT(t, jwt.SigningMethodRS256, signingKey(t), "", testutil.Claims(issuer, subject, map[string]any{"exp": time.Now().Add(24 * time.Hour).Unix()}))
	tokens[subject] = s
	return s
}

// admin talks to a control endpoint's admin API.
type admin struct {
	url, token string
	client     *http.Client
}

func newAdmin(c *control, k *keys) *admin {
	return &admin{url: c.url, token: k.admin, client: &http.Client{Timeout: 60 * time.Second}}
}

// do sends one request; a transport error (a killed control endpoint) is
// returned, not fatal.
func (a *admin) do(method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, a.url+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// tryBatch posts ops and returns the revision; a refusal or a transport
// error (a killed control endpoint) is returned.
func (a *admin) tryBatch(ops []tenancy.Op) (uint64, int, []byte, error) {
	b, err := json.Marshal(map[string]any{"ops": ops})
	if err != nil {
		return 0, 0, nil, err
	}
	status, body, err := a.do(http.MethodPost, "/v1/batch", b)
	if err != nil || status != http.StatusOK {
		return 0, status, body, err
	}
	var ans struct{ Revision uint64 }
	err = json.Unmarshal(body, &ans)
	return ans.Revision, status, body, err
}

// state reads every entity through GET /v1/{collection} pages, retrying
// until all pages are at one revision.
func (a *admin) state(t *testing.T) (testutil.State, uint64) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		s, rev, consistent := a.readState(t)
		if consistent {
			return s, rev
		}
		if attempt > 20 {
			t.Fatalf("the control's data kept changing while it was read")
		}
	}
}

func (a *admin) readState(t *testing.T) (testutil.State, uint64, bool) {
	t.Helper()
	s := testutil.NewState()
	var rev uint64
	first := true
	for _, c := range tenancy.Collections {
		after := ""
		for {
			status, body, err := a.do(http.MethodGet, "/v1/"+c+"?limit=1000&after="+url.QueryEscape(after), nil)
			if err != nil || status != http.StatusOK {
				t.Fatalf("list %s: %v %d %s", c, err, status, body)
			}
			var page struct {
				Items    []json.RawMessage `json:"items"`
				Next     string            `json:"next"`
				Revision uint64            `json:"revision"`
			}
			if err := json.Unmarshal(body, &page); err != nil {
				t.Fatalf("list %s: %v", c, err)
			}
			if first {
				rev, first = page.Revision, false
			} else if page.Revision != rev {
				return nil, 0, false
			}
			for _, it := range page.Items {
				e, err := tenancy.DecodeStored(c, it)
				if err != nil {
					t.Fatalf("list %s: %v", c, err)
				}
				s[c][e.Key()] = e
			}
			if page.Next == "" {
				break
			}
			after = page.Next
		}
	}
	return s, rev, true
}

// worldSpec sizes the test world: big enough that a sidecar's snapshot
// takes a while (about 17,000 entities: a second or so; 8,000 with
// -short), small enough that the suite stays within a minute, -race
// included (the race detector slows this process, which reads and checks
// the whole world several times, not the processes under test).
func worldSpec() worldgen.Spec {
	if testing.Short() {
		return worldgen.Spec{Providers: 2, Tenants: 40, Users: 2000, Projects: 10, GrantsPerProject: 8, UserGrants: 6000, ExternalPct: 10, Seed: 7}
	}
	return worldgen.Spec{Providers: 4, Tenants: 100, Users: 5000, Projects: 30, GrantsPerProject: 15, UserGrants: 15000, ExternalPct: 10, Seed: 7}
}

var (
	templateOnce sync.Once
	templateDir  string
	templateRev  uint64
	templateErr  error
)

// worldControl starts a control endpoint over a copy of the test world
// (built once per test binary through the admin API of a first control
// process, then copied as a file).
func worldControl(t *testing.T, k *keys) (*control, *admin) {
	t.Helper()
	templateOnce.Do(func() { templateDir, templateRev, templateErr = buildWorld(t, k) })
	if templateErr != nil {
		t.Fatalf("build the world: %v", templateErr)
	}
	dir := filepath.Join(t.TempDir(), "control")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(templateDir, "control.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "control.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	c := startControl(t, k, dir, "127.0.0.1:0")
	return c, newAdmin(c, k)
}

// buildWorld writes the world through a control process's admin API in
// batches, then stops the process (SIGTERM) and keeps its file. The admin
// token is the same for every test (newKeys writes the same one).
func buildWorld(t *testing.T, k *keys) (string, uint64, error) {
	dir, err := os.MkdirTemp("", "gatehouse-crashtest-world-")
	if err != nil {
		return "", 0, err
	}
	worldDirs = append(worldDirs, dir) // outlives the test; TestMain removes it
	start := time.Now()
	c := startControl(t, k, dir, "127.0.0.1:0")
	a := newAdmin(c, k)
	var ops []tenancy.Op
	var rev uint64
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		r, status, body, err := a.tryBatch(ops)
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("seed batch: %v %d %s", err, status, body)
		}
		rev, ops = r, ops[:0]
		return nil
	}
	_, err = worldgen.Generate(worldSpec(), func(e tenancy.Entity) error {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		ops = append(ops, tenancy.Op{Op: tenancy.OpPut, Collection: e.Collection(), Value: b})
		if len(ops) == tenancy.MaxBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	c.stop()
	t.Logf("world: %d ops up to revision %d in %v", worldSize(), rev, time.Since(start).Round(time.Millisecond))
	return dir, rev, err
}

// worldDirs are the world templates, removed by TestMain.
var worldDirs []string

func worldSize() int {
	n := 0
	_, _ = worldgen.Generate(worldSpec(), func(tenancy.Entity) error { n++; return nil })
	return n
}

// --- the oracle: SPEC §6 steps 2-5 over the control's data -------------

// query is one decision to compare: user U asks for project P in tenant
// X (path /t/X/...), the route requiring one of roles (none: any role).
type query struct {
	user, project, tenant string
	roles                 []string
}

// answer is a decision: allowed with the effective roles, or the reason.
type answer struct {
	allowed bool
	reason  string
	roles   string // sorted, comma-joined (allowed only)
}

func (a answer) String() string {
	if a.allowed {
		return "allow [" + a.roles + "]"
	}
	return "deny " + a.reason
}

// oracle answers queries over one state, with the lookups the policy's
// indexes provide built here from the entities.
type oracle struct {
	s      testutil.State
	grants map[[2]string][]*tenancy.ProjectGrant // project, tenant
	ugs    map[[3]string][]*tenancy.UserGrant    // user, project, tenant
}

func newOracle(s testutil.State) *oracle {
	o := &oracle{s: s, grants: map[[2]string][]*tenancy.ProjectGrant{}, ugs: map[[3]string][]*tenancy.UserGrant{}}
	for _, e := range s[tenancy.ProjectGrants] {
		g := e.(*tenancy.ProjectGrant)
		o.grants[[2]string{g.Project, g.Tenant}] = append(o.grants[[2]string{g.Project, g.Tenant}], g)
	}
	for _, e := range s[tenancy.UserGrants] {
		g := e.(*tenancy.UserGrant)
		k := [3]string{g.User, g.Project, g.Tenant}
		o.ugs[k] = append(o.ugs[k], g)
	}
	return o
}

// decide: SPEC §6 steps 2-5 for a subject of an issuer without
// trust_token_roles, the target tenant taken from the path.
func (o *oracle) decide(q query) answer {
	s := o.s
	deny := func(r string) answer { return answer{reason: r} }
	ue, ok := s[tenancy.Users][q.user]
	if !ok {
		return deny("unknown_user")
	}
	u := ue.(*tenancy.User)
	if u.Status != tenancy.StatusActive {
		return deny("user_inactive")
	}
	if !tenantActive(s, u.Tenant) {
		return deny("tenant_inactive")
	}
	x := q.tenant
	if _, ok := s[tenancy.Tenants][x]; !ok {
		return deny("tenant_unknown")
	}
	if !tenantActive(s, x) {
		return deny("tenant_inactive")
	}
	pe, ok := s[tenancy.Projects][q.project]
	if !ok {
		return deny("project_unknown")
	}
	p := pe.(*tenancy.Project)
	var held []string
	if p.Owner == x {
		held = p.Roles
	} else {
		granted := false
		for _, g := range o.grants[[2]string{p.ID, x}] {
			if g.Status == tenancy.StatusActive {
				granted = true
				held = append(held, g.Roles...)
			}
		}
		if !granted {
			return deny("tenant_not_granted")
		}
	}
	var eff []string
	for _, g := range o.ugs[[3]string{q.user, p.ID, x}] {
		for _, r := range g.Roles {
			if slices.Contains(held, r) && !slices.Contains(eff, r) {
				eff = append(eff, r)
			}
		}
	}
	slices.Sort(eff)
	if len(q.roles) > 0 {
		if !slices.ContainsFunc(q.roles, func(r string) bool { return slices.Contains(eff, r) }) {
			return deny("role_required")
		}
	} else if len(eff) == 0 {
		return deny("no_role")
	}
	return answer{allowed: true, roles: strings.Join(eff, ",")}
}

// tenantActive: t exists and it and every ancestor are active.
func tenantActive(s testutil.State, t string) bool {
	for depth := 0; t != "" && depth <= 64; depth++ {
		e, ok := s[tenancy.Tenants][t]
		if !ok || e.(*tenancy.Tenant).Status != tenancy.StatusActive {
			return false
		}
		t = e.(*tenancy.Tenant).Parent
	}
	return true
}

// sample picks n queries over s: half along existing user grants (mostly
// allowed), half random (mostly denied), some with route roles.
func sample(s testutil.State, n int, seed uint64) []query {
	r := rand.New(rand.NewPCG(seed, 99))
	pick := func(c string) string {
		ids := make([]string, 0, len(s[c]))
		for id := range s[c] {
			ids = append(ids, id)
		}
		if len(ids) == 0 {
			return "none"
		}
		slices.Sort(ids)
		return ids[r.IntN(len(ids))]
	}
	var ugs []*tenancy.UserGrant
	for _, e := range s[tenancy.UserGrants] {
		ugs = append(ugs, e.(*tenancy.UserGrant))
	}
	slices.SortFunc(ugs, func(a, b *tenancy.UserGrant) int { return strings.Compare(a.ID, b.ID) })
	out := make([]query, 0, n)
	for i := 0; i < n; i++ {
		var q query
		if i%2 == 0 && len(ugs) > 0 {
			g := ugs[r.IntN(len(ugs))]
			q = query{user: g.User, project: g.Project, tenant: g.Tenant}
		} else {
			q = query{user: pick(tenancy.Users), project: pick(tenancy.Projects), tenant: pick(tenancy.Tenants)}
		}
		switch r.IntN(3) {
		case 0:
			q.roles = []string{worldgen.Roles[r.IntN(len(worldgen.Roles))]}
		case 1:
			q.roles = []string{"reader", "writer"}
		}
		out = append(out, q)
	}
	return out
}

// check asks the sidecar q over gRPC, at least at revision minRev.
func (s *sidecar) check(t *testing.T, q query, minRev uint64) (answer, uint64) {
	t.Helper()
	path := "/t/" + q.tenant + "/api/items"
	ext := map[string]string{"project": q.project}
	if len(q.roles) > 0 {
		ext["roles"] = strings.Join(q.roles, ",")
	}
	req := testutil.CheckRequest(testutil.Request{Path: path, Headers: map[string]string{
		"authorization":            "Bearer " + token(t, q.user),
		"x-gatehouse-min-revision": fmt.Sprint(minRev),
	}, ContextExtensions: ext})
	c, cancel := contextTimeout(t, 20*time.Second)
	defer cancel()
	resp, err := s.client.Check(c, req)
	if err != nil {
		t.Fatalf("check %+v: %v", q, err)
	}
	rev := uint64(resp.GetDynamicMetadata().GetFields()["tenancy_revision"].GetNumberValue())
	return toAnswer(t, resp), rev
}

func toAnswer(t *testing.T, resp *authv3.CheckResponse) answer {
	t.Helper()
	if resp.GetStatus().GetCode() == int32(code.Code_OK) {
		a := answer{allowed: true}
		for _, h := range resp.GetOkResponse().GetHeaders() {
			if h.GetHeader().GetKey() == "x-gatehouse-roles" {
				a.roles = h.GetHeader().GetValue()
			}
		}
		return a
	}
	var body struct{ Reason string }
	_ = json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body)
	return answer{reason: body.Reason}
}

// compareDecisions asks the sidecar every query at the control's current
// revision and compares with the oracle over the control's data.
func compareDecisions(t *testing.T, s *sidecar, a *admin, n int, seed uint64) {
	t.Helper()
	state, rev := a.state(t)
	if v := state.Violations(); len(v) > 0 {
		t.Errorf("the control's data breaks invariants: %s", strings.Join(v[:min(len(v), 5)], "; "))
	}
	s.waitRevision(t, rev, 30*time.Second)
	bad := 0
	allowed := 0
	o := newOracle(state)
	for _, q := range sample(state, n, seed) {
		want := o.decide(q)
		got, at := s.check(t, q, rev)
		if at != rev {
			t.Fatalf("decided at revision %d while the control is at %d (no writes are running)", at, rev)
		}
		if got != want {
			bad++
			if bad <= 5 {
				t.Errorf("%+v at revision %d: sidecar %v, oracle %v", q, rev, got, want)
			}
		}
		if want.allowed {
			allowed++
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d decisions differ from the oracle at revision %d", bad, n, rev)
	}
	t.Logf("%d decisions (%d allowed) match the oracle at revision %d", n, allowed, rev)
}
