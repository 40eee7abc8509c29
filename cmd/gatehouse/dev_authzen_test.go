package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// `gatehouse dev` serves the AuthZEN API over the demo world and prints
// curl examples (an evaluation, a batch, a resource search) that answer
// what their comments say: each printed command is run as printed.
func TestDevPrintsWorkingAuthZENExamples(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr testutil.LogBuffer
	done := make(chan int, 1)
	dir := t.TempDir()
	go func() {
		done <- run(ctx, []string{"dev", "--dir", dir, "--log-level", "warn",
			"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0",
			"--control-addr", "127.0.0.1:0", "--authzen-addr", "127.0.0.1:0"}, &stdout, &stderr)
	}()
	defer func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stdout.String(), "Stop with Ctrl-C") {
		if time.Now().After(deadline) {
			t.Fatal("dev printed no guide")
		}
		time.Sleep(50 * time.Millisecond)
	}
	re := regexp.MustCompile(`(?s)# ([^\n]*) -> ([^\n]*)\ncurl -s (http://\S+/access/v1/\S+) .*?\\\n  -d '([^']*)'`)
	found := re.FindAllStringSubmatch(stdout.String(), -1)
	if len(found) != 3 {
		t.Fatalf("%d AuthZEN examples printed, want 3", len(found))
	}
	tok, err := os.ReadFile(dir + "/authzen.token")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`"decision":true`, `"tenant":"beta"},"decision":true},{"context":{"reason":"role_required"},"decision":false}]`, `"results":[{"id":"beta","type":"tenant"}]`}
	for i, m := range found {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, m[3], strings.NewReader(m[4]))
		req.Header.Set("authorization", "Bearer "+strings.TrimSpace(string(tok)))
		req.Header.Set("content-type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		// a batch item's context carries its own decision id when decisions
		// are logged (SPEC §10: joined to its record): not compared
		if m, ok := out.(map[string]any); ok {
			items, _ := m["evaluations"].([]any)
			for _, it := range items {
				if c, ok := it.(map[string]any)["context"].(map[string]any); ok {
					if _, ok := c["gatehouse"].(map[string]any)["decision_id"].(string); !ok {
						t.Errorf("%s: a batch item without its decision id: %v", m, it)
					}
					delete(c, "gatehouse")
				}
			}
		}
		b, _ := json.Marshal(out)
		if resp.StatusCode != 200 || !strings.Contains(string(b), want[i]) {
			t.Errorf("%s (%s): %d %s, want %s", m[1], m[2], resp.StatusCode, b, want[i])
		}
	}
}
