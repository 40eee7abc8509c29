package control_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control"
)

// decision is a decision-log record as a sidecar uploads it: OPA's schema
// plus the gatehouse object.
type decision struct {
	DecisionID string            `json:"decision_id"`
	Timestamp  time.Time         `json:"timestamp"`
	Path       string            `json:"path"`
	Input      map[string]any    `json:"input"`
	Result     any               `json:"result"`
	Labels     map[string]string `json:"labels"`
	Gatehouse  struct {
		Tenant     string `json:"tenant"`
		Subject    string `json:"subject"`
		Issuer     string `json:"issuer"`
		Allowed    bool   `json:"allowed"`
		HTTPStatus int    `json:"http_status"`
		Reason     string `json:"reason"`
	} `json:"gatehouse"`
}

func newDecision(id, tenant, subject string, allowed bool, ts time.Time, pad int) decision {
	d := decision{
		DecisionID: id, Timestamp: ts, Path: "envoy/authz/allow",
		Input:  map[string]any{"attributes": map[string]any{"request": map[string]any{"http": map[string]any{"path": "/t/" + tenant + "/x", "body": strings.Repeat("p", pad)}}}},
		Result: map[string]any{"allowed": allowed},
		Labels: map[string]string{"id": "sidecar-1", "version": "test"},
	}
	d.Gatehouse.Tenant, d.Gatehouse.Subject, d.Gatehouse.Issuer = tenant, subject, issuerURL
	d.Gatehouse.Allowed = allowed
	d.Gatehouse.HTTPStatus = map[bool]int{true: 200, false: 403}[allowed]
	return d
}

// upload POSTs records to /v1/logs as the sidecar's uploader does (gzip'd
// JSON array with Content-Encoding: gzip), or plain.
func upload(tb testing.TB, e *env, token string, zip bool, records any) response {
	tb.Helper()
	body, err := json.Marshal(records)
	if err != nil {
		tb.Fatal(err)
	}
	hdr := []string{"Content-Type", "application/json"}
	if zip {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write(body)
		_ = zw.Close()
		body = b.Bytes()
		hdr = append(hdr, "Content-Encoding", "gzip")
	}
	return e.do("POST", "/v1/logs", token, string(body), hdr...)
}

type intake struct {
	Stored, Duplicates, Dropped, Evicted int
}

func intakeOf(tb testing.TB, r response) intake {
	tb.Helper()
	if r.status != 200 {
		tb.Fatalf("POST /v1/logs: %s", r)
	}
	var a intake
	if err := json.Unmarshal(r.body, &a); err != nil {
		tb.Fatal(err)
	}
	return a
}

func ids(ds []decision) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.DecisionID
	}
	return out
}

func TestDecisionIntake(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	batch := []decision{
		newDecision("d1", "alpha", "alice", true, t0, 0),
		newDecision("d2", "beta", "bob", false, t0.Add(time.Second), 0),
	}
	if a := intakeOf(t, upload(t, e, syncToken, true, batch)); a != (intake{Stored: 2}) {
		t.Fatalf("gzip'd upload: %+v", a)
	}
	// the same batch again (an upload whose answer was lost): stored once
	if a := intakeOf(t, upload(t, e, syncToken, true, batch)); a != (intake{Duplicates: 2}) {
		t.Fatalf("repeated upload: %+v", a)
	}
	// plain JSON, the admin token, and records that cannot be stored
	mixed := []any{
		newDecision("d3", "gamma", "dave", true, t0.Add(2*time.Second), 0),
		"not an object",
		map[string]any{"timestamp": t0},                                         // no decision_id
		map[string]any{"decision_id": 7},                                        // wrong type
		map[string]any{"decision_id": strings.Repeat("x", 300)},                 // id too long
		newDecision("d3", "gamma", "dave", true, t0, 0),                         // a duplicate inside the batch
		newDecision("d4", "gamma", "dave", false, t0.Add(3*time.Second), 2<<20), // over max_entity_bytes
	}
	if a := intakeOf(t, upload(t, e, adminToken, false, mixed)); a != (intake{Stored: 1, Duplicates: 1, Dropped: 5}) {
		t.Fatalf("mixed upload: %+v", a)
	}
	for reason, want := range map[string]float64{"invalid": 4, "too_large": 1, "evicted": 0} {
		if v := e.metric("gatehouse_control_decisions_dropped_total", map[string]string{"reason": reason}); v != want {
			t.Errorf("dropped{%s} = %v, want %v", reason, v, want)
		}
	}
	if v := e.metric("gatehouse_control_decisions_received_total", map[string]string{"result": "duplicate"}); v != 3 {
		t.Errorf("received{duplicate} = %v, want 3", v)
	}
	got := all[decision](t, e, "/v1/decisions", adminToken, 2)
	if !slices.Equal(ids(got), []string{"d3", "d2", "d1"}) {
		t.Fatalf("stored %v, want d3 d2 d1 (newest first, once each)", ids(got))
	}
	if got[0].Labels["id"] != "sidecar-1" || got[0].Gatehouse.Subject != "dave" {
		t.Fatalf("record not kept as sent: %+v", got[0])
	}

	cases := map[string]struct {
		token, body string
		header      []string
		status      int
	}{
		"no token":                {"", "[]", nil, 401},
		"a user's token":          {userToken(t, "carol"), "[]", nil, 403},
		"not an array":            {syncToken, `{"decision_id":"x"}`, nil, 400},
		"not json":                {syncToken, `[{`, nil, 400},
		"gzip header, plain body": {syncToken, `[]`, []string{"Content-Encoding", "gzip"}, 400},
		"empty array":             {syncToken, `[]`, nil, 200},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if r := e.do("POST", "/v1/logs", c.token, c.body, c.header...); r.status != c.status {
				t.Fatalf("got %s, want %d", r, c.status)
			}
		})
	}
}

