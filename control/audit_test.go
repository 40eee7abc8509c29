package control_test

import (
	"encoding/json"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control"
)

// clock is a settable test clock.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }
func (c *clock) Set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *clock) edit() func(*control.Config) {
	return func(cfg *control.Config) { cfg.Now = c.Now }
}

// page is a decoded {"items", "next"} answer.
type page[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next"`
}

// all pages through path (with limit) as token and returns every item in
// order; it fails on any answer but 200.
func all[T any](tb testing.TB, e *env, path, token string, limit int) []T {
	tb.Helper()
	var out []T
	after := ""
	for range 10000 {
		q := path + sep(path) + "limit=" + itoa(limit)
		if after != "" {
			q += "&after=" + url.QueryEscape(after)
		}
		r := e.do("GET", q, token, "")
		if r.status != 200 {
			tb.Fatalf("GET %s: %s", q, r)
		}
		var p page[T]
		if err := json.Unmarshal(r.body, &p); err != nil {
			tb.Fatalf("GET %s: %v", q, err)
		}
		if p.Items == nil {
			tb.Fatalf("GET %s: items is not a list: %s", q, r)
		}
		out = append(out, p.Items...)
		if p.Next == "" {
			return out
		}
		after = p.Next
	}
	tb.Fatalf("GET %s: paging does not end", path)
	return nil
}

func sep(path string) string {
	if strings.Contains(path, "?") {
		return "&"
	}
	return "?"
}

func itoa(n int) string { return strconv.Itoa(n) }

// key identifies an audit record.
func key(r control.AuditRecord) string {
	return r.Collection + "/" + r.ID + "@" + itoa(int(r.Revision)) + ":" + r.Op
}

// newestFirst checks that records come newest first.
func newestFirst(tb testing.TB, recs []control.AuditRecord) {
	tb.Helper()
	for i := 1; i < len(recs); i++ {
		a, b := recs[i-1], recs[i]
		if a.Time.Before(b.Time) || a.Time.Equal(b.Time) && a.Revision < b.Revision {
			tb.Fatalf("record %d (%s at %v) precedes %s at %v: not newest first", i-1, key(a), a.Time, key(b), b.Time)
		}
	}
}

