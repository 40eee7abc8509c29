package authzen_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/authzen"
	"github.com/gatehouse-dev/gatehouse/internal/netx"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

const token = "pep-secret-token"

// policy answers by the action: "yes" allows, "ctx" allows with a context,
// "bad" is a decision of the wrong shape, "boom" an evaluation error;
// anything else is undefined (a deny). Its searches list fixed entities.
const policy = `package authzen

allow := true if input.action.name == "yes"

allow := {"decision": true, "context": {"why": input.context.why}} if input.action.name == "ctx"

allow := "maybe" if input.action.name == "bad"

allow := x if {
	input.action.name == "boom"
	some x in [1, 2] # two values of a complete rule: an evaluation error
}

search_subjects contains {"type": "user", "id": sprintf("u%02d", [i])} if some i in numbers.range(1, 25)

search_resources contains {"type": input.resource.type, "id": "r1"}

search_actions contains {"name": "yes"}
`

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type fixture struct {
	client *http.Client
	base   string
	ten    *testutil.Tenancy
}

// start serves the API on 127.0.0.1:0 (tlsCfg optional) over a real
// engine compiling policy, with tenancy data at revision 3.
func start(t *testing.T, cfg authzen.Config, tlsCfg netx.TLSConfig, client *http.Client) *fixture {
	t.Helper()
	dir := testutil.PolicyDir(t, map[string]string{"authzen.rego": policy, "envoy.rego": "package envoy.authz\n\ndefault allow := false\n"})
	ten := testutil.NewTenancy(3, nil)
	e := authz.New(authz.Config{MinRevisionWait: 50 * time.Millisecond}, nil, ten, discard())
	src, err := authz.LoadDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := e.Compile(src, authz.DefaultDecision)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPolicy(ps)
	if cfg.TokenFile == "" && !cfg.ClientCerts {
		cfg.TokenFile = filepath.Join(t.TempDir(), "token")
		testutil.WriteFile(t, cfg.TokenFile, token+"\n")
	}
	srv, err := authzen.New(cfg, e, discard())
	if err != nil {
		t.Fatal(err)
	}
	l := serve(t, srv, "127.0.0.1:0", tlsCfg)
	scheme := "http://"
	if tlsCfg.Enabled() {
		scheme = "https://"
	}
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	t.Cleanup(client.CloseIdleConnections)
	return &fixture{client: client, base: scheme + l.Addr(), ten: ten}
}

// serve serves srv on addr until the test ends, and then checks that Serve
// returned no error.
func serve(t *testing.T, srv *authzen.Server, addr string, tlsCfg netx.TLSConfig) *authzen.Listener {
	t.Helper()
	l, err := authzen.NewListener(srv, addr, tlsCfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return l
}

func (f *fixture) post(t *testing.T, path, body string, hdr map[string]string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: not JSON: %q", path, b)
	}
	return resp.StatusCode, resp.Header, out
}

func ev(action string) string {
	return `{"subject":{"type":"user","id":"a"},"action":{"name":"` + action + `"},"resource":{"type":"r","id":"1"},"context":{"why":"w"}}`
}

func TestEvaluation(t *testing.T) {
	t.Parallel()
	f := start(t, authzen.Config{}, netx.TLSConfig{}, nil)
	cases := map[string]struct {
		body   string
		hdr    map[string]string
		status int
		want   any // decision, or the error code
	}{
		"allow":                {ev("yes"), nil, 200, true},
		"undefined is a deny":  {ev("no"), nil, 200, false},
		"policy context":       {ev("ctx"), nil, 200, true},
		"wrong shape":          {ev("bad"), nil, 500, "internal"},
		"evaluation error":     {ev("boom"), nil, 500, "internal"},
		"properties not obj":   {`{"subject":{"type":"user","id":"a","properties":[1]},"action":{"name":"yes"},"resource":{"type":"r","id":"1"}}`, nil, 400, "bad_request"},
		"context not object":   {`{"subject":{"type":"user","id":"a"},"action":{"name":"yes"},"resource":{"type":"r","id":"1"},"context":[]}`, nil, 400, "bad_request"},
		"empty id":             {`{"subject":{"type":"user","id":""},"action":{"name":"yes"},"resource":{"type":"r","id":"1"}}`, nil, 400, "bad_request"},
		"two objects":          {ev("yes") + ev("yes"), nil, 400, "bad_request"},
		"array body":           {`[]`, nil, 400, "bad_request"},
		"content type charset": {ev("yes"), map[string]string{"Content-Type": "application/json; charset=utf-8"}, 200, true},
		"min revision reached": {ev("yes"), map[string]string{"X-Gatehouse-Min-Revision": "3"}, 200, true},
		"min revision later":   {ev("yes"), map[string]string{"X-Gatehouse-Min-Revision": "9"}, 429, "stale"},
		"min revision bad":     {ev("yes"), map[string]string{"X-Gatehouse-Min-Revision": "x"}, 400, "bad_request"},
		"too large":            {`{"subject":{"type":"user","id":"` + strings.Repeat("a", 2<<20) + `"}}`, nil, 413, "request_too_large"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			code, hdr, out := f.post(t, authzen.PathEvaluation, c.body, mergeHdr(c.hdr, "X-Request-ID", name))
			if code != c.status {
				t.Fatalf("status %d, want %d: %v", code, c.status, out)
			}
			if hdr.Get("X-Request-ID") != name {
				t.Errorf("X-Request-ID %q not echoed", hdr.Get("X-Request-ID"))
			}
			if c.status != 200 {
				if out["error"] != c.want {
					t.Errorf("error %v, want %v", out["error"], c.want)
				}
				return
			}
			if out["decision"] != c.want {
				t.Errorf("decision %v, want %v", out["decision"], c.want)
			}
			gh := out["context"].(map[string]any)["gatehouse"].(map[string]any)
			if gh["tenancy_revision"] != 3.0 || gh["policy_revision"] == "" || gh["decision_id"] == "" {
				t.Errorf("context.gatehouse %v", gh)
			}
			if name == "policy context" && out["context"].(map[string]any)["why"] != "w" {
				t.Errorf("policy context lost: %v", out["context"])
			}
		})
	}
}

