package ops_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/ops"
)

// startOps serves an ops server for e on 127.0.0.1:0 until the test ends.
func startOps(tb testing.TB, e *authz.Engine, cfg ops.Config) string {
	tb.Helper()
	logger, _ := testutil.Logger(tb)
	cfg.Addr = "127.0.0.1:0"
	s := ops.New(cfg, e, logger)
	if err := s.Listen(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Serve(ctx); err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	tb.Cleanup(func() { cancel(); wg.Wait() })
	return "http://" + s.Addr().String()
}

// TestReadiness: /healthz is always 200; /readyz is 503 until a policy
// compiles, then 200.
func TestReadiness(t *testing.T) {
	t.Parallel()
	sc := testutil.StartSidecar(t, testutil.Options{NoPolicy: true, Ops: true, Policies: map[string]string{"policy.rego": "package envoy.authz\nallow := true\n"}})
	get := func(path string) (int, string) { return testutil.Get(t, t.Context(), sc.OpsURL+path) }
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no policy") {
		t.Errorf("/readyz before a policy = %d %q", code, body)
	}
	if err := sc.Policies.Load(); err != nil {
		t.Fatal(err)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz once ready = %d", code)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz once ready = %d", code)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, sc.OpsURL+"/healthz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d", resp.StatusCode)
	}
}

// TestStatusDocument: /v1/status has the shape of SPEC §2.
func TestStatusDocument(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	ten := testutil.NewTenancy(42, nil)
	ten.Set(authz.TenancyState{Present: true, Revision: 42, SyncedAt: now.Add(-400 * time.Millisecond), LastError: "control endpoint: connection refused"})
	logger, _ := testutil.Logger(t)
	e := authz.New(authz.Config{}, nil, ten, logger)
	url := startOps(t, e, ops.Config{Now: func() time.Time { return now }})

	raw := func() map[string]any {
		code, body := testutil.Get(t, t.Context(), url+"/v1/status")
		if code != 200 {
			t.Fatalf("/v1/status = %d %s", code, body)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("/v1/status is not JSON: %v: %s", err, body)
		}
		return m
	}
	m := raw()
	if m["ready"] != false {
		t.Errorf("ready = %v before a policy", m["ready"])
	}
	src, err := bundle.NewDirSource(bundle.PolicyConfig{Dir: testutil.PolicyDir(t, map[string]string{"policy.rego": "package envoy.authz\nallow := true\n"})}, e, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	m = raw()
	if m["ready"] != true {
		t.Errorf("ready = %v", m["ready"])
	}
	policy, _ := m["policy"].(map[string]any)
	if rev, _ := policy["revision"].(string); rev == "" || rev != e.PolicyStatus().Revision {
		t.Errorf("policy.revision = %v", policy["revision"])
	}
	if at, _ := policy["loaded_at"].(string); !isRFC3339(at) {
		t.Errorf("policy.loaded_at = %v, want RFC 3339", policy["loaded_at"])
	}
	if policy["last_error"] != "" {
		t.Errorf("policy.last_error = %v", policy["last_error"])
	}
	tenancy, _ := m["tenancy"].(map[string]any)
	want := map[string]any{"revision": 42.0, "synced_at": "2026-03-04T05:06:06.6Z", "age_seconds": 0.4, "last_error": "control endpoint: connection refused"}
	for k, w := range want {
		if tenancy[k] != w {
			t.Errorf("tenancy.%s = %#v, want %#v", k, tenancy[k], w)
		}
	}
	for _, doc := range []map[string]any{m, policy, tenancy} {
		for k := range doc {
			if k != strings.ToLower(k) {
				t.Errorf("key %q is not snake_case", k)
			}
		}
	}
}

func isRFC3339(s string) bool {
	_, err := time.Parse(time.RFC3339Nano, s)
	return err == nil
}

// TestMetrics: /metrics exposes check counts by transport and outcome, and
// the state gauges.
func TestMetrics(t *testing.T) {
	t.Parallel()
	sc := testutil.StartSidecar(t, testutil.Options{NoPolicy: true, Ops: true, Policies: map[string]string{
		"policy.rego": "package envoy.authz\ndefault allow := false\nallow if input.parsed_path[0] == \"open\"\n",
	}})
	// One error (not ready), then allows and denies on both transports.
	if _, err := sc.Check(t.Context(), testutil.Request{Path: "/open"}); err == nil {
		t.Fatal("Check answered before a policy loaded")
	}
	if err := sc.Policies.Load(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/open", "/open", "/closed"} {
		if _, err := sc.Check(t.Context(), testutil.Request{Path: p}); err != nil {
			t.Fatal(err)
		}
		sc.CheckHTTP(t, t.Context(), testutil.Request{Path: p})
	}
	code, body := testutil.Get(t, t.Context(), sc.OpsURL+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, line := range []string{
		`gatehouse_checks_total{outcome="allow",transport="grpc"} 2`,
		`gatehouse_checks_total{outcome="deny",transport="grpc"} 1`,
		`gatehouse_checks_total{outcome="error",transport="grpc"} 1`,
		`gatehouse_checks_total{outcome="allow",transport="http"} 2`,
		`gatehouse_checks_total{outcome="deny",transport="http"} 1`,
		`gatehouse_check_duration_seconds_count{transport="grpc"} 4`,
		`gatehouse_policy_loads_total{result="success"} 1`,
		`gatehouse_ready 1`,
		`gatehouse_tenancy_revision 0`,
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// TestServeStopsOnCancel: Serve returns once its context ends, and a
// disabled ops server (no address) serves nothing.
func TestServeStopsOnCancel(t *testing.T) {
	t.Parallel()
	logger, _ := testutil.Logger(t)
	e := authz.New(authz.Config{}, nil, nil, logger)
	for name, addr := range map[string]string{"tcp": "127.0.0.1:0", "disabled": ""} {
		s := ops.New(ops.Config{Addr: addr, Gatherer: prometheus.NewRegistry()}, e, logger)
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		if (s.Addr() == nil) != (addr == "") {
			t.Errorf("%s: Addr = %v", name, s.Addr())
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Serve = %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Serve did not return", name)
		}
	}
}
