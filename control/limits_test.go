package control_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control"
)

// countingBody yields n bytes of '{' (never valid JSON) and counts what was
// read from it.
type countingBody struct {
	left int64
	read atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), b.left))
	for i := range p[:n] {
		p[i] = '{'
	}
	b.left -= int64(n)
	b.read.Add(int64(n))
	return n, nil
}

// TestBodiesOfCallersWithoutRightsAreNotRead: a caller that can make no
// write of the request (no or a bad token, the read-only sync token, a
// user who administers nothing or never writes the collection) is refused
// before a byte of its body is read: large bodies from unprivileged
// tokens cost no memory.
func TestBodiesOfCallersWithoutRightsAreNotRead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	e.must("POST", "/v1/batch", batchOf(
		opPut("users", `{"id":"sam","tenant":"beta","status":"suspended"}`),
		opPut("memberships", `{"id":"m-sam","user":"sam","scope":{"type":"tenant","id":"beta"},"roles":["admin"]}`),
	).body)
	const entity, batch = 1 << 20, 32 << 20 // the default bounds: read in full by a server that reads first
	cases := []struct {
		name, method, path, token string
		size                      int64
		status                    int
	}{
		{"no token", "PUT", "/v1/users/x", "", entity, 401},
		{"bad token", "POST", "/v1/batch", "not-a-token", batch, 401},
		{"untrusted JWT", "POST", "/v1/batch", jwtFor(t, issuerURL, "alice", strangerKey()), batch, 401},
		{"sync token PUT", "PUT", "/v1/users/x", syncToken, entity, 403},
		{"sync token batch", "POST", "/v1/batch", syncToken, batch, 403},
		{"sync token bundle", "PUT", "/v1/bundles/main", syncToken, batch, 403},
		{"tenant admin bundle", "PUT", "/v1/bundles/main", userToken(t, "alice"), batch, 403},
		{"admin of nothing PUT", "PUT", "/v1/users/x", userToken(t, "dave"), entity, 403},
		{"admin of nothing batch", "POST", "/v1/batch", userToken(t, "dave"), batch, 403},
		{"unknown subject batch", "POST", "/v1/batch", userToken(t, "mallory"), batch, 403},
		{"suspended admin batch", "POST", "/v1/batch", userToken(t, "sam"), batch, 403},
		{"tenant admin PUT project", "PUT", "/v1/projects/x", userToken(t, "alice"), entity, 403},
		{"grant admin PUT membership", "PUT", "/v1/memberships/x", userToken(t, "bob"), entity, 403},
		{"bound issuer, other tenant", "POST", "/v1/batch", jwtFor(t, boundIssuerURL, "alice", issuerKey()), batch, 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			body := &countingBody{left: c.size}
			req := httptest.NewRequest(c.method, c.path, body)
			req.ContentLength = c.size
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			rec := httptest.NewRecorder()
			e.srv.Handler().ServeHTTP(rec, req)
			if rec.Code != c.status {
				t.Fatalf("status %d %s, want %d", rec.Code, rec.Body, c.status)
			}
			if n := body.read.Load(); n != 0 {
				t.Fatalf("%d bytes of the body were read before the refusal", n)
			}
		})
	}

	// Over a real socket: the answer comes while the body is still unsent.
	for _, tok := range []string{userToken(t, "dave"), syncToken} {
		status := rawRequest(t, e, "POST", "/v1/batch", tok, batch, nil)
		if status != 403 {
			t.Fatalf("raw batch with an unprivileged token: %d, want 403 before the body is sent", status)
		}
	}
}