func mergeHdr(h map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for a, b := range h {
		out[a] = b
	}
	return out
}

// A batch item that fails (a wrong shape, an evaluation error, a missing
// field) is a deny carrying the error; the others are answered.
func TestEvaluationsItemErrorsAreDenies(t *testing.T) {
	t.Parallel()
	f := start(t, authzen.Config{MaxEvaluations: 4}, netx.TLSConfig{}, nil)
	body := `{"subject":{"type":"user","id":"a"},"resource":{"type":"r","id":"1"},"evaluations":[
		{"action":{"name":"yes"}},{"action":{"name":"bad"}},{"action":{"name":"boom"}},{"subject":{"type":"user"},"action":{"name":"yes"}}]}`
	code, _, out := f.post(t, authzen.PathEvaluations, body, nil)
	if code != 200 {
		t.Fatalf("status %d: %v", code, out)
	}
	got := out["evaluations"].([]any)
	want := []bool{true, false, false, true} // the last item's subject lacks its id: taken from the default
	for i, w := range want {
		if d := got[i].(map[string]any)["decision"]; d != w {
			t.Errorf("item %d: %v, want %v", i, got[i], w)
		}
	}
	if _, ok := got[1].(map[string]any)["context"].(map[string]any)["error"]; !ok {
		t.Errorf("item 1 carries no error: %v", got[1])
	}
	over := `{"subject":{"type":"user","id":"a"},"resource":{"type":"r","id":"1"},"evaluations":[{},{},{},{},{}]}`
	if code, _, _ := f.post(t, authzen.PathEvaluations, over, nil); code != 400 {
		t.Errorf("5 evaluations over a bound of 4: %d, want 400", code)
	}
}

