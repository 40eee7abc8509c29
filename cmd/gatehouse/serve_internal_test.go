package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// TestServe runs `gatehouse serve` from a configuration file on Unix
// sockets: it becomes ready, answers checks with verified tokens, reloads
// an edited policy, and exits 0 when its context ends.
func TestServe(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "ghs") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	key := testutil.RSAKey(t, "serve")
	testutil.WriteFile(t, filepath.Join(dir, "keys", "idp.pem"), string(testutil.PublicKeyPEM(t, &key.PublicKey)))
	testutil.WriteFile(t, filepath.Join(dir, "pol", "policy.rego"), `package envoy.authz
allow := {"allowed": input.token.valid, "headers": {"x-user": input.token.subject}} if input.token.valid
allow := {"allowed": false, "http_status": 401, "body": input.token.error} if not input.token.valid
`)
	testutil.WriteFile(t, filepath.Join(dir, "gatehouse.yaml"), `listen:
  grpc: unix://`+dir+`/g.sock
  http: unix://`+dir+`/h.sock
  ops: unix://`+dir+`/o.sock
policies:
  dir: pol
data:
  dir: var
issuers:
  - issuer: https://idp.example.com/
    audiences: [api]
    public_key_file: keys/idp.pem
log:
  level: debug
`)
	exit, stderr, ops, cancel := runServe(t, dir)
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
	resp, err := client.Check(t.Context(), testutil.CheckRequest(testutil.Request{Headers: map[string]string{"authorization": "Bearer " + tok}}))
	if err != nil || resp.GetOkResponse() == nil || resp.GetOkResponse().GetHeaders()[0].GetHeader().GetValue() != "alice" {
		t.Fatalf("Check with a valid token: %v, %v", resp, err)
	}
	resp, err = client.Check(t.Context(), testutil.CheckRequest(testutil.Request{}))
	if err != nil || resp.GetDeniedResponse().GetBody() != "missing" {
		t.Fatalf("Check without a token: %v, %v", resp, err)
	}

	testutil.ReplaceFile(t, filepath.Join(dir, "pol", "policy.rego"), "package envoy.authz\nallow := {\"allowed\": false, \"http_status\": 418}\n")
	testutil.Eventually(t, 2*time.Second, func() (bool, string) {
		resp, err := client.Check(t.Context(), testutil.CheckRequest(testutil.Request{}))
		return err == nil && resp.GetDeniedResponse().GetStatus().GetCode() == 418, fmt.Sprint(resp, err)
	})

	status, err := ops.Get("http://ops/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(status.Body)
	status.Body.Close()
	if !strings.Contains(string(body), `"ready": true`) || !strings.Contains(string(body), `"issuer": "https://idp.example.com/"`) {
		t.Errorf("/v1/status %s", body)
	}

	cancel()
	select {
	case code := <-exit:
		if code != exitOK {
			t.Errorf("serve exited %d after its context ended", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop")
	}
	logs := stderr.String()
	if strings.Contains(logs, tok) || strings.Contains(logs, strings.Split(tok, ".")[2]) {
		t.Error("the token appears in serve's logs")
	}
	for _, w := range []string{`"msg":"gatehouse serve starting"`, `"msg":"decision"`, `"msg":"gatehouse serve stopped"`} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs lack %s", w)
		}
	}
}

// TestServeLimits: the limits and cache sizes of the configuration file
// reach the sidecar: a request over limits.max_request_bytes is a 413
// request_too_large deny, not evaluated and not an error.
func TestServeLimits(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "ghl") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	testutil.WriteFile(t, filepath.Join(dir, "pol", "policy.rego"), "package envoy.authz\nallow := true\n")
	testutil.WriteFile(t, filepath.Join(dir, "gatehouse.yaml"), `listen:
  grpc: unix://`+dir+`/g.sock
  http: unix://`+dir+`/h.sock
  ops: unix://`+dir+`/o.sock
policies: {dir: pol}
data: {dir: var}
limits: {max_request_bytes: 4096, max_inflight: 2, max_inflight_bytes: 65536}
cache: {decisions_mb: 1, tokens_mb: 1}
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
	if resp, err := client.Check(t.Context(), testutil.CheckRequest(testutil.Request{})); err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("a small check: %v, %v; want allowed", resp, err)
	}
	resp, err := client.Check(t.Context(), testutil.CheckRequest(testutil.Request{Headers: map[string]string{"x-pad": strings.Repeat("p", 8192)}}))
	if err != nil || resp.GetDeniedResponse().GetStatus().GetCode() != 413 || !strings.Contains(resp.GetDeniedResponse().GetBody(), "request_too_large") {
		t.Fatalf("a check over limits.max_request_bytes: %v, %v; want a 413 request_too_large deny", resp, err)
	}
}