// rawRequest sends the headers of a request announcing size bytes of body
// and then only prefix of it, and returns the status of the answer read
// within 5 seconds (0 when none came).
func rawRequest(tb testing.TB, e *env, method, path, token string, size int64, prefix []byte) int {
	tb.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", method, path, token, size)
	if _, err := conn.Write(prefix); err != nil {
		tb.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		tb.Logf("no answer: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestBodyBudget: the bytes of request bodies read and decoded at once are
// bounded across the server; a body that finds no room within
// body_budget_wait is refused with 503 and Retry-After, without being
// read, instead of growing memory; requests without bodies are not held
// up; room comes back when a body's request ends.
func TestBodyBudget(t *testing.T) {
	t.Parallel()
	const limit = 256 << 10
	e := newEnv(t, func(c *control.Config) {
		c.MaxBodyBytes = limit
		c.MaxEntityBytes = 16 << 10
		c.BodyBudgetBytes = limit
		c.BodyBudgetWait = 100 * time.Millisecond
	})
	e.seed()

	// A: an admin batch of the whole budget, sent slowly.
	batch := batchOf(opPut("users", `{"id":"slow","tenant":"acme"}`)).body
	full := []byte(batch + strings.Repeat(" ", limit-len(batch)))
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", adminToken, len(full))
	if _, err := conn.Write(full[:1024]); err != nil {
		t.Fatal(err)
	}

	// B: a small PUT finds no room once A holds the budget.
	var busy response
	eventually(t, 5*time.Second, "a PUT refused as busy", func() bool {
		busy = e.do("PUT", "/v1/users/x", adminToken, `{"id":"x","tenant":"acme"}`)
		return busy.status == http.StatusServiceUnavailable
	})
	if busy.errCode() != control.CodeBusy || busy.header.Get("Retry-After") == "" || !strings.Contains(string(busy.body), "body_budget_bytes") {
		t.Fatalf("busy answer %s (Retry-After %q)", busy, busy.header.Get("Retry-After"))
	}
	// C: another large admin body is refused before it is sent.
	if status := rawRequest(t, e, "POST", "/v1/batch", adminToken, limit, nil); status != http.StatusServiceUnavailable {
		t.Fatalf("a second large body: %d, want 503 before it is sent", status)
	}
	// Requests without a body go on.
	e.must("DELETE", "/v1/user_grants/ug-carol", "")
	if v := e.metric("gatehouse_control_bodies_busy_total", nil); v < 2 {
		t.Fatalf("bodies_busy_total = %v, want at least 2", v)
	}

	// A completes; its room comes back.
	if _, err := conn.Write(full[1024:]); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the slow batch answered %d", resp.StatusCode)
	}
	e.must("PUT", "/v1/users/x", `{"id":"x","tenant":"acme"}`)

	// Chunked bodies reserve the endpoint's bound and are cut at it.
	req, _ := http.NewRequest("PUT", e.base+"/v1/users/y", io.MultiReader(strings.NewReader(`{"id":"y","tenant":"acme"}`), strings.NewReader(strings.Repeat(" ", 20<<10))))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked entity over max_entity_bytes: %d, want 413", r.StatusCode)
	}
	req, _ = http.NewRequest("PUT", e.base+"/v1/users/y", io.MultiReader(strings.NewReader(`{"id":"y","tenant":"acme"}`)))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if r, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 200 {
		t.Fatalf("chunked entity: %d, want 200", r.StatusCode)
	}
	e.must("PUT", "/v1/users/z", `{"id":"z","tenant":"acme"}`) // every reservation was returned
	e.must("POST", "/v1/batch", string(full))
}

func TestBodyLimitsConfig(t *testing.T) {
	t.Parallel()
	var c control.Config
	c.SetDefaults()
	if c.MaxEntityBytes != 1<<20 || c.MaxBodyBytes != 32<<20 || c.BodyBudgetBytes != 64<<20 || c.BodyBudgetWait != 2*time.Second {
		t.Fatalf("defaults: entity %d, body %d, budget %d, wait %v", c.MaxEntityBytes, c.MaxBodyBytes, c.BodyBudgetBytes, c.BodyBudgetWait)
	}
	small := control.Config{MaxBodyBytes: 4096}
	small.SetDefaults()
	if small.MaxEntityBytes != 4096 || small.BodyBudgetBytes != 8192 {
		t.Fatalf("defaults under a small max_body_bytes: entity %d, budget %d", small.MaxEntityBytes, small.BodyBudgetBytes)
	}
	dir := t.TempDir()
	admin := writeFile(t, dir, "admin.token", adminToken)
	cases := map[string]struct {
		edit func(*control.Config)
		want string
	}{
		"entity over body":   {func(c *control.Config) { c.MaxEntityBytes = 2 << 20; c.MaxBodyBytes = 1 << 20 }, "max_entity_bytes: 2097152"},
		"entity too small":   {func(c *control.Config) { c.MaxEntityBytes = 10 }, "max_entity_bytes: 10"},
		"budget under body":  {func(c *control.Config) { c.BodyBudgetBytes = 1 << 20 }, "body_budget_bytes: 1048576"},
		"negative wait":      {func(c *control.Config) { c.BodyBudgetWait = -time.Second }, "body_budget_wait: -1s"},
		"budget under limit": {func(c *control.Config) { c.MaxBodyBytes = 8 << 20; c.BodyBudgetBytes = 4 << 20 }, "body_budget_bytes"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := control.Config{AdminTokenFile: admin, DataDir: filepath.Join(t.TempDir(), "data")}
			c.edit(&cfg)
			_, err := control.New(cfg, nil)
			if !errors.Is(err, control.ErrConfig) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New: %v, want ErrConfig naming %q", err, c.want)
			}
		})
	}
}

// TestDelegatedAdminUnderADeepChain: a delegated administrator's home
// tenant must be active with all its ancestors, the 64th included (the
// check stopped at the 63rd: a suspended root did not stop its admins).
func TestDelegatedAdminUnderADeepChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	o := chainOps("t", 65) // t65 has 64 ancestors, t1 is the root
	o = append(o,
		opPut("users", `{"id":"deep","tenant":"t65"}`),
		opPut("memberships", `{"id":"m-deep","user":"deep","scope":{"type":"tenant","id":"t65"},"roles":["admin"]}`),
	)
	e.must("POST", "/v1/batch", batchOf(o...).body)
	tok := userToken(t, "deep")
	if r := e.do("PUT", "/v1/users/u1", tok, `{"id":"u1","tenant":"t65"}`); r.status != 200 {
		t.Fatalf("the admin of t65 while t1 is active: %s", r)
	}
	e.must("PUT", "/v1/tenants/t1", `{"id":"t1","status":"suspended"}`)
	if r := e.do("PUT", "/v1/users/u2", tok, `{"id":"u2","tenant":"t65"}`); r.status != 403 || !strings.Contains(string(r.body), `\"t1\" is suspended`) {
		t.Fatalf("the admin of t65 under a suspended root: %s, want 403", r)
	}
}
