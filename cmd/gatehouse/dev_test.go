package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDevGuideShowsEnforcementAndAudit runs `gatehouse dev` on 127.0.0.1:0,
// and follows its guide: the revocation, then the fleet view of its
// revision, the audit record it left, the decisions and usage endpoints.
func TestDevGuideShowsEnforcementAndAudit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr controlLogBuffer
	done := make(chan error, 1)
	go func() {
		done <- runDev(ctx, devFlags{dir: dir, grpcAddr: "127.0.0.1:0", httpAddr: "127.0.0.1:0", opsAddr: "127.0.0.1:0",
			controlAddr: "127.0.0.1:0", logLevel: "warn", logFormat: "text"}, &stdout, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), "Stop with Ctrl-C.") {
		if time.Now().After(deadline) {
			t.Fatalf("no guide within 60s; stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	guide := stdout.String()
	for _, want := range []string{"/v1/revisions/R", "/v1/sidecars", "/v1/audit?tenant=beta", "/v1/decisions?tenant=beta", "x-gatehouse-decision-id", "/v1/usage?tenant=beta"} {
		if !strings.Contains(guide, want) {
			t.Errorf("the guide does not show %q", want)
		}
	}
	control := regexp.MustCompile(`control +(http://\S+)`).FindStringSubmatch(guide)
	if control == nil {
		t.Fatalf("no control URL in the guide:\n%s", guide)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, path string) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, control[1]+path, nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	rev := call("DELETE", "/v1/user_grants/bob-tk")["revision"].(float64)
	if v := call("GET", "/v1/revisions/"+strings.TrimSuffix(jsonString(rev), ".0")); v["revision"].(float64) != rev || v["pending"] == nil {
		t.Fatalf("revision view: %v", v)
	}
	items := call("GET", "/v1/audit?tenant=beta&limit=5")["items"].([]any)
	if len(items) == 0 || items[0].(map[string]any)["id"] != "bob-tk" || items[0].(map[string]any)["op"] != "delete" {
		t.Fatalf("audit of beta: %v", items)
	}
	call("GET", "/v1/sidecars")
	call("GET", "/v1/decisions?tenant=beta&limit=5")
	call("GET", "/v1/usage?tenant=beta")
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