func TestDecisionIntakeBounds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.MaxBodyBytes = 64 << 10; c.MaxEntityBytes = 4 << 10 })
	// a gzip bomb: small compressed, over max_body_bytes decompressed
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write([]byte("["))
	_, _ = io.Copy(zw, io.LimitReader(zeroes{}, 1<<20))
	_ = zw.Close()
	if r := e.do("POST", "/v1/logs", syncToken, b.String(), "Content-Encoding", "gzip"); r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("gzip bomb: %s", r)
	}
	if r := e.do("POST", "/v1/logs", syncToken, "["+strings.Repeat(" ", 70<<10)+"]"); r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("body over max_body_bytes: %s", r)
	}
}

type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

// TestDecisionStoreBounded: the store keeps at most decisions.max_mb; the
// oldest go first and are counted; usage keeps counting every decision.
func TestDecisionStoreBounded(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	clk := newClock(t0.Add(24 * time.Hour)) // usage is kept for audit.retention from now
	e := newEnv(t, func(c *control.Config) { c.Decisions.MaxMB = 1; c.Now = clk.Now })
	const n, per = 600, 50
	for i := 0; i < n; i += per {
		var batch []decision
		for j := i; j < i+per; j++ {
			batch = append(batch, newDecision(fmt.Sprintf("d%04d", j), "alpha", "alice", j%3 != 0, t0.Add(time.Duration(j)*time.Second), 4000))
		}
		intakeOf(t, upload(t, e, syncToken, (i/per)%2 == 0, batch))
	}
	kept := all[decision](t, e, "/v1/decisions", adminToken, 1000)
	evicted := e.metric("gatehouse_control_decisions_dropped_total", map[string]string{"reason": "evicted"})
	if len(kept) == 0 || len(kept) >= n || len(kept)+int(evicted) != n {
		t.Fatalf("kept %d, evicted %v of %d: want some evicted, and every record kept or counted", len(kept), evicted, n)
	}
	for i, d := range kept { // the newest, in order
		if want := fmt.Sprintf("d%04d", n-1-i); d.DecisionID != want {
			t.Fatalf("kept[%d] = %s, want %s", i, d.DecisionID, want)
		}
	}
	if v := e.metric("gatehouse_control_decisions_bytes", nil); v > 1<<20 || v < 1<<20-5000 { // full, to one record
		t.Fatalf("gatehouse_control_decisions_bytes %v", v)
	}
	// an evicted id may be uploaded again: it is new to the store
	if a := intakeOf(t, upload(t, e, syncToken, false, []decision{newDecision("d0000", "alpha", "alice", true, t0.Add(time.Hour), 0)})); a.Stored != 1 {
		t.Fatalf("re-upload of an evicted id: %+v", a)
	}
	// a record stamped far in the future is filed at the receipt time, so
	// it is evicted in its turn
	intakeOf(t, upload(t, e, syncToken, false, []decision{newDecision("future", "alpha", "alice", true, t0.Add(24*365*time.Hour), 0)}))
	if got := all[decision](t, e, "/v1/decisions?since=2026-03-02T10:00:00Z&until=2026-03-02T10:00:00Z", adminToken, 10); len(got) != 1 || got[0].DecisionID != "future" {
		t.Fatalf("a future record filed at %v: %v", clk.Now(), ids(got))
	}
	// usage counted all n (and the re-upload)
	var u struct {
		Items []control.UsageItem `json:"items"`
	}
	r := e.must("GET", "/v1/usage?tenant=alpha&from=2026-03-01T00:00:00Z&to=2026-03-03T00:00:00Z", "")
	if err := json.Unmarshal(r.body, &u); err != nil {
		t.Fatal(err)
	}
	var allowed, denied uint64
	for _, it := range u.Items {
		allowed, denied = allowed+it.Allowed, denied+it.Denied
	}
	if allowed != n-n/3+2 || denied != n/3 {
		t.Fatalf("usage %d allowed, %d denied; want %d and %d: %+v", allowed, denied, n-n/3+2, n/3, u.Items)
	}
}

