package control_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/tenancy"
	"github.com/gatehouse-dev/gatehouse/token"
)

const (
	adminToken = "admin-0123456789abcdef"
	syncToken  = "sync-0123456789abcdef"
	issuerURL  = "https://idp.test/"
	// boundIssuerURL's tokens act only for users of tenant beta.
	boundIssuerURL = "https://bound.test/"
	// trustIssuerURL carries roles in its tokens (a tenant-managed IdP): it
	// may act only as data users that name it (SPEC §6 step 2).
	trustIssuerURL = "https://tenant-idp.test/"
)

// issuerKey signs the delegated administrators' tokens; strangerKey is a
// key no issuer trusts.
var (
	issuerKey   = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECKey() })
	strangerKey = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECKey() })
)

func mustECKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// env is a control endpoint on 127.0.0.1:0 over a bbolt file in a temp dir.
type env struct {
	tb   testing.TB
	srv  *control.Server
	reg  *prometheus.Registry
	cfg  control.Config
	base string
	stop func()
}

// newEnv starts a server; edit adjusts the config first.
func newEnv(tb testing.TB, edit func(*control.Config)) *env {
	tb.Helper()
	dir := tb.TempDir()
	cfg := control.Config{
		Addr:           "127.0.0.1:0",
		DataDir:        filepath.Join(dir, "data"),
		AdminTokenFile: writeFile(tb, dir, "admin.token", "  "+adminToken+"\n"),
		SyncTokenFile:  writeFile(tb, dir, "sync.token", syncToken+"\n"),
		Issuers: []token.IssuerConfig{
			{Issuer: issuerURL, Audiences: []string{"api"}, Algorithms: []string{"ES256"}, PublicKeyFile: publicKeyFile(tb, dir)},
			{Issuer: boundIssuerURL, Audiences: []string{"api"}, Algorithms: []string{"ES256"}, PublicKeyFile: publicKeyFile(tb, dir), Tenant: "beta"},
			{Issuer: trustIssuerURL, Audiences: []string{"api"}, Algorithms: []string{"ES256"}, PublicKeyFile: publicKeyFile(tb, dir), TrustTokenRoles: true},
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	return startEnv(tb, cfg)
}

// startEnv starts a server of cfg (a fresh registry) and stops it at
// cleanup.
func startEnv(tb testing.TB, cfg control.Config) *env {
	tb.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	srv, err := control.New(cfg, nil)
	if err != nil {
		tb.Fatalf("control.New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		tb.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	e := &env{tb: tb, srv: srv, reg: reg, cfg: cfg, base: "http://" + srv.Addr().String()}
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("Serve: %v", err)
			}
			if err := srv.Close(); err != nil {
				tb.Errorf("Close: %v", err)
			}
		})
	}
	tb.Cleanup(e.stop)
	return e
}