// Paging walks every result once, whatever the page size; a token that
// this server did not issue is a 400.
func TestSearchPaging(t *testing.T) {
	t.Parallel()
	f := start(t, authzen.Config{MaxPageSize: 10}, netx.TLSConfig{}, nil)
	for _, limit := range []int{0, 1, 3, 7, 10, 24, 100} {
		var ids []string
		tok := ""
		for range 30 {
			body := `{"subject":{"type":"user"},"action":{"name":"x"},"resource":{"type":"r","id":"1"},"page":{"limit":` + itoa(limit) + `,"token":"` + tok + `"}}`
			code, _, out := f.post(t, authzen.PathSearchSubject, body, nil)
			if code != 200 {
				t.Fatalf("limit %d: status %d %v", limit, code, out)
			}
			page := out["page"].(map[string]any)
			if page["total"] != 25.0 {
				t.Errorf("total %v", page["total"])
			}
			for _, r := range out["results"].([]any) {
				ids = append(ids, r.(map[string]any)["id"].(string))
			}
			if tok = page["next_token"].(string); tok == "" {
				break
			}
		}
		if len(ids) != 25 || ids[0] != "u01" || ids[24] != "u25" {
			t.Errorf("limit %d: paged %v", limit, ids)
		}
	}
	for name, page := range map[string]string{
		"bad token": `{"token":"%%%"}`, "negative": `{"limit":-1}`, "fraction": `{"limit":1.5}`, "string": `{"limit":"1"}`, "not object": `[]`,
	} {
		body := `{"subject":{"type":"user"},"action":{"name":"x"},"resource":{"type":"r","id":"1"},"page":` + page + `}`
		if code, _, _ := f.post(t, authzen.PathSearchSubject, body, nil); code != 400 {
			t.Errorf("%s: %d, want 400", name, code)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// PEP authentication: the bearer token, a client certificate, or both.
func TestPEPAuthentication(t *testing.T) {
	t.Parallel()
	ca := testutil.NewCA(t)
	srvCert, srvKey, _ := ca.Issue(t, "127.0.0.1", true)
	_, _, clientPair := ca.Issue(t, "pep", false)
	other := testutil.NewCA(t)
	_, _, strangerPair := other.Issue(t, "stranger", false)
	tlsCfg := netx.TLSConfig{CertFile: srvCert, KeyFile: srvKey, ClientCAFile: ca.CertFile}
	clientWith := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: certs}}}
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	testutil.WriteFile(t, tokenFile, token)

	t.Run("mtls only", func(t *testing.T) {
		f := start(t, authzen.Config{ClientCerts: true}, tlsCfg, clientWith(clientPair))
		if code, _, out := f.post(t, authzen.PathEvaluation, ev("yes"), map[string]string{"Authorization": ""}); code != 200 {
			t.Errorf("with a client certificate: %d %v", code, out)
		}
		for name, c := range map[string]*http.Client{"no certificate": clientWith(), "another CA": clientWith(strangerPair)} {
			req, _ := http.NewRequest(http.MethodPost, f.base+authzen.PathEvaluation, strings.NewReader(ev("yes")))
			req.Header.Set("Content-Type", "application/json")
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
				t.Errorf("%s: answered %d, want the handshake refused", name, resp.StatusCode)
			}
		}
	})
	t.Run("token and mtls", func(t *testing.T) {
		f := start(t, authzen.Config{ClientCerts: true, TokenFile: tokenFile}, tlsCfg, clientWith(clientPair))
		if code, _, _ := f.post(t, authzen.PathEvaluation, ev("yes"), nil); code != 200 {
			t.Errorf("both: %d", code)
		}
		if code, _, _ := f.post(t, authzen.PathEvaluation, ev("yes"), map[string]string{"Authorization": "Bearer nope"}); code != 401 {
			t.Errorf("certificate without the token: %d, want 401", code)
		}
	})
	t.Run("token", func(t *testing.T) {
		f := start(t, authzen.Config{TokenFile: tokenFile}, netx.TLSConfig{}, nil)
		for name, c := range map[string]struct {
			auth string
			want int
		}{
			"right": {"Bearer " + token, 200}, "scheme case": {"bEaReR " + token, 200},
			"missing": {"", 401}, "wrong": {"Bearer " + token + "x", 401}, "shorter": {"Bearer " + token[:5], 401},
			"basic": {"Basic " + token, 401}, "bare": {token, 401},
		} {
			if code, _, _ := f.post(t, authzen.PathEvaluation, ev("yes"), map[string]string{"Authorization": c.auth}); code != c.want {
				t.Errorf("%s: %d, want %d", name, code, c.want)
			}
		}
	})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		cfg  authzen.Config
		addr string
		want string
	}{
		"off":            {authzen.Config{}, "", ""},
		"no auth":        {authzen.Config{}, "127.0.0.1:9193", "needs PEP authentication"},
		"bad addr":       {authzen.Config{TokenFile: "t"}, "9193", "listen.authzen"},
		"bad base url":   {authzen.Config{TokenFile: "t", BaseURL: "pdp.example.com"}, "127.0.0.1:1", "authzen.base_url"},
		"bad decision":   {authzen.Config{TokenFile: "t", Decision: "a//b"}, "127.0.0.1:1", "policies.authzen_decision"},
		"negative pages": {authzen.Config{TokenFile: "t", MaxPageSize: -1}, "127.0.0.1:1", "authzen.max_page_size"},
		"mtls":           {authzen.Config{ClientCerts: true}, "unix:///tmp/a.sock", ""},
	}
	for name, c := range cases {
		err := c.cfg.ValidateIfServed(c.addr)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error naming %q", name, err, c.want)
		}
	}
	if _, err := authzen.New(authzen.Config{TokenFile: filepath.Join(t.TempDir(), "missing")}, nil, discard()); err == nil {
		t.Error("a missing token file is accepted")
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := authzen.New(authzen.Config{TokenFile: empty}, nil, discard()); err == nil {
		t.Error("an empty token is accepted")
	}
}

// The listener serves a Unix socket as well.
func TestUnixSocket(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "az")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	tokenFile := filepath.Join(dir, "token")
	testutil.WriteFile(t, tokenFile, token)
	e := authz.New(authz.Config{}, nil, nil, discard())
	srv, err := authzen.New(authzen.Config{TokenFile: tokenFile}, e, discard())
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "a.sock")
	serve(t, srv, "unix://"+sock, netx.TLSConfig{})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	f := &fixture{client: c, base: "http://pdp"}
	// no policy yet: the sidecar cannot decide (503), never a decision
	if code, _, out := f.post(t, authzen.PathEvaluation, ev("yes"), nil); code != 503 || out["error"] != "unavailable" {
		t.Errorf("not ready: %d %v", code, out)
	}
}