func TestDecisionsAndUsageVisibility(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	e := newEnv(t, newClock(t0.Add(24*time.Hour)).edit())
	e.seed()
	var batch []decision
	tenants := []string{"acme", "alpha", "beta", "gamma", ""}
	for i := range 40 {
		tn := tenants[i%len(tenants)]
		batch = append(batch, newDecision(fmt.Sprintf("d%02d", i), tn, []string{"alice", "bob"}[i%2], i%4 != 0, t0.Add(time.Duration(i)*10*time.Minute), 0))
	}
	intakeOf(t, upload(t, e, syncToken, true, batch))
	want := func(f func(d decision) bool) []string {
		var out []string
		for i := len(batch) - 1; i >= 0; i-- {
			if f(batch[i]) {
				out = append(out, batch[i].DecisionID)
			}
		}
		return out
	}
	in := func(ts ...string) func(d decision) bool {
		return func(d decision) bool { return slices.Contains(ts, d.Gatehouse.Tenant) }
	}
	cases := map[string]struct {
		token, query string
		status       int
		want         func(d decision) bool
	}{
		"admin sees all":               {adminToken, "", 200, func(decision) bool { return true }},
		"admin, one tenant":            {adminToken, "tenant=gamma", 200, in("gamma")},
		"tenant admin":                 {userToken(t, "alice"), "", 200, in("alpha")},
		"tenant admin, another tenant": {userToken(t, "alice"), "tenant=beta", 403, nil},
		"SP admin":                     {userToken(t, "carol"), "", 200, in("acme", "alpha", "beta")},
		"SP admin, a child":            {userToken(t, "carol"), "tenant=beta", 200, in("beta")},
		"SP admin, unrelated":          {userToken(t, "carol"), "tenant=gamma", 403, nil},
		"grant admin":                  {userToken(t, "bob"), "", 403, nil},
		"no rights":                    {userToken(t, "dave"), "", 403, nil},
		"sync token reads nothing":     {syncToken, "", 403, nil},
		"allowed=false":                {adminToken, "allowed=false", 200, func(d decision) bool { return !d.Gatehouse.Allowed }},
		"subject":                      {userToken(t, "carol"), "subject=bob", 200, func(d decision) bool { return in("acme", "alpha", "beta")(d) && d.Gatehouse.Subject == "bob" }},
		"since and until": {adminToken, "since=2026-03-01T11:00:00Z&until=2026-03-01T12:00:00Z", 200, func(d decision) bool {
			return !d.Timestamp.Before(t0.Add(time.Hour)) && !d.Timestamp.After(t0.Add(2*time.Hour))
		}},
		"bad allowed": {adminToken, "allowed=maybe", 400, nil},
		"bad after":   {adminToken, "after=00", 400, nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := "/v1/decisions?" + c.query
			if c.status != 200 {
				if r := e.do("GET", path, c.token, ""); r.status != c.status {
					t.Fatalf("got %s, want %d", r, c.status)
				}
				return
			}
			w := want(c.want)
			if len(w) == 0 {
				t.Fatal("no record expected: a weak case")
			}
			for _, limit := range []int{1, 7, 1000} {
				if got := ids(all[decision](t, e, path, c.token, limit)); !slices.Equal(got, w) {
					t.Fatalf("limit %d: got %v\nwant %v", limit, got, w)
				}
			}
		})
	}

	usage := func(token, query string) (int, []control.UsageItem) {
		path := "/v1/usage?" + query
		if !strings.Contains(query, "from=") {
			path += "&from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z"
		}
		r := e.do("GET", path, token, "")
		var u struct {
			Items []control.UsageItem `json:"items"`
		}
		_ = json.Unmarshal(r.body, &u)
		return r.status, u.Items
	}
	counts := func(f func(d decision) bool) map[string][2]uint64 {
		out := map[string][2]uint64{}
		for _, d := range batch {
			if !f(d) {
				continue
			}
			k := d.Gatehouse.Tenant + "@" + d.Timestamp.Truncate(time.Hour).Format(time.RFC3339)
			c := out[k]
			if d.Gatehouse.Allowed {
				c[0]++
			} else {
				c[1]++
			}
			out[k] = c
		}
		return out
	}
	ucases := map[string]struct {
		token, query string
		status       int
		want         func(d decision) bool
	}{
		"admin":                 {adminToken, "", 200, func(decision) bool { return true }},
		"admin, one tenant":     {adminToken, "tenant=beta", 200, in("beta")},
		"tenant admin":          {userToken(t, "erin"), "", 200, in("beta")},
		"SP admin":              {userToken(t, "carol"), "", 200, in("acme", "alpha", "beta")},
		"tenant admin, another": {userToken(t, "erin"), "tenant=alpha", 403, nil},
		"no rights":             {userToken(t, "dave"), "", 403, nil},
		"an hour's range":       {adminToken, "tenant=alpha&from=2026-03-01T11:30:00Z&to=2026-03-01T13:00:00Z", 200, func(d decision) bool { return in("alpha")(d) && d.Timestamp.Hour() >= 11 && d.Timestamp.Hour() < 13 }},
		"to before from":        {adminToken, "from=2026-03-03T00:00:00Z&to=2026-03-02T00:00:00Z", 400, nil},
	}
	for name, c := range ucases {
		t.Run("usage "+name, func(t *testing.T) {
			t.Parallel()
			status, items := usage(c.token, c.query)
			if status != c.status {
				t.Fatalf("status %d, want %d", status, c.status)
			}
			if c.status != 200 {
				return
			}
			got := map[string][2]uint64{}
			for _, it := range items {
				got[it.Tenant+"@"+it.Hour.Format(time.RFC3339)] = [2]uint64{it.Allowed, it.Denied}
			}
			w := counts(c.want)
			if len(w) == 0 || fmt.Sprint(got) != fmt.Sprint(w) {
				t.Fatalf("usage %v\nwant %v", got, w)
			}
		})
	}
}

