package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// TestDevGuideShowsEnforcementAndAudit runs `gatehouse dev` on 127.0.0.1:0,
// and follows its guide: a request's decision record in the file and at the
// control's /v1/decisions (by its x-gatehouse-decision-id), the usage, the
// revocation, then the fleet view of its revision until the sidecar has
// applied it, the audit record it left.
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
	// The guide's first request, then its decision record: in the file and,
	// uploaded, at the control's /v1/decisions (joined by the answer's
	// x-gatehouse-decision-id), counted in the usage.
	httpAddr := regexp.MustCompile(`ext_authz HTTP +(http://\S+)`).FindStringSubmatch(guide)
	if httpAddr == nil {
		t.Fatalf("no ext_authz HTTP address in the guide:\n%s", guide)
	}
	bob, err := os.ReadFile(filepath.Join(dir, "tokens", "bob.jwt"))
	if err != nil {
		t.Fatal(err)
	}
	first := func(want int) string {
		t.Helper()
		req, _ := http.NewRequest("GET", httpAddr[1]+"/t/beta/entries", nil)
		req.Header.Set("authorization", "Bearer "+strings.TrimSpace(string(bob)))
		req.Header.Set("x-gatehouse-context-project", "timekeeping")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		id := resp.Header.Get("x-gatehouse-decision-id")
		if resp.StatusCode != want || id == "" {
			t.Fatalf("the guide's first request: %d, decision id %q; want %d", resp.StatusCode, id, want)
		}
		return id
	}
	// atControl waits for decision id's record at the control, filed under
	// beta, and returns its gatehouse object.
	atControl := func(id string) map[string]any {
		t.Helper()
		var g map[string]any
		testutil.Eventually(t, 20*time.Second, func() (bool, string) {
			var found []any
			for _, it := range call("GET", "/v1/decisions?tenant=beta&limit=100")["items"].([]any) {
				if it.(map[string]any)["decision_id"] == id {
					found = append(found, it)
				}
			}
			if len(found) != 1 {
				return false, fmt.Sprintf("decision %s %d times at the control", id, len(found))
			}
			g = found[0].(map[string]any)["gatehouse"].(map[string]any)
			return true, ""
		})
		return g
	}
	decisionID := first(200)
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(filepath.Join(dir, "decisions.log"))
		inFile := strings.Contains(string(b), `"decision_id":"`+decisionID+`"`)
		var found []any
		for _, it := range call("GET", "/v1/decisions?tenant=beta&limit=100")["items"].([]any) {
			if it.(map[string]any)["decision_id"] == decisionID {
				found = append(found, it)
			}
		}
		if len(found) == 1 && inFile {
			g := found[0].(map[string]any)["gatehouse"].(map[string]any)
			if g["allowed"] != true || g["tenant"] != "beta" || g["subject"] != "bob" {
				t.Fatalf("the decision record at the control: %v", found[0])
			}
			return true, ""
		}
		return false, fmt.Sprintf("decision %s: in the file %v, %d times at the control", decisionID, inFile, len(found))
	})
	if b, _ := os.ReadFile(filepath.Join(dir, "decisions.log")); strings.Contains(string(b), strings.TrimSpace(string(bob))) {
		t.Fatalf("the decision log holds bob's token")
	}
	usage := call("GET", "/v1/usage?tenant=beta")["items"].([]any)
	if len(usage) == 0 || usage[0].(map[string]any)["allowed"].(float64) < 1 {
		t.Fatalf("usage of beta: %v", usage)
	}

	// The revocation, then its enforcement in the fleet view: pending until
	// the sidecar's next report, then applied by the dev sidecar.
	rev := call("DELETE", "/v1/user_grants/bob-tk")["revision"].(float64)
	if v := call("GET", "/v1/revisions/"+strings.TrimSuffix(jsonString(rev), ".0")); v["revision"].(float64) != rev || v["pending"] == nil {
		t.Fatalf("revision view: %v", v)
	}
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		v := call("GET", "/v1/revisions/"+strings.TrimSuffix(jsonString(rev), ".0"))
		return v["sidecars"] == 1.0 && v["applied"] == 1.0 && len(v["pending"].([]any)) == 0, fmt.Sprintf("revision view: %v", v)
	})
	// The first request again: 403 no_role, its record in beta's decisions
	// and counted as a deny in beta's usage.
	if g := atControl(first(403)); g["allowed"] != false || g["reason"] != "no_role" || g["subject"] != "bob" {
		t.Fatalf("the deny's record at the control: %v", g)
	}
	usage = call("GET", "/v1/usage?tenant=beta")["items"].([]any)
	if len(usage) == 0 || usage[len(usage)-1].(map[string]any)["denied"].(float64) < 1 {
		t.Fatalf("usage of beta after the deny: %v", usage)
	}
	items := call("GET", "/v1/audit?tenant=beta&limit=5")["items"].([]any)
	if len(items) == 0 || items[0].(map[string]any)["id"] != "bob-tk" || items[0].(map[string]any)["op"] != "delete" {
		t.Fatalf("audit of beta: %v", items)
	}
	call("GET", "/v1/sidecars")
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
