package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// TestServeDecisionLogs runs `gatehouse serve` from a configuration file
// with decision logs (file and upload), a mask policy, a shadow policy and
// tracing (OTLP/HTTP to a local receiver): a few hundred mixed checks are
// each logged once in both sinks, joined by decision id, without tokens,
// masked, with the shadow's answer and the request's trace id; answers
// stay the active policy's; spans reach the collector.
func TestServeDecisionLogs(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "ghd") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	var mu sync.Mutex
	var uploaded bytes.Buffer
	logs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		zr, err := gzip.NewReader(r.Body)
		if err != nil || r.Header.Get("Authorization") != "Bearer log-secret" {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		var recs []json.RawMessage
		b, _ := io.ReadAll(zr)
		if err := json.Unmarshal(b, &recs); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, rec := range recs {
			uploaded.Write(rec)
			uploaded.WriteByte('\n')
		}
		mu.Unlock()
	}))
	t.Cleanup(logs.Close)
	var spans atomic.Int64
	otlp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/traces" {
			spans.Add(1)
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	t.Cleanup(otlp.Close)

	key := testutil.RSAKey(t, "declog")
	testutil.WriteFile(t, filepath.Join(dir, "keys", "idp.pem"), string(testutil.PublicKeyPEM(t, &key.PublicKey)))
	testutil.WriteFile(t, filepath.Join(dir, "log.token"), "log-secret")
	testutil.WriteFile(t, filepath.Join(dir, "pol", "policy.rego"), `package envoy.authz
default allow := {"allowed": false, "http_status": 401, "reason": "invalid_token"}
allow := {"allowed": true, "reason": "ok", "headers": {"x-echo": input.attributes.request.http.headers.authorization}} if input.token.valid
`)
	testutil.WriteFile(t, filepath.Join(dir, "pol", "system", "log.rego"), `package system.log
mask contains "/input/attributes/request/http/headers/x-ssn"
`)
	testutil.WriteFile(t, filepath.Join(dir, "shadow", "policy.rego"), `package envoy.authz
default allow := {"allowed": false, "http_status": 403, "reason": "shadow_no"}
allow := {"allowed": true} if {
	input.token.valid
	input.parsed_path[0] != "b"
}
`)
	testutil.WriteFile(t, filepath.Join(dir, "gatehouse.yaml"), `listen:
  grpc: unix://`+dir+`/g.sock
  http: unix://`+dir+`/h.sock
  ops: unix://`+dir+`/o.sock
id: e2e-1
labels: {zone: z1}
policies:
  dir: pol
  shadow: {dir: shadow}
data:
  dir: var
issuers:
  - issuer: https://idp.example.com/
    audiences: [api]
    public_key_file: keys/idp.pem
decision_logs:
  file: {path: logs/decisions.log}
  service:
    url: `+logs.URL+`/v1/logs
    token_file: log.token
    reporting: {min_delay_seconds: 0.05, max_delay_seconds: 0.5}
tracing:
  protocol: http
  address: `+strings.TrimPrefix(otlp.URL, "http://")+`
  insecure: true
`)
	exit, _, ops, cancel := runServe(t, dir)
	defer cancel()
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		select {
		case code := <-exit:
			t.Fatalf("serve exited %d early", code)
		default:
		}
		resp, err := ops.Get("http://ops/readyz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, fmt.Sprint("readyz ", resp.StatusCode)
	})
	client := authv3.NewAuthorizationClient(testutil.Dial(t, "unix://"+filepath.Join(dir, "g.sock")))
	tok := testutil.MintJWT(t, jwt.SigningMethodRS256, key, "", testutil.Claims("https://idp.example.com/", "alice", nil))
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	type want struct {
		allowed bool
		path    string
	}
	decided := map[string]want{}
	for i := range 240 {
		path := []string{"/a", "/b", "/a"}[i%3]
		h := map[string]string{"x-ssn": "123-45-6789", "traceparent": "00-" + traceID + "-00f067aa0ba902b7-01"}
		if i%3 != 2 {
			h["authorization"] = "Bearer " + tok
		}
		resp, err := client.Check(t.Context(), testutil.CheckRequest(testutil.Request{Path: path, Headers: h}))
		if err != nil {
			t.Fatal(err)
		}
		allowed := resp.GetOkResponse() != nil
		if allowed != (i%3 != 2) {
			t.Fatalf("check %d: allowed %v: not the active policy's answer", i, allowed)
		}
		decided[resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()] = want{allowed, path}
	}
	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Fatalf("serve exited %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
	fileBytes, err := os.ReadFile(filepath.Join(dir, "logs", "decisions.log"))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	upBytes := bytes.Clone(uploaded.Bytes())
	mu.Unlock()
	for sink, b := range map[string][]byte{"file": fileBytes, "service": upBytes} {
		if bytes.Contains(b, []byte(tok)) || bytes.Contains(b, []byte("123-45-6789")) {
			t.Errorf("%s: a token or a masked value is in the records", sink)
		}
		seen := map[string]bool{}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var rec struct {
				DecisionID string            `json:"decision_id"`
				TraceID    string            `json:"trace_id"`
				Labels     map[string]string `json:"labels"`
				Erased     []string          `json:"erased"`
				Gatehouse  struct {
					Allowed bool `json:"allowed"`
					Shadow  *struct {
						Agree   bool `json:"agree"`
						Allowed bool `json:"allowed"`
					} `json:"shadow"`
				} `json:"gatehouse"`
			}
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				t.Fatalf("%s: %v", sink, err)
			}
			w, ok := decided[rec.DecisionID]
			if !ok || seen[rec.DecisionID] {
				t.Errorf("%s: decision %s unknown or logged twice", sink, rec.DecisionID)
				continue
			}
			seen[rec.DecisionID] = true
			if rec.Gatehouse.Allowed != w.allowed || rec.TraceID != traceID || rec.Labels["id"] != "e2e-1" || rec.Labels["zone"] != "z1" ||
				!strings.Contains(strings.Join(rec.Erased, " "), "/x-ssn") {
				t.Errorf("%s: record %+v, decided %+v", sink, rec, w)
			}
			if w.allowed && (rec.Gatehouse.Shadow == nil || rec.Gatehouse.Shadow.Agree != (w.path != "/b")) {
				t.Errorf("%s: %s on %s: shadow %+v", sink, rec.DecisionID, w.path, rec.Gatehouse.Shadow)
			}
		}
		if len(seen) != len(decided) {
			t.Errorf("%s: %d of %d decisions logged", sink, len(seen), len(decided))
		}
	}
	if spans.Load() == 0 {
		t.Errorf("no spans reached the OTLP receiver")
	}
}
