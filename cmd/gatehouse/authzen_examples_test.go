package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// authzenServer is `gatehouse serve --config DIR/gatehouse.yaml` running
// in-process with its listeners moved to Unix sockets (the example's TCP
// ports may be taken), and a client of its AuthZEN listener.
type authzenServer struct {
	client *http.Client
	base   string
	token  string
}

func startExample(t *testing.T, dir string) *authzenServer {
	t.Helper()
	sock, err := os.MkdirTemp("", "gh-az")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr testutil.LogBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", filepath.Join(dir, "gatehouse.yaml"),
			"--grpc-addr", "unix://" + filepath.Join(sock, "g.sock"),
			"--http-addr", "unix://" + filepath.Join(sock, "h.sock"),
			"--ops-addr", "unix://" + filepath.Join(sock, "o.sock"),
			"--authzen-addr", "unix://" + filepath.Join(sock, "a.sock"),
		}, &stdout, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop")
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr.String())
		}
	})
	path := filepath.Join(sock, "a.sock")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	t.Cleanup(client.CloseIdleConnections)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			break
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited with %d:\n%s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the AuthZEN listener did not open:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "pep.token"))
	if err != nil {
		t.Fatal(err)
	}
	return &authzenServer{client: client, base: "http://authzen", token: strings.TrimSpace(string(tok))}
}

// call sends one request; body "" sends none. It returns the status, the
// response and the decoded JSON body (nil when not JSON).
func (s *authzenServer) call(t *testing.T, method, path, body string, hdr map[string]string) (int, *http.Response, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, resp, out
}

// The Todo interop scenario: its 40 evaluations and 3 batches (the
// scenario writes a batch's items as an object keyed "1", "2": sent here
// as the 1.0 array in key order) against the real listener.
func TestAuthZENTodoScenario(t *testing.T) {
	srv := startExample(t, filepath.Join("..", "..", "examples", "authzen-todo"))
	raw, err := os.ReadFile(filepath.Join("..", "..", "examples", "authzen-todo", "decisions-1.1-preview.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vectors struct {
		Evaluation []struct {
			Request  json.RawMessage `json:"request"`
			Expected bool            `json:"expected"`
		} `json:"evaluation"`
		Evaluations []struct {
			Request  map[string]any                     `json:"request"`
			Expected map[string]struct{ Decision bool } `json:"expected"`
		} `json:"evaluations"`
	}
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatal(err)
	}
	if len(vectors.Evaluation) != 40 || len(vectors.Evaluations) != 3 {
		t.Fatalf("%d evaluations and %d batches, want 40 and 3", len(vectors.Evaluation), len(vectors.Evaluations))
	}
	for i, c := range vectors.Evaluation {
		code, _, out := srv.call(t, http.MethodPost, "/access/v1/evaluation", string(c.Request), nil)
		if code != 200 || out["decision"] != c.Expected {
			t.Errorf("evaluation %d %s: status %d, answer %v, want decision %v", i, c.Request, code, out, c.Expected)
		}
	}
	for i, c := range vectors.Evaluations {
		items := c.Request["evaluations"].(map[string]any)
		keys := make([]string, 0, len(items))
		for k := range items {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		req := map[string]any{}
		for k, v := range c.Request {
			req[k] = v
		}
		list := make([]any, 0, len(keys))
		for _, k := range keys {
			list = append(list, items[k])
		}
		req["evaluations"] = list
		body, _ := json.Marshal(req)
		code, _, out := srv.call(t, http.MethodPost, "/access/v1/evaluations", string(body), nil)
		got, _ := out["evaluations"].([]any)
		if code != 200 || len(got) != len(keys) {
			t.Fatalf("batch %d: status %d, answer %v", i, code, out)
		}
		for j, k := range keys {
			if d := got[j].(map[string]any)["decision"]; d != c.Expected[k].Decision {
				t.Errorf("batch %d item %s: decision %v, want %v", i, k, d, c.Expected[k].Decision)
			}
		}
	}
}

// certCase is one test of the certification scenario (its section id).
type certCase struct {
	id     string
	path   string
	body   string
	hdr    map[string]string
	status int
	check  func(t *testing.T, out map[string]any, resp *http.Response)
}

func decisionIs(want bool) func(*testing.T, map[string]any, *http.Response) {
	return func(t *testing.T, out map[string]any, _ *http.Response) {
		t.Helper()
		if d, ok := out["decision"].(bool); !ok || d != want {
			t.Errorf("decision %v, want %v (answer %v)", out["decision"], want, out)
		}
		if c, present := out["context"]; present {
			if _, ok := c.(map[string]any); !ok {
				t.Errorf("context %v is not an object", c)
			}
		}
	}
}

func batchIs(want ...any) func(*testing.T, map[string]any, *http.Response) {
	return func(t *testing.T, out map[string]any, _ *http.Response) {
		t.Helper()
		got, _ := out["evaluations"].([]any)
		if len(got) != len(want) {
			t.Fatalf("%d evaluations, want %d (answer %v)", len(got), len(want), out)
		}
		for i, w := range want {
			d, ok := got[i].(map[string]any)["decision"].(bool)
			if !ok {
				t.Errorf("evaluation %d has no boolean decision: %v", i, got[i])
			}
			if w != nil && d != w.(bool) {
				t.Errorf("evaluation %d: decision %v, want %v", i, d, w)
			}
		}
	}
}

func resultsInclude(field string, want ...string) func(*testing.T, map[string]any, *http.Response) {
	return func(t *testing.T, out map[string]any, _ *http.Response) {
		t.Helper()
		res, ok := out["results"].([]any)
		if !ok {
			t.Fatalf("no results array: %v", out)
		}
		var got []string
		for _, r := range res {
			e := r.(map[string]any)
			if field == "id" {
				if _, ok := e["type"].(string); !ok {
					t.Errorf("result %v has no type", e)
				}
			}
			got = append(got, e[field].(string))
		}
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("results %v lack %q", got, w)
			}
		}
		if len(want) == 0 && len(got) != 0 {
			t.Errorf("results %v, want none", got)
		}
		if p, present := out["page"]; present {
			pm, ok := p.(map[string]any)
			if !ok {
				t.Errorf("page %v is not an object", p)
			} else if _, ok := pm["next_token"].(string); !ok {
				t.Errorf("page.next_token %v is not a string", pm["next_token"])
			}
		}
	}
}

