package control_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control"
)

// report posts a sidecar's status as a sidecar does.
func report(tb testing.TB, e *env, token, id string, rev uint64, ready bool) response {
	tb.Helper()
	body := fmt.Sprintf(`{"id":%q,"version":"test","ready":%t,"policy_revision":"p1","tenancy_revision":%d,"synced_at":%q,"last_error":"","labels":{"zone":"a"}}`,
		id, ready, rev, time.Now().UTC().Format(time.RFC3339Nano))
	return e.do("POST", "/v1/sidecars/"+id+"/status", token, body)
}

type revisionView struct {
	Revision uint64   `json:"revision"`
	Sidecars int      `json:"sidecars"`
	Applied  int      `json:"applied"`
	Pending  []string `json:"pending"`
}

func revisionOfFleet(tb testing.TB, e *env, token string, rev uint64) revisionView {
	tb.Helper()
	r := e.do("GET", fmt.Sprintf("/v1/revisions/%d", rev), token, "")
	if r.status != 200 {
		tb.Fatalf("GET /v1/revisions/%d: %s", rev, r)
	}
	var v revisionView
	if err := json.Unmarshal(r.body, &v); err != nil {
		tb.Fatal(err)
	}
	return v
}

func sidecars(tb testing.TB, e *env) []control.Sidecar {
	tb.Helper()
	var a struct {
		Items []control.Sidecar `json:"items"`
	}
	if err := json.Unmarshal(e.must("GET", "/v1/sidecars", "").body, &a); err != nil {
		tb.Fatal(err)
	}
	return a.Items
}

// TestFleetView: two sidecars converge on a revocation, a third stops
// reporting and leaves the view after sidecar_ttl.
func TestFleetView(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	e := newEnv(t, func(c *control.Config) { c.Now = clk.Now; c.SidecarTTL = 40 * time.Second })
	base := e.seed()
	for _, id := range []string{"sc-a", "sc-b", "sc-c"} {
		if r := report(t, e, syncToken, id, base, true); r.status != 200 {
			t.Fatal(r)
		}
	}
	clk.Add(10 * time.Second)
	revoke := revisionOf(t, e.must("DELETE", "/v1/user_grants/ug-bob", "")) // the revocation
	v := revisionOfFleet(t, e, adminToken, revoke)
	if v.Sidecars != 3 || v.Applied != 0 || !slices.Equal(v.Pending, []string{"sc-a", "sc-b", "sc-c"}) {
		t.Fatalf("before any sidecar applied it: %+v", v)
	}
	if g := e.metric("gatehouse_control_fleet_lag_revisions", nil); g != 1 {
		t.Fatalf("fleet lag %v, want 1", g)
	}
	if g := e.metric("gatehouse_control_fleet_pending_sidecars", nil); g != 3 {
		t.Fatalf("pending sidecars %v, want 3", g)
	}
	report(t, e, syncToken, "sc-a", revoke, true)
	if v := revisionOfFleet(t, e, adminToken, revoke); v.Applied != 1 || !slices.Equal(v.Pending, []string{"sc-b", "sc-c"}) {
		t.Fatalf("sc-a applied: %+v", v)
	}
	// sc-c stops; sc-a and sc-b keep reporting, sc-b now at the revocation
	clk.Add(25 * time.Second)
	report(t, e, adminToken, "sc-a", revoke, true)
	report(t, e, syncToken, "sc-b", revoke, true)
	if v := revisionOfFleet(t, e, userToken(t, "erin"), revoke); v.Sidecars != 3 || v.Applied != 2 || !slices.Equal(v.Pending, []string{"sc-c"}) {
		t.Fatalf("sc-c is stale but within the ttl: %+v", v)
	}
	list := sidecars(t, e)
	if len(list) != 3 || list[2].ID != "sc-c" || list[2].AgeSeconds != 35 || list[2].LagRevisions != 1 || list[0].AgeSeconds != 0 || list[0].Labels["zone"] != "a" {
		t.Fatalf("sidecars: %+v", list)
	}
	clk.Add(10 * time.Second) // sc-c's last report is 45 s old: gone
	report(t, e, syncToken, "sc-a", revoke, true)
	report(t, e, syncToken, "sc-b", revoke, true)
	v = revisionOfFleet(t, e, adminToken, revoke)
	if v.Sidecars != 2 || v.Applied != 2 || len(v.Pending) != 0 {
		t.Fatalf("enforced everywhere once sc-c expired: %+v", v)
	}
	if ids := sidecars(t, e); len(ids) != 2 {
		t.Fatalf("sidecars after sc-c expired: %+v", ids)
	}
	if g := e.metric("gatehouse_control_fleet_lag_revisions", nil); g != 0 {
		t.Fatalf("fleet lag %v, want 0", g)
	}
	if g := e.metric("gatehouse_control_fleet_sidecars", nil); g != 2 {
		t.Fatalf("fleet sidecars %v, want 2", g)
	}
	// an earlier revision is applied by all; a not-ready sidecar counts as pending in the gauge
	if v := revisionOfFleet(t, e, adminToken, base); v.Applied != 2 {
		t.Fatalf("revision %d: %+v", base, v)
	}
	report(t, e, syncToken, "sc-b", revoke, false)
	if g := e.metric("gatehouse_control_fleet_pending_sidecars", nil); g != 1 {
		t.Fatalf("pending sidecars with one not ready: %v, want 1", g)
	}
}

func TestFleetRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	rev := e.seed()
	cases := map[string]struct {
		method, path, token, body string
		status                    int
	}{
		"report without token":         {"POST", "/v1/sidecars/a/status", "", `{}`, 401},
		"report with a user token":     {"POST", "/v1/sidecars/a/status", userToken(t, "carol"), `{}`, 403},
		"report with another id":       {"POST", "/v1/sidecars/a/status", syncToken, `{"id":"b"}`, 400},
		"report with a bad id":         {"POST", "/v1/sidecars/a%20b/status", syncToken, `{}`, 400},
		"report not json":              {"POST", "/v1/sidecars/a/status", syncToken, `{`, 400},
		"report with a bad synced_at":  {"POST", "/v1/sidecars/a/status", syncToken, `{"synced_at":"today"}`, 400},
		"report too large":             {"POST", "/v1/sidecars/a/status", syncToken, `{"last_error":"` + string(make([]byte, 70<<10)) + `"}`, 413},
		"report without the id":        {"POST", "/v1/sidecars/a/status", syncToken, `{"tenancy_revision":1}`, 200},
		"list with the sync token":     {"GET", "/v1/sidecars", syncToken, "", 403},
		"list with a user token":       {"GET", "/v1/sidecars", userToken(t, "carol"), "", 403},
		"revision with the sync token": {"GET", "/v1/revisions/1", syncToken, "", 403},
		"revision, no rights":          {"GET", "/v1/revisions/1", userToken(t, "dave"), "", 403},
		"revision zero":                {"GET", "/v1/revisions/0", adminToken, "", 400},
		"revision not a number":        {"GET", "/v1/revisions/x", adminToken, "", 400},
		"revision not committed":       {"GET", fmt.Sprintf("/v1/revisions/%d", rev+1), adminToken, "", 404},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if r := e.do(c.method, c.path, c.token, c.body); r.status != c.status {
				t.Fatalf("got %s, want %d", r, c.status)
			}
		})
	}
}