func TestAuditRecordsEveryWrite(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	e := newEnv(t, clk.edit())
	seedRev := e.seed()
	clk.Add(time.Minute)
	alice := userToken(t, "alice")
	r := e.do("PUT", "/v1/users/alice2", alice, `{"id":"alice2","tenant":"alpha","labels":{"a":"1"}}`)
	if r.status != 200 {
		t.Fatal(r)
	}
	putRev := revisionOf(t, r)
	clk.Add(time.Minute)
	updRev := revisionOf(t, e.must("PUT", "/v1/users/alice2", `{"id":"alice2","tenant":"alpha","labels":{"a":"2"}}`))
	clk.Add(time.Minute)
	delRev := revisionOf(t, e.must("DELETE", "/v1/users/bob?cascade=true", "")) // with ug-bob and m-bob

	recs := all[control.AuditRecord](t, e, "/v1/audit", adminToken, 7)
	newestFirst(t, recs)
	if len(recs) != 20+1+1+3 {
		t.Fatalf("%d records, want 25 (20 seeded, a put, an update, a delete with its cascade of two)", len(recs))
	}
	byKey := map[string]control.AuditRecord{}
	for _, rc := range recs {
		byKey[key(rc)] = rc
	}
	cases := map[string]struct {
		key           string
		actor         control.Actor
		request       string
		tenants       []string
		before, after string // substrings; "null" for absent
		time          time.Time
	}{
		"seeded tenant": {key: "tenants/alpha@" + itoa(int(seedRev)) + ":put", actor: control.Actor{Kind: "admin", ID: "admin"}, request: "batch",
			tenants: []string{"acme", "alpha"}, before: "null", after: `"id":"alpha"`, time: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
		"seeded user grant": {key: "user_grants/ug-alice-beta@" + itoa(int(seedRev)) + ":put", actor: control.Actor{Kind: "admin", ID: "admin"}, request: "batch",
			tenants: []string{"alpha", "beta"}, before: "null", after: `"user":"alice"`},
		"seeded membership of a grant admin": {key: "memberships/m-bob@" + itoa(int(seedRev)) + ":put", request: "batch", actor: control.Actor{Kind: "admin", ID: "admin"},
			tenants: []string{"acme", "beta"}, before: "null", after: `"pg-beta"`},
		"delegated put": {key: "users/alice2@" + itoa(int(putRev)) + ":put", actor: control.Actor{Kind: "user", ID: "alice", Issuer: issuerURL}, request: "put",
			tenants: []string{"alpha"}, before: "null", after: `"a":"1"`, time: time.Date(2026, 3, 1, 12, 1, 0, 0, time.UTC)},
		"update has before and after": {key: "users/alice2@" + itoa(int(updRev)) + ":put", actor: control.Actor{Kind: "admin", ID: "admin"}, request: "put",
			tenants: []string{"alpha"}, before: `"a":"1"`, after: `"a":"2"`},
		"delete": {key: "users/bob@" + itoa(int(delRev)) + ":delete", actor: control.Actor{Kind: "admin", ID: "admin"}, request: "delete",
			tenants: []string{"beta"}, before: `"id":"bob"`, after: "null"},
		"cascaded delete": {key: "user_grants/ug-bob@" + itoa(int(delRev)) + ":delete", actor: control.Actor{Kind: "admin", ID: "admin"}, request: "delete",
			tenants: []string{"beta"}, before: `"id":"ug-bob"`, after: "null"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			rc, ok := byKey[c.key]
			if !ok {
				t.Fatalf("no record %s", c.key)
			}
			if rc.Actor != c.actor || rc.Request != c.request || !slices.Equal(rc.Tenants, c.tenants) {
				t.Fatalf("record %+v: want actor %+v, request %s, tenants %v", rc, c.actor, c.request, c.tenants)
			}
			if !strings.Contains(string(rc.Before), c.before) || !strings.Contains(string(rc.After), c.after) {
				t.Fatalf("before %s after %s: want %q and %q", rc.Before, rc.After, c.before, c.after)
			}
			if !c.time.IsZero() && !rc.Time.Equal(c.time) {
				t.Fatalf("time %v, want %v", rc.Time, c.time)
			}
		})
	}
	// every revision committed has its records, and no record names
	// another revision
	revs := map[uint64]bool{}
	for _, rc := range recs {
		revs[rc.Revision] = true
	}
	for rev := uint64(1); rev <= e.srv.Revision(); rev++ {
		if !revs[rev] {
			t.Fatalf("revision %d has no audit record", rev)
		}
	}
	if len(revs) != int(e.srv.Revision()) {
		t.Fatalf("records of %d revisions, %d committed", len(revs), e.srv.Revision())
	}
	if v := e.metric("gatehouse_control_audit_records_total", nil); v != 25 {
		t.Fatalf("gatehouse_control_audit_records_total %v, want 25", v)
	}

	// since and until bound the time, inclusive
	mid := all[control.AuditRecord](t, e, "/v1/audit?since=2026-03-01T12:01:00Z&until=2026-03-01T12:02:00Z", adminToken, 100)
	if len(mid) != 2 || mid[0].Revision != updRev || mid[1].Revision != putRev {
		t.Fatalf("since/until: %+v", mid)
	}
}

func TestAuditRefusedWritesLeaveNoRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	alice := userToken(t, "alice")
	cases := map[string]struct {
		method, path, body, token string
		status                    int
	}{
		"invariant":             {"PUT", "/v1/users/x", `{"id":"x","tenant":"nowhere"}`, adminToken, 409},
		"invalid":               {"PUT", "/v1/users/x", `{"id":"x","tenant":"acme","colour":"red"}`, adminToken, 422},
		"batch, a later op":     {"POST", "/v1/batch", `{"ops":[{"op":"put","collection":"users","value":{"id":"n1","tenant":"acme"}},{"op":"put","collection":"users","value":{"id":"n2","tenant":"missing"}}]}`, adminToken, 409},
		"out of scope":          {"PUT", "/v1/users/x", `{"id":"x","tenant":"beta"}`, alice, 403},
		"cascade out of scope":  {"POST", "/v1/batch", `{"ops":[{"op":"put","collection":"users","value":{"id":"a9","tenant":"alpha"}},{"op":"put","collection":"users","value":{"id":"x","tenant":"gamma"}}]}`, alice, 403},
		"sync token":            {"PUT", "/v1/users/x", `{"id":"x","tenant":"acme"}`, syncToken, 403},
		"delete of unknown id":  {"DELETE", "/v1/users/nobody", "", adminToken, 404},
		"bundle, not a tarball": {"PUT", "/v1/bundles/main", "not gzip", adminToken, 422},
	}
	before := len(all[control.AuditRecord](t, e, "/v1/audit", adminToken, 1000))
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if r := e.do(c.method, c.path, c.token, c.body); r.status != c.status {
				t.Fatalf("got %s, want %d", r, c.status)
			}
		})
	}
	if n := len(all[control.AuditRecord](t, e, "/v1/audit", adminToken, 1000)); n != before {
		t.Fatalf("%d records after refused writes, want %d", n, before)
	}
	// a bundle upload is an admin write too
	e.must("PUT", "/v1/bundles/main", string(bundleTarball(t, "r1")))
	recs := all[control.AuditRecord](t, e, "/v1/audit?limit=1", adminToken, 1)
	if len(recs) != before+1 || recs[0].Collection != "bundles" || recs[0].ID != "main" || !strings.Contains(string(recs[0].After), "etag") {
		t.Fatalf("bundle upload: %d records, newest %+v", len(recs), recs[0])
	}
}