func writeFile(tb testing.TB, dir, name, content string) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func publicKeyFile(tb testing.TB, dir string) string {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(&issuerKey().PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	return writeFile(tb, dir, "issuer.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
}

// jwtFor mints a valid token of issuer for subject, signed by key.
func jwtFor(tb testing.TB, issuer, subject string, key *ecdsa.PrivateKey) string {
	tb.Helper()
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"iss": issuer, "sub": subject, "aud": "api",
		"iat": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// userToken is a token of the trusted issuer acting as subject.
func userToken(tb testing.TB, subject string) string {
	return jwtFor(tb, issuerURL, subject, issuerKey())
}

// response is an answer, body read.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, bytes.TrimSpace(r.body)) }

// errCode returns the code of an error answer.
func (r response) errCode() string {
	var e struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Code
}

// do sends a request with token (none when "") and body (none when "").
func (e *env) do(method, path, token, body string, header ...string) response {
	e.tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.tb.Fatalf("%s %s: read: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// must sends an admin request that must answer 200, and returns the answer.
func (e *env) must(method, path, body string) response {
	e.tb.Helper()
	r := e.do(method, path, adminToken, body)
	if r.status != http.StatusOK {
		e.tb.Fatalf("%s %s: %s", method, path, r)
	}
	return r
}

// revisionOf decodes {"revision": N, ...}.
func revisionOf(tb testing.TB, r response) uint64 {
	tb.Helper()
	var v struct {
		Revision *uint64 `json:"revision"`
	}
	if err := json.Unmarshal(r.body, &v); err != nil || v.Revision == nil {
		tb.Fatalf("no revision in %s (%v)", r, err)
	}
	return *v.Revision
}

// metric returns the value of a counter or gauge with the given labels.
func (e *env) metric(name string, labels map[string]string) float64 {
	e.tb.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

// eventually polls cond every 5ms for up to timeout.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("not within %v: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// worldBatch is the seeds' shape: a service provider (acme) with two
// customer tenants, a project granted to both, an external user (alice of
// alpha, authorized in beta), a separate tenant (gamma), and delegated
// administrators: carol (tenant admin of acme, the service provider),
// alice (tenant admin of alpha), bob (project-grant admin of pg-beta),
// erin (tenant admin of beta), dave (a viewer of gamma: no rights).
const worldBatch = `{"ops":[
 {"op":"put","collection":"tenants","value":{"id":"acme","name":"ACME","kind":"service_provider"}},
 {"op":"put","collection":"tenants","value":{"id":"alpha","name":"Alpha","parent":"acme","kind":"customer"}},
 {"op":"put","collection":"tenants","value":{"id":"beta","name":"Beta","parent":"acme","kind":"customer"}},
 {"op":"put","collection":"tenants","value":{"id":"gamma","name":"Gamma","kind":"partner"}},
 {"op":"put","collection":"users","value":{"id":"alice","tenant":"alpha"}},
 {"op":"put","collection":"users","value":{"id":"bob","tenant":"beta"}},
 {"op":"put","collection":"users","value":{"id":"carol","tenant":"acme"}},
 {"op":"put","collection":"users","value":{"id":"dave","tenant":"gamma"}},
 {"op":"put","collection":"users","value":{"id":"erin","tenant":"beta"}},
 {"op":"put","collection":"projects","value":{"id":"timekeeping","owner":"acme","roles":["accountant","developer","admin"]}},
 {"op":"put","collection":"project_grants","value":{"id":"pg-alpha","project":"timekeeping","tenant":"alpha","roles":["accountant","developer"]}},
 {"op":"put","collection":"project_grants","value":{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["accountant","developer"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-bob","user":"bob","project":"timekeeping","tenant":"beta","roles":["developer"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-alice-beta","user":"alice","project":"timekeeping","tenant":"beta","roles":["accountant"]}},
 {"op":"put","collection":"user_grants","value":{"id":"ug-carol","user":"carol","project":"timekeeping","tenant":"acme","roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m-carol","user":"carol","scope":{"type":"tenant","id":"acme"},"roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m-alice","user":"alice","scope":{"type":"tenant","id":"alpha"},"roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m-bob","user":"bob","scope":{"type":"project_grant","id":"pg-beta"},"roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m-erin","user":"erin","scope":{"type":"tenant","id":"beta"},"roles":["admin"]}},
 {"op":"put","collection":"memberships","value":{"id":"m-dave","user":"dave","scope":{"type":"tenant","id":"gamma"},"roles":["viewer"]}}
]}`

// seed writes the world in one batch and returns its revision.
func (e *env) seed() uint64 {
	e.tb.Helper()
	return revisionOf(e.tb, e.must("POST", "/v1/batch", worldBatch))
}

func TestSeedReadAndList(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var last uint64
	next := func(r response) {
		t.Helper()
		rev := revisionOf(t, r)
		if rev <= last {
			t.Fatalf("revision %d after %d: not increasing", rev, last)
		}
		last = rev
	}
	// PUTs one by one, then a batch depending on them.
	next(e.must("PUT", "/v1/tenants/acme", `{"id":"acme","name":"ACME","kind":"service_provider"}`))
	next(e.must("PUT", "/v1/tenants/alpha", `{"id":"alpha","name":"Alpha","parent":"acme"}`))
	put := e.must("PUT", "/v1/users/u3", `{"id":"u3","tenant":"alpha","labels":{"team":"ops"}}`)
	next(put)
	var ans struct {
		Value map[string]any `json:"value"`
	}
	if err := json.Unmarshal(put.body, &ans); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"id": "u3", "tenant": "alpha", "kind": "human", "status": "active", "labels": map[string]any{"team": "ops"}}
	if !reflect.DeepEqual(ans.Value, want) {
		t.Fatalf("PUT value = %v, want the stored entity with defaults %v", ans.Value, want)
	}
	batch := e.must("POST", "/v1/batch", `{"ops":[
	 {"op":"put","collection":"users","value":{"id":"u1","tenant":"alpha"}},
	 {"op":"put","collection":"users","value":{"id":"u5","tenant":"acme","kind":"machine"}},
	 {"op":"put","collection":"users","value":{"id":"u2","tenant":"acme"}},
	 {"op":"put","collection":"users","value":{"id":"u4","tenant":"alpha","status":"suspended"}}]}`)
	next(batch)
	if got := string(bytes.TrimSpace(batch.body)); got != fmt.Sprintf(`{"revision":%d,"changes":4}`, last) {
		t.Fatalf("batch answer %s", got)
	}

	// Read back.
	g := e.must("GET", "/v1/users/u5", "")
	if h := g.header.Get(control.RevisionHeader); h != strconv.FormatUint(last, 10) {
		t.Fatalf("%s = %q, want %d", control.RevisionHeader, h, last)
	}
	var u5 tenancy.User
	if err := json.Unmarshal(g.body, &u5); err != nil || u5.Kind != "machine" || u5.Tenant != "acme" {
		t.Fatalf("GET users/u5 = %s (%v)", g.body, err)
	}
	if r := e.do("GET", "/v1/users/nobody", adminToken, ""); r.status != 404 || r.errCode() != "not_found" {
		t.Fatalf("GET unknown id = %s, want 404 not_found", r)
	}

	// Page through 5 users, 2 at a time.
	type page struct {
		Items []struct {
			ID string `json:"id"`
		} `json:"items"`
		Next     string `json:"next"`
		Revision uint64 `json:"revision"`
	}
	var ids []string
	var nexts []string
	after := ""
	for range 5 {
		var p page
		if err := json.Unmarshal(e.must("GET", "/v1/users?limit=2&after="+after, "").body, &p); err != nil {
			t.Fatal(err)
		}
		if p.Revision != last {
			t.Fatalf("list revision %d, want %d", p.Revision, last)
		}
		for _, it := range p.Items {
			ids = append(ids, it.ID)
		}
		nexts = append(nexts, p.Next)
		if p.Next == "" {
			break
		}
		after = p.Next
	}
	if want := []string{"u1", "u2", "u3", "u4", "u5"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("paged ids %v, want %v", ids, want)
	}
	if want := []string{"u2", "u4", ""}; !reflect.DeepEqual(nexts, want) {
		t.Fatalf("next cursors %v, want %v", nexts, want)
	}
	var all page
	_ = json.Unmarshal(e.must("GET", "/v1/users", "").body, &all)
	if len(all.Items) != 5 || all.Next != "" {
		t.Fatalf("default page: %d items, next %q", len(all.Items), all.Next)
	}
	var empty page
	if r := e.must("GET", "/v1/memberships", ""); json.Unmarshal(r.body, &empty) != nil || !strings.Contains(string(r.body), `"items":[]`) {
		t.Fatalf("empty collection = %s", r.body)
	}

	// Deletes answer the number of changes, cascades included: deleting
	// pg-beta takes its 2 user grants and the 2 memberships scoped to it.
	next(e.must("POST", "/v1/batch", worldBatch))
	next(e.must("PUT", "/v1/memberships/m-bob2", `{"id":"m-bob2","user":"bob","scope":{"type":"project_grant","id":"pg-beta"},"roles":["viewer"]}`))
	del := e.must("DELETE", "/v1/project_grants/pg-beta", "")
	next(del)
	if got := string(bytes.TrimSpace(del.body)); got != fmt.Sprintf(`{"revision":%d,"changes":5}`, last) {
		t.Fatalf("delete answer %s: want the grant, 2 user grants, 2 memberships", got)
	}
	next(e.must("DELETE", "/v1/users/u1", ""))
	if e.srv.Revision() != last {
		t.Fatalf("Server.Revision() = %d, want %d", e.srv.Revision(), last)
	}
	if v := e.metric("gatehouse_control_revision", nil); v != float64(last) {
		t.Fatalf("revision gauge %v, want %d", v, last)
	}
}

func TestRefusedWritesLeaveTheRevision(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.MaxBodyBytes = 1 << 20 })
	e.seed()
	bigOps := make([]string, tenancy.MaxBatch+1)
	for i := range bigOps {
		bigOps[i] = `{"op":"delete","collection":"users","id":"x"}`
	}
	cases := map[string]struct {
		method, path, body string
		status             int
		code               string
		msg                string
	}{
		"bad json body":          {"PUT", "/v1/users/x", `{"id":"x",`, 400, "malformed", ""},
		"unknown field":          {"PUT", "/v1/users/x", `{"id":"x","tenant":"acme","colour":"red"}`, 422, "invalid", "colour"},
		"wrong field type":       {"PUT", "/v1/projects/p", `{"id":"p","owner":"acme","roles":"admin"}`, 422, "invalid", "roles"},
		"bad id in path":         {"PUT", "/v1/users/a%20b", `{"id":"a b","tenant":"acme"}`, 400, "malformed", "not a valid id"},
		"bad id in body":         {"PUT", "/v1/users/x", `{"id":"x/y","tenant":"acme"}`, 422, "invalid", ""},
		"id mismatch":            {"PUT", "/v1/users/x", `{"id":"y","tenant":"acme"}`, 422, "invalid", "differ"},
		"dangling reference":     {"PUT", "/v1/users/x", `{"id":"x","tenant":"nowhere"}`, 409, "conflict", "nowhere"},
		"grant role not held":    {"PUT", "/v1/project_grants/pg-gamma", `{"id":"pg-gamma","project":"timekeeping","tenant":"gamma","roles":["root"]}`, 409, "conflict", "root"},
		"user grant role":        {"PUT", "/v1/user_grants/ug-x", `{"id":"ug-x","user":"bob","project":"timekeeping","tenant":"beta","roles":["admin"]}`, 409, "conflict", "not held"},
		"grant to owner":         {"PUT", "/v1/project_grants/pg-x", `{"id":"pg-x","project":"timekeeping","tenant":"acme","roles":[]}`, 409, "conflict", "never granted to its owner"},
		"cycle":                  {"PUT", "/v1/tenants/acme", `{"id":"acme","parent":"alpha"}`, 409, "conflict", "cycle"},
		"delete with dependents": {"DELETE", "/v1/tenants/beta", "", 409, "conflict", "cascade"},
		"delete unknown id":      {"DELETE", "/v1/users/nobody", "", 404, "not_found", ""},
		"bad cascade":            {"DELETE", "/v1/tenants/beta?cascade=maybe", "", 400, "malformed", "cascade"},
		"unknown collection":     {"PUT", "/v1/widgets/w", `{"id":"w"}`, 404, "not_found", "widgets"},
		"unknown collection get": {"GET", "/v1/widgets", "", 404, "not_found", "widgets"},
		"batch over the limit":   {"POST", "/v1/batch", `{"ops":[` + strings.Join(bigOps, ",") + `]}`, 400, "malformed", "at most 10000"},
		"batch not json":         {"POST", "/v1/batch", `{"ops":[`, 400, "malformed", ""},
		"batch unknown field":    {"POST", "/v1/batch", `{"ops":[],"atomic":true}`, 400, "malformed", "atomic"},
		"batch empty":            {"POST", "/v1/batch", `{"ops":[]}`, 400, "malformed", "no operations"},
		"batch later op fails":   {"POST", "/v1/batch", `{"ops":[{"op":"put","collection":"users","value":{"id":"new","tenant":"acme"}},{"op":"put","collection":"users","value":{"id":"new2","tenant":"missing"}}]}`, 409, "conflict", "ops[1]"},
		"batch bad op":           {"POST", "/v1/batch", `{"ops":[{"op":"upsert","collection":"users","value":{"id":"new","tenant":"acme"}}]}`, 400, "malformed", "upsert"},
		"body over max":          {"PUT", "/v1/users/x", `{"id":"x","tenant":"acme","labels":{"a":"` + strings.Repeat("z", 1<<20) + `"}}`, 413, "too_large", "max_entity_bytes"},
		"batch over max":         {"POST", "/v1/batch", `{"ops":[],"x":"` + strings.Repeat("z", 1<<20) + `"}`, 413, "too_large", "max_body_bytes"},
		"bad limit":              {"GET", "/v1/users?limit=0", "", 400, "malformed", "limit"},
		"limit too big":          {"GET", "/v1/users?limit=1001", "", 400, "malformed", "limit"},
		"bad after":              {"GET", "/v1/users?after=a%20b", "", 400, "malformed", "after"},
		"unknown endpoint":       {"GET", "/v2/users", "", 404, "not_found", ""},
	}
	before := e.srv.Revision()
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			r := e.do(c.method, c.path, adminToken, c.body)
			if r.status != c.status || r.errCode() != c.code || !strings.Contains(string(r.body), c.msg) {
				t.Fatalf("got %s, want %d %s containing %q", r, c.status, c.code, c.msg)
			}
			if got := e.srv.Revision(); got != before {
				t.Fatalf("revision %d after a refused write, want %d", got, before)
			}
		})
	}
	g := e.must("GET", "/v1/users/bob", "")
	if h := g.header.Get(control.RevisionHeader); h != strconv.FormatUint(before, 10) {
		t.Fatalf("stored revision %s, want %d", h, before)
	}
	if r := e.do("GET", "/v1/users/new", adminToken, ""); r.status != 404 {
		t.Fatalf("a refused batch left users/new: %s", r)
	}
	if v := e.metric("gatehouse_control_writes_total", map[string]string{"result": "refused"}); v < 15 {
		t.Fatalf("refused writes counted %v", v)
	}
}