func typesAre(typ string) func(*testing.T, map[string]any, *http.Response) {
	return func(t *testing.T, out map[string]any, _ *http.Response) {
		for _, r := range out["results"].([]any) {
			if r.(map[string]any)["type"] != typ {
				t.Errorf("result %v is not of type %s", r, typ)
			}
		}
	}
}

func both(fs ...func(*testing.T, map[string]any, *http.Response)) func(*testing.T, map[string]any, *http.Response) {
	return func(t *testing.T, out map[string]any, resp *http.Response) {
		for _, f := range fs {
			f(t, out, resp)
		}
	}
}

const (
	alice   = `{"type":"user","id":"alice"}`
	bob     = `{"type":"user","id":"bob"}`
	bobAdm  = `{"type":"user","id":"bob","properties":{"role":"admin"}}`
	rec1    = `{"type":"record","id":"record-1"}`
	rec2    = `{"type":"record","id":"record-2"}`
	rec2Arc = `{"type":"record","id":"record-2","properties":{"status":"archived"}}`
	read    = `{"name":"read"}`
	write   = `{"name":"write"}`
)

func ev(s, a, r string) string {
	return `{"subject":` + s + `,"action":` + a + `,"resource":` + r + `}`
}

// Every test of the certification scenario's four levels (Basic, Batch,
// Search, Discovery), by section id, against the real listener with the
// scenario's required fixture.
func TestAuthZENCertificationScenario(t *testing.T) {
	srv := startExample(t, filepath.Join("..", "..", "examples", "authzen-certification"))
	const (
		E  = "/access/v1/evaluation"
		B  = "/access/v1/evaluations"
		SS = "/access/v1/search/subject"
		SR = "/access/v1/search/resource"
		SA = "/access/v1/search/action"
	)
	cases := []certCase{
		// Basic
		{"c-2-2-1", E, ev(alice, read, rec1), nil, 200, decisionIs(true)},
		{"c-2-2-2", E, ev(bob, write, rec1), nil, 200, decisionIs(false)},
		{"c-2-2-3", E, `{"subject":` + alice + `,"action":` + read + `,"resource":` + rec1 + `,"context":{"time":"2025-06-27T18:03-07:00","ip":"192.168.1.1"}}`, nil, 200, decisionIs(true)},
		{"c-2-2-4", E, ev(alice, write, rec2Arc), nil, 200, decisionIs(false)},
		{"c-2-2-5", E, ev(bobAdm, write, rec2Arc), nil, 200, decisionIs(true)},
		{"c-2-2-6", E, ev(alice, `{"name":"delete","properties":{"soft":true}}`, rec1), nil, 200, decisionIs(true)},
		{"c-2-2-7", E, ev(alice, `{"name":"delete","properties":{"soft":false}}`, rec1), nil, 200, decisionIs(false)},
		{"c-2-2-8", E, ev(`{"type":"user","id":"alice","properties":{"department":"Sales","role":"manager"}}`, `{"name":"read","properties":{"method":"GET"}}`, `{"type":"record","id":"record-1","properties":{"status":"active","owner":"bob"}}`), nil, 200, decisionIs(true)},
		{"c-2-2-9", E, `{"subject":` + alice + `,"action":` + read + `,"resource":` + rec1 + `,"foo":"bar","futureField":{"nested":true}}`, nil, 200, decisionIs(true)},
		{"c-2-3-1", E, ev(alice, read, rec1), nil, 200, func(t *testing.T, out map[string]any, resp *http.Response) {
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			decisionIs(true)(t, out, resp)
		}},
		{"c-2-4-1 no subject", E, `{"action":` + read + `,"resource":` + rec1 + `}`, nil, 400, nil},
		{"c-2-4-1 no action", E, `{"subject":` + alice + `,"resource":` + rec1 + `}`, nil, 400, nil},
		{"c-2-4-1 no resource", E, `{"subject":` + alice + `,"action":` + read + `}`, nil, 400, nil},
		{"c-2-4-2 subject type", E, ev(`{"id":"alice"}`, read, rec1), nil, 400, nil},
		{"c-2-4-2 subject id", E, ev(`{"type":"user"}`, read, rec1), nil, 400, nil},
		{"c-2-4-2 action name", E, ev(alice, `{}`, rec1), nil, 400, nil},
		{"c-2-4-2 resource type", E, ev(alice, read, `{"id":"record-1"}`), nil, 400, nil},
		{"c-2-4-2 resource id", E, ev(alice, read, `{"type":"record"}`), nil, 400, nil},
		{"c-2-4-3", E, ev(alice, read, rec1), map[string]string{"Content-Type": "text/plain"}, 400, nil},
		{"c-2-4-4", E, `{"subject": {`, nil, 400, nil},
		{"c-2-4-5", E, "", nil, 400, nil},
		{"c-2-4-6 subject string", E, ev(`"alice"`, read, rec1), nil, 400, nil},
		{"c-2-4-6 name number", E, ev(alice, `{"name":123}`, rec1), nil, 400, nil},
		{"c-2-5-1", E, ev(alice, read, rec1), map[string]string{"X-Request-ID": "req-42"}, 200, func(t *testing.T, _ map[string]any, resp *http.Response) {
			if got := resp.Header.Get("X-Request-ID"); got != "req-42" {
				t.Errorf("X-Request-ID %q, want req-42", got)
			}
		}},
		{"c-2-5-2", E, ev(alice, read, rec1), map[string]string{"X-Request-ID": ""}, 200, decisionIs(true)},
		// Batch
		{"c-3-2-1", B, `{"subject":` + alice + `,"action":` + read + `,"evaluations":[{"resource":` + rec1 + `},{"resource":` + rec2 + `}]}`, nil, 200, batchIs(nil, nil)},
		{"c-3-2-2", B, `{"subject":` + bob + `,"resource":` + rec1 + `,"evaluations":[{"action":` + read + `},{"action":` + write + `}]}`, nil, 200, batchIs(true, false)},
		{"c-3-2-3", B, `{"subject":` + alice + `,"action":` + write + `,"evaluations":[{"resource":{"type":"record","id":"record-1","properties":{"status":"active"}}},{"resource":` + rec2Arc + `}]}`, nil, 200, batchIs(true, false)},
		{"c-3-2-4", B, `{"action":` + write + `,"resource":` + rec2Arc + `,"evaluations":[{"subject":` + alice + `},{"subject":` + bobAdm + `}]}`, nil, 200, batchIs(false, true)},
		{"c-3-2-5", B, `{"evaluations":[` + ev(alice, read, rec1) + `,` + ev(bob, write, rec1) + `]}`, nil, 200, batchIs(true, false)},
		{"c-3-2-6", B, `{"subject":` + alice + `,"action":` + read + `,"context":{"time":"2025-06-27T18:03-07:00"},"evaluations":[{"resource":` + rec1 + `},{"resource":` + rec2 + `,"context":{"time":"2025-06-27T19:00-07:00","source":"batch-override"}}]}`, nil, 200, batchIs(nil, nil)},
		{"c-3-2-7", B, `{"subject":` + alice + `,"action":` + write + `,"resource":{"type":"record"},"evaluations":[{"resource":{"id":"record-1","properties":{"status":"active"}}},{"resource":` + rec2Arc + `}]}`, nil, 200, batchIs(true, false)},
		{"c-3-3", B, `{"subject":` + alice + `,"evaluations":[{"action":` + read + `,"resource":` + rec1 + `},{"action":` + write + `,"resource":` + rec2Arc + `},{"action":` + read + `,"resource":` + rec2 + `}]}`, nil, 200, batchIs(true, false, true)},
		{"c-3-4-1", B, `{"subject":` + alice + `,"action":` + read + `,"evaluations":[{"resource":` + rec1 + `},{}]}`, nil, 200, batchIs(true, false)},
		{"c-3-4-2", B, ev(alice, read, rec1), nil, 200, decisionIs(true)},
		{"c-3-4-3", B, `{"subject":` + alice + `,"action":` + read + `,"resource":` + rec1 + `,"evaluations":[]}`, nil, 200, decisionIs(true)},
		// Search
		{"c-4-2-1", SS, `{"subject":{"type":"user"},"action":` + read + `,"resource":` + rec1 + `}`, nil, 200, both(resultsInclude("id", "alice", "bob"), typesAre("user"))},
		{"c-4-2-2", SS, `{"subject":{"type":"user"},"action":` + read + `,"resource":` + rec1 + `,"context":{"time":"2025-06-27T18:03-07:00"}}`, nil, 200, resultsInclude("id", "alice", "bob")},
		{"c-4-2-4", SS, `{"subject":{"type":"user"},"action":` + write + `,"resource":` + rec2Arc + `}`, nil, 200, resultsInclude("id", "bob")},
		{"c-4-3-1", SR, `{"subject":` + alice + `,"action":` + read + `,"resource":{"type":"record"}}`, nil, 200, both(resultsInclude("id", "record-1"), typesAre("record"))},
		{"c-4-3-3", SR, `{"subject":` + bobAdm + `,"action":` + write + `,"resource":{"type":"record"}}`, nil, 200, resultsInclude("id", "record-2")},
		{"c-4-4-1", SA, `{"subject":` + alice + `,"resource":` + rec1 + `}`, nil, 200, resultsInclude("name", "read", "write")},
		{"c-4-4-2", SA, `{"subject":` + alice + `,"resource":` + rec1 + `,"context":{"time":"2025-06-27T18:03-07:00"}}`, nil, 200, resultsInclude("name", "read", "write")},
		{"c-4-4-3", SA, `{"subject":` + bobAdm + `,"resource":` + rec2Arc + `}`, nil, 200, resultsInclude("name", "write")},
		{"c-4-5-1", SS, `{"subject":{"type":"user"},"action":` + read + `,"resource":` + rec1 + `,"page":{"limit":1}}`, nil, 200, func(t *testing.T, out map[string]any, _ *http.Response) {
			res, _ := out["results"].([]any)
			page, _ := out["page"].(map[string]any)
			if len(res) != 1 || page == nil || page["next_token"] == "" || page["count"] != 1.0 {
				t.Errorf("page of 1: %v", out)
			}
		}},
		{"c-4-6-1", SA, `{"subject":{"type":"user","id":"nonexistent-user"},"resource":` + rec1 + `}`, nil, 200, resultsInclude("name")},
		{"c-4-6-2", SS, `{"subject":{"type":"spaceship"},"action":` + read + `,"resource":` + rec1 + `}`, nil, 200, resultsInclude("id")},
		{"c-4-7-1 subject search", SS, `{"subject":{"type":"user"},"resource":` + rec1 + `}`, nil, 400, nil},
		{"c-4-7-1 resource search", SR, `{"action":` + read + `,"resource":{"type":"record"}}`, nil, 400, nil},
		{"c-4-7-1 action search", SA, `{"subject":` + alice + `}`, nil, 400, nil},
		{"c-4-7-2 subject search", SS, `{"subject":{"type":"user"},"action":` + read + `,"resource":{"type":"record"}}`, nil, 400, nil},
		{"c-4-7-2 resource search", SR, `{"subject":{"type":"user"},"action":` + read + `,"resource":{"type":"record"}}`, nil, 400, nil},
	}
	for _, c := range cases {
		t.Run(c.id, func(t *testing.T) {
			code, resp, out := srv.call(t, http.MethodPost, c.path, c.body, c.hdr)
			if code != c.status {
				t.Fatalf("status %d, want %d (answer %v)", code, c.status, out)
			}
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
			}
			if c.check != nil {
				c.check(t, out, resp)
			}
		})
	}

	t.Run("c-2-6 idempotency", func(t *testing.T) {
		for range 5 {
			if _, _, out := srv.call(t, http.MethodPost, E, ev(alice, read, rec1), nil); out["decision"] != true {
				t.Fatalf("answer %v", out)
			}
		}
	})

	t.Run("c-4-5-2 page token", func(t *testing.T) {
		seen := []string{}
		token := ""
		for range 4 {
			body := `{"subject":{"type":"user"},"action":` + read + `,"resource":` + rec1 + `,"page":{"limit":1,"token":"` + token + `"}}`
			code, _, out := srv.call(t, http.MethodPost, SS, body, nil)
			if code != 200 {
				t.Fatalf("status %d: %v", code, out)
			}
			for _, r := range out["results"].([]any) {
				seen = append(seen, r.(map[string]any)["id"].(string))
			}
			page, ok := out["page"].(map[string]any)
			if !ok {
				t.Fatalf("no page object: %v", out)
			}
			token, ok = page["next_token"].(string)
			if !ok {
				t.Fatalf("page.next_token %v", page["next_token"])
			}
			if token == "" {
				break
			}
		}
		if !slices.Equal(seen, []string{"alice", "bob"}) {
			t.Errorf("paged through %v, want [alice bob]", seen)
		}
	})

	t.Run("c-6 discovery", func(t *testing.T) {
		code, resp, out := srv.call(t, http.MethodGet, "/.well-known/authzen-configuration", "", map[string]string{"Content-Type": ""})
		if code != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Fatalf("status %d, Content-Type %q", code, resp.Header.Get("Content-Type"))
		}
		if out["policy_decision_point"] != srv.base {
			t.Errorf("policy_decision_point %v, want %s", out["policy_decision_point"], srv.base)
		}
		for k, p := range map[string]string{
			"access_evaluation_endpoint": E, "access_evaluations_endpoint": B,
			"search_subject_endpoint": SS, "search_resource_endpoint": SR, "search_action_endpoint": SA,
		} {
			if out[k] != srv.base+p {
				t.Errorf("%s = %v, want %s", k, out[k], srv.base+p)
			}
		}
	})

	t.Run("pep authentication", func(t *testing.T) {
		for name, auth := range map[string]string{
			"none": "", "wrong token": "Bearer nope", "basic": "Basic " + srv.token, "prefix": "Bearer " + srv.token[:len(srv.token)-1],
		} {
			hdr := map[string]string{"Authorization": auth, "X-Request-ID": "r-" + name}
			code, resp, _ := srv.call(t, http.MethodPost, E, ev(alice, read, rec1), hdr)
			if code != 401 || resp.Header.Get("X-Request-ID") != "r-"+name {
				t.Errorf("%s: status %d, X-Request-ID %q; want 401 with the id echoed", name, code, resp.Header.Get("X-Request-ID"))
			}
		}
		code, _, _ := srv.call(t, http.MethodGet, "/.well-known/authzen-configuration", "", map[string]string{"Authorization": "", "Content-Type": ""})
		if code != 401 {
			t.Errorf("metadata without authentication: %d, want 401", code)
		}
	})

	t.Run("semantics", func(t *testing.T) {
		items := `"evaluations":[{"action":` + read + `},{"action":` + write + `},{"action":` + read + `}]`
		for sem, want := range map[string][]any{
			"execute_all":            {true, false, true},
			"deny_on_first_deny":     {true, false},
			"permit_on_first_permit": {true},
		} {
			body := `{"subject":` + bob + `,"resource":` + rec1 + `,"options":{"evaluations_semantic":"` + sem + `"},` + items + `}`
			code, resp, out := srv.call(t, http.MethodPost, B, body, nil)
			if code != 200 {
				t.Fatalf("%s: %d %v", sem, code, out)
			}
			batchIs(want...)(t, out, resp)
		}
		code, _, _ := srv.call(t, http.MethodPost, B, `{"subject":`+bob+`,"resource":`+rec1+`,"options":{"evaluations_semantic":"sometimes"},`+items+`}`, nil)
		if code != 400 {
			t.Errorf("unknown semantic: %d, want 400", code)
		}
	})
}