func TestAuditVisibility(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	e.must("PUT", "/v1/tenants/delta", `{"id":"delta","name":"Delta","kind":"customer","parent":"alpha"}`) // a grandchild of acme
	if r := e.do("PUT", "/v1/users/al5", userToken(t, "alice"), `{"id":"al5","tenant":"alpha"}`); r.status != 200 {
		t.Fatal(r)
	}
	if r := e.do("PUT", "/v1/users/er5", userToken(t, "erin"), `{"id":"er5","tenant":"beta"}`); r.status != 200 {
		t.Fatal(r)
	}
	e.must("PUT", "/v1/users/g5", `{"id":"g5","tenant":"gamma"}`)
	full := all[control.AuditRecord](t, e, "/v1/audit", adminToken, 1000)

	visible := func(tenants ...string) func(control.AuditRecord) bool {
		return func(r control.AuditRecord) bool {
			for _, t := range r.Tenants {
				if slices.Contains(tenants, t) {
					return true
				}
			}
			return false
		}
	}
	cases := map[string]struct {
		token, query string
		status       int
		want         func(control.AuditRecord) bool // nil: everything
	}{
		"admin sees everything":                     {token: adminToken, status: 200},
		"admin filters a tenant":                    {token: adminToken, query: "tenant=gamma", status: 200, want: visible("gamma")},
		"tenant admin sees its tenant":              {token: userToken(t, "alice"), status: 200, want: visible("alpha")},
		"tenant admin filters its tenant":           {token: userToken(t, "alice"), query: "tenant=alpha", status: 200, want: visible("alpha")},
		"tenant admin asks for another":             {token: userToken(t, "alice"), query: "tenant=beta", status: 403},
		"tenant admin asks for its SP":              {token: userToken(t, "alice"), query: "tenant=acme", status: 403},
		"other tenant admin":                        {token: userToken(t, "erin"), status: 200, want: visible("beta")},
		"SP admin sees its children":                {token: userToken(t, "carol"), status: 200, want: visible("acme", "alpha", "beta")},
		"SP admin filters a child":                  {token: userToken(t, "carol"), query: "tenant=beta", status: 200, want: visible("beta")},
		"SP admin asks for an unrelated tenant":     {token: userToken(t, "carol"), query: "tenant=gamma", status: 403},
		"SP admin asks for a grandchild":            {token: userToken(t, "carol"), query: "tenant=delta", status: 403},
		"project-grant admin administers no tenant": {token: userToken(t, "bob"), status: 403},
		"no rights":          {token: userToken(t, "dave"), status: 403},
		"unknown user":       {token: userToken(t, "mallory"), status: 403},
		"sync token":         {token: syncToken, status: 403},
		"no token":           {status: 401},
		"bad tenant":         {token: adminToken, query: "tenant=a%20b", status: 400},
		"bad since":          {token: adminToken, query: "since=yesterday", status: 400},
		"until before since": {token: adminToken, query: "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", status: 400},
		"bad after":          {token: adminToken, query: "after=zz", status: 400},
		"bad limit":          {token: adminToken, query: "limit=0", status: 400},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := "/v1/audit"
			if c.query != "" {
				path += "?" + c.query
			}
			if c.status != 200 {
				if r := e.do("GET", path, c.token, ""); r.status != c.status {
					t.Fatalf("got %s, want %d", r, c.status)
				}
				return
			}
			for _, limit := range []int{1, 3, 1000} {
				got := all[control.AuditRecord](t, e, path, c.token, limit)
				var want []control.AuditRecord
				for _, r := range full {
					if c.want == nil || c.want(r) {
						want = append(want, r)
					}
				}
				if len(want) == 0 {
					t.Fatal("the case expects no record: a weak test")
				}
				gotKeys, wantKeys := keys(got), keys(want)
				if !slices.Equal(gotKeys, wantKeys) {
					t.Fatalf("limit %d: got %d records %v\nwant %d %v", limit, len(got), gotKeys, len(want), wantKeys)
				}
			}
		})
	}
}