func TestRestartKeepsDataRevisionAndEpoch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	rev := revisionOf(t, e.must("DELETE", "/v1/user_grants/ug-bob", ""))
	epoch := e.srv.Epoch()
	doc := e.must("GET", "/v1/users/alice", "").body

	// A second process on the same file is refused while the first runs.
	second := e.cfg
	second.Registerer = nil
	if _, err := control.New(second, nil); !errors.Is(err, control.ErrInUse) {
		t.Fatalf("second New on the same data_dir: %v, want ErrInUse", err)
	}
	e.stop()

	e2 := startEnv(t, e.cfg)
	if e2.srv.Revision() != rev || e2.srv.Epoch() != epoch {
		t.Fatalf("after restart revision %d epoch %q, want %d %q", e2.srv.Revision(), e2.srv.Epoch(), rev, epoch)
	}
	if got := e2.must("GET", "/v1/users/alice", "").body; !bytes.Equal(got, doc) {
		t.Fatalf("users/alice after restart %s, want %s", got, doc)
	}
	if r := e2.do("GET", "/v1/user_grants/ug-bob", adminToken, ""); r.status != 404 {
		t.Fatalf("deleted grant after restart: %s", r)
	}
	if got := revisionOf(t, e2.must("PUT", "/v1/users/zed", `{"id":"zed","tenant":"gamma"}`)); got != rev+1 {
		t.Fatalf("first write after restart at revision %d, want %d", got, rev+1)
	}
	// The history survives too: a follower at rev-1 resumes.
	lines := readLines(t, e2, "/v1/sync/changes?since="+strconv.FormatUint(rev-1, 10)+"&epoch="+epoch, syncToken, 3)
	if lines[1].Revision != rev || lines[2].Revision != rev+1 {
		t.Fatalf("resumed revisions %d, %d; want %d, %d", lines[1].Revision, lines[2].Revision, rev, rev+1)
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := writeFile(t, dir, "empty.token", " \n\t")
	admin := writeFile(t, dir, "admin.token", adminToken)
	sameAsAdmin := writeFile(t, dir, "sync.token", "\n"+adminToken+"\n")
	cases := map[string]struct {
		cfg  control.Config
		want string
	}{
		"no admin token file":  {control.Config{}, "admin_token_file: required"},
		"missing token file":   {control.Config{AdminTokenFile: filepath.Join(dir, "nope")}, "admin_token_file"},
		"empty token":          {control.Config{AdminTokenFile: empty}, "holds no token"},
		"sync token = admin":   {control.Config{AdminTokenFile: admin, SyncTokenFile: sameAsAdmin}, "sync_token_file"},
		"bad addr":             {control.Config{AdminTokenFile: admin, Addr: "8282"}, `addr: "8282"`},
		"bad history":          {control.Config{AdminTokenFile: admin, History: -1}, "history: -1"},
		"bad heartbeat":        {control.Config{AdminTokenFile: admin, Heartbeat: -time.Second}, "heartbeat: -1s"},
		"issuer without a key": {control.Config{AdminTokenFile: admin, Issuers: []token.IssuerConfig{{Issuer: "https://x/"}}}, "no key source"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c.cfg.DataDir = filepath.Join(t.TempDir(), "data")
			_, err := control.New(c.cfg, nil)
			if !errors.Is(err, control.ErrConfig) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New: %v, want ErrConfig naming %q", err, c.want)
			}
		})
	}
	var c control.Config
	c.SetDefaults()
	if c.Addr != "127.0.0.1:8282" || c.History != 100000 || c.Heartbeat != 5*time.Second || c.MaxBodyBytes != 32<<20 || c.DataDir != "./var/control" {
		t.Fatalf("defaults %+v", c)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	if r := e.do("GET", "/healthz", "", ""); r.status != 200 {
		t.Fatalf("healthz %s", r)
	}
	r := e.do("GET", "/metrics", "", "")
	for _, want := range []string{`gatehouse_control_revision 1`, `gatehouse_control_writes_total{result="ok"} 1`, `gatehouse_control_feed_streams{kind="changes"} 0`} {
		if !strings.Contains(string(r.body), want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
}