// TestTenantQueryReadsItsIndex: a tenant's query walks its own index, so
// records of other tenants, however many, cost it nothing (a scan would
// stop at the page's scan budget, 10,000 entries, with no item).
func TestTenantQueryReadsItsIndex(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	e := newEnv(t, newClock(t0.Add(time.Hour)).edit())
	e.seed()
	batch := []decision{newDecision("mine", "alpha", "alice", true, t0, 0)}
	for i := range 12000 {
		batch = append(batch, newDecision(fmt.Sprintf("g%05d", i), "gamma", "dave", true, t0.Add(time.Duration(i+1)*time.Millisecond), 0))
	}
	intakeOf(t, upload(t, e, syncToken, true, batch))
	for _, tok := range []string{userToken(t, "alice"), userToken(t, "carol")} {
		r := e.do("GET", "/v1/decisions?limit=10", tok, "")
		var p page[decision]
		if err := json.Unmarshal(r.body, &p); err != nil || r.status != 200 {
			t.Fatalf("%s (%v)", r, err)
		}
		if len(p.Items) != 1 || p.Items[0].DecisionID != "mine" || p.Next != "" {
			t.Fatalf("got %d items, next %q: want alpha's one record in one page", len(p.Items), p.Next)
		}
	}
	// the admin's unfiltered scan is bounded per page, and continues
	r := e.do("GET", "/v1/decisions?limit=1000&allowed=false", adminToken, "")
	var p page[decision]
	if err := json.Unmarshal(r.body, &p); err != nil || len(p.Items) != 0 || p.Next == "" {
		t.Fatalf("a filter matching nothing: %d items, next %q: want an empty page that continues", len(p.Items), p.Next)
	}
}

func TestUsageRetention(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	clk := newClock(t0)
	e := newEnv(t, func(c *control.Config) { c.Now = clk.Now; c.Audit.Retention = 48 * time.Hour })
	intakeOf(t, upload(t, e, syncToken, false, []decision{newDecision("d1", "alpha", "alice", true, t0, 0)}))
	clk.Add(72 * time.Hour)
	intakeOf(t, upload(t, e, syncToken, false, []decision{newDecision("d2", "alpha", "alice", false, clk.Now(), 0)}))
	r := e.must("GET", "/v1/usage?from=2026-02-01T00:00:00Z&to=2026-04-01T00:00:00Z", "")
	var u struct {
		Items []control.UsageItem `json:"items"`
	}
	if err := json.Unmarshal(r.body, &u); err != nil {
		t.Fatal(err)
	}
	if len(u.Items) != 1 || u.Items[0].Denied != 1 || !u.Items[0].Hour.Equal(t0.Add(72*time.Hour)) {
		t.Fatalf("usage after retention: %+v", u.Items)
	}
}