func keys(recs []control.AuditRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = key(r)
	}
	return out
}

func TestAuditRetention(t *testing.T) {
	t.Parallel()
	clk := newClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	e := newEnv(t, func(c *control.Config) {
		c.Now = clk.Now
		c.Audit.Retention = 30 * 24 * time.Hour
	})
	e.seed() // 20 records
	clk.Add(20 * 24 * time.Hour)
	e.must("PUT", "/v1/users/x1", `{"id":"x1","tenant":"alpha"}`)
	clk.Add(15 * 24 * time.Hour) // the seed is 35 days old, x1 15
	if n := len(all[control.AuditRecord](t, e, "/v1/audit", adminToken, 1000)); n != 21 {
		t.Fatalf("%d records before a write trims, want 21 (trimming happens in writes)", n)
	}
	e.must("PUT", "/v1/users/x2", `{"id":"x2","tenant":"alpha"}`)
	recs := all[control.AuditRecord](t, e, "/v1/audit", adminToken, 1000)
	if got := keys(recs); len(got) != 2 || !strings.HasPrefix(got[0], "users/x2@") || !strings.HasPrefix(got[1], "users/x1@") {
		t.Fatalf("after trimming: %v", got)
	}
	// the tenant indexes lost the trimmed records too
	if recs := all[control.AuditRecord](t, e, "/v1/audit?tenant=acme", adminToken, 1000); len(recs) != 0 {
		t.Fatalf("tenant index kept trimmed records: %v", keys(recs))
	}
	if recs := all[control.AuditRecord](t, e, "/v1/audit", userToken(t, "alice"), 1000); len(recs) != 2 {
		t.Fatalf("alice sees %v", keys(recs))
	}
	if v := e.metric("gatehouse_control_audit_trimmed_total", nil); v != 20 {
		t.Fatalf("gatehouse_control_audit_trimmed_total %v, want 20", v)
	}
}

// TestAuditRandomWrites checks the class: after random writes by random
// actors (some refused), the audit holds exactly the committed changes,
// one record each, and each view pages through exactly its tenants' part.
func TestAuditRandomWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	rng := rand.New(rand.NewPCG(7, 11))
	tenants := []string{"acme", "alpha", "beta", "gamma"}
	actors := []string{adminToken, userToken(t, "alice"), userToken(t, "erin"), userToken(t, "carol")}
	committed := 20
	for i := range 60 {
		tok := actors[rng.IntN(len(actors))]
		id := "r" + itoa(rng.IntN(8))
		var r response
		if rng.IntN(3) == 0 {
			r = e.do("DELETE", "/v1/users/"+id, tok, "")
		} else {
			r = e.do("PUT", "/v1/users/"+id, tok, `{"id":"`+id+`","tenant":"`+tenants[rng.IntN(len(tenants))]+`","labels":{"i":"`+itoa(i)+`"}}`)
		}
		if r.status == 200 {
			var a struct {
				Changes *int `json:"changes"`
			}
			_ = json.Unmarshal(r.body, &a)
			if a.Changes != nil {
				committed += *a.Changes
			} else {
				committed++
			}
		}
	}
	full := all[control.AuditRecord](t, e, "/v1/audit", adminToken, 1000)
	if len(full) != committed {
		t.Fatalf("%d records, %d changes committed", len(full), committed)
	}
	newestFirst(t, full)
	views := map[string][]string{
		actors[1]: {"alpha"}, actors[2]: {"beta"}, actors[3]: {"acme", "alpha", "beta"},
	}
	for tok, ts := range views {
		var want []string
		for _, r := range full {
			for _, x := range r.Tenants {
				if slices.Contains(ts, x) {
					want = append(want, key(r))
					break
				}
			}
		}
		for _, limit := range []int{2, 1000} {
			if got := keys(all[control.AuditRecord](t, e, "/v1/audit", tok, limit)); !slices.Equal(got, want) {
				t.Fatalf("view %v, limit %d: got %v\nwant %v", ts, limit, got, want)
			}
		}
	}
}
