package crashtest

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// The decision logs, the audit store and the fleet view together (issue 10,
// SPEC §9), with real processes: one `gatehouse control` and two `gatehouse
// serve` sidecars uploading their decision logs to it and reporting their
// state, over the demo world (cmd/gatehouse/devworld.json).

// logQuery is one check of the demo world and the answer it must get.
type logQuery struct {
	user, tenant, project string // user "" sends no token
	allowed               bool
	logged                string // the record's gatehouse.tenant
	badMinRevision        bool   // a malformed x-gatehouse-min-revision: denied 400 before evaluation
}

// logQueries mix allows and denies (no role, inactive user, foreign
// tenant, no token) over several tenants. A deny is filed under the tenant
// it is about when the caller got past step 2 (no_role: the target);
// otherwise (inactive user, no token) under none: admin token only.
var logQueries = []logQuery{
	{"bob", "beta", "timekeeping", true, "beta", false},
	{"alice", "alpha", "portal", true, "alpha", false},
	{"alice", "beta", "timekeeping", true, "beta", false},
	{"carol", "acme", "dashboard", true, "acme", false},
	{"erin", "partners", "partner-app", true, "partners", false},
	{"frank", "initech", "devices", true, "initech", false},
	{"mallory", "alpha", "portal", false, "alpha", false},
	{"dave", "beta", "timekeeping", false, "", false},
	{"bob", "alpha", "portal", false, "alpha", false},
	{"", "beta", "timekeeping", false, "", false},
	{"alice", "alpha", "portal", false, "", true},
}

// fleetWorld is a control endpoint (from a config file: issuers for
// delegated admins, a short sidecar_ttl) with the demo world, and sidecars
// logging decisions to it.
type fleetWorld struct {
	k        *keys
	cfgFile  string
	policies string // the shipped policies plus a mask policy
	logsURL  string // where sidecars upload decision logs: the control's /v1/logs unless set
	ctl      *control
	adm      *admin
	seedRev  uint64
}

// newFleetWorld starts the control; extra is more of its YAML configuration.
func newFleetWorld(t *testing.T, ttl time.Duration, extra string) *fleetWorld {
	t.Helper()
	k := newKeys(t)
	w := &fleetWorld{k: k, cfgFile: filepath.Join(t.TempDir(), "control.yaml")}
	testutil.WriteFile(t, w.cfgFile, fmt.Sprintf(`data_dir: %q
admin_token_file: %q
sync_token_file: %q
sidecar_ttl: %s
issuers:
  - {issuer: %q, audiences: [api], algorithms: [RS256], public_key_file: %q}
log: {level: info, format: json}
%s`, filepath.Join(t.TempDir(), "control"), k.adminFile, k.syncFile, ttl, issuer, k.pubFile, extra))
	w.policies = filepath.Join(t.TempDir(), "policies")
	if err := os.CopyFS(w.policies, os.DirFS("../../policies")); err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, filepath.Join(w.policies, "system", "log.rego"), "package system.log\n\nmask contains \"/input/attributes/request/http/headers/x-ssn\"\n")
	w.start(t, "127.0.0.1:0")
	world, err := os.ReadFile("../../cmd/gatehouse/devworld.json")
	if err != nil {
		t.Fatal(err)
	}
	status, body, err := w.adm.do(http.MethodPost, "/v1/batch", world)
	if err != nil || status != http.StatusOK {
		t.Fatalf("seed the demo world: %v %d %s", err, status, body)
	}
	var ans struct{ Revision uint64 }
	if err := json.Unmarshal(body, &ans); err != nil {
		t.Fatal(err)
	}
	w.seedRev = ans.Revision
	return w
}

// start starts (or restarts, on the same address and file) the control.
func (w *fleetWorld) start(t *testing.T, address string) {
	t.Helper()
	p := startProc(t, "control", "control", "--config", w.cfgFile, "--addr", address)
	m := p.waitLog(t, 30*time.Second, "control listening", nil)
	w.ctl = &control{proc: p, addr: addr(m["addr"])}
	w.ctl.url = "http://" + w.ctl.addr
	w.adm = newAdmin(w.ctl, w.k)
}

// loggingSidecar is a sidecar whose decision logs go to a file and to the
// control's /v1/logs, reporting its state every 300ms.
type loggingSidecar struct {
	*sidecar
	id, logFile string
	answers     map[string]answered // by decision id
}

// answered is what an answer said besides allow/deny: the record must say
// the same.
type answered struct {
	status         int
	reason         string // from a deny's JSON body; "" when it has none
	policyRevision string
	tenancyRev     uint64
}

// fastReports uploads decision logs every 100ms.
const fastReports = "{min_delay_seconds: 0.1, max_delay_seconds: 0.5}"

// maskedSSN is a header value the mask policy erases from every record.
const maskedSSN = "ssn-123-45-6789-secret"

// startSidecar starts a sidecar; reporting is its decision log upload's
// reporting settings (YAML flow mapping).
func (w *fleetWorld) startSidecar(t *testing.T, id, reporting string) *loggingSidecar {
	t.Helper()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "decisions.log")
	cfg := fmt.Sprintf(`id: %s
labels: {zone: z-%s}
listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", ops: "127.0.0.1:0"}
policies: {dir: %q}
data:
  dir: %q
  control_url: %q
  token_file: %q
  reconnect_max_backoff: 300ms
  status_interval: 300ms
issuers:
  - {issuer: %q, audiences: [api], algorithms: [RS256], public_key_file: %q}
decision_logs:
  file: {path: %q}
  service:
    url: %q
    token_file: %q
    reporting: %s
log: {level: info, format: json}
`, id, id, w.policies, filepath.Join(dir, "var"), w.ctl.url, w.k.syncFile, issuer, w.k.pubFile,
		logFile, cmp.Or(w.logsURL, w.ctl.url+"/v1/logs"), w.k.syncFile, reporting)
	file := filepath.Join(dir, "serve.yaml")
	testutil.WriteFile(t, file, cfg)
	p := startProc(t, "sidecar "+id, "serve", "--config", file)
	m := p.waitLog(t, 30*time.Second, "gatehouse serve starting", nil)
	s := &sidecar{proc: p, grpcAddr: addr(m["grpc"]), http: addr(m["http"]), opsURL: "http://" + addr(m["ops"])}
	conn := testutil.Dial(t, s.grpcAddr)
	s.client = authv3.NewAuthorizationClient(conn)
	return &loggingSidecar{sidecar: s, id: id, logFile: logFile, answers: map[string]answered{}}
}

// decide asks q over gRPC or HTTP and returns the answer's decision id; the
// answer must be q's. Over HTTP the token is in the query string too (as
// some clients send it); every request carries a header the mask policy
// erases.
func (s *loggingSidecar) decide(t *testing.T, q logQuery, overHTTP bool) string {
	t.Helper()
	req := testutil.Request{Path: "/t/" + q.tenant + "/items", Headers: map[string]string{"x-ssn": maskedSSN},
		ContextExtensions: map[string]string{"project": q.project}}
	if q.badMinRevision {
		req.Headers["x-gatehouse-min-revision"] = "soon"
	}
	if q.user != "" {
		req.Headers["authorization"] = "Bearer " + token(t, q.user)
		if overHTTP {
			req.Path += "?access_token=" + token(t, q.user)
		}
	}
	ctx, cancel := contextTimeout(t, 10*time.Second)
	defer cancel()
	var allowed bool
	var id, body string
	var ans answered
	if overHTTP {
		resp := testutil.DoHTTP(t, ctx, nil, "http://"+s.http, req)
		allowed, id, body = resp.Status == http.StatusOK, resp.Header.Get("x-gatehouse-decision-id"), resp.Body
		ans.status, ans.policyRevision = resp.Status, resp.Header.Get("x-gatehouse-policy-revision")
		ans.tenancyRev, _ = strconv.ParseUint(resp.Header.Get("x-gatehouse-tenancy-revision"), 10, 64)
	} else {
		resp, err := s.client.Check(ctx, testutil.CheckRequest(req))
		if err != nil {
			t.Fatalf("%s: check %+v: %v", s.id, q, err)
		}
		allowed = resp.GetOkResponse() != nil
		meta := resp.GetDynamicMetadata().GetFields()
		id = meta["decision_id"].GetStringValue()
		ans.status, body = http.StatusOK, resp.GetDeniedResponse().GetBody()
		if !allowed {
			ans.status = int(resp.GetDeniedResponse().GetStatus().GetCode())
		}
		ans.policyRevision, ans.tenancyRev = meta["policy_revision"].GetStringValue(), uint64(meta["tenancy_revision"].GetNumberValue())
	}
	if allowed != q.allowed || id == "" {
		t.Fatalf("%s: %+v (HTTP %v): allowed %v, decision id %q", s.id, q, overHTTP, allowed, id)
	}
	if !allowed {
		var b struct{ Reason string }
		_ = json.Unmarshal([]byte(body), &b)
		ans.reason = b.Reason
	}
	if q.badMinRevision && (ans.status != http.StatusBadRequest || ans.reason != "bad_request") {
		t.Fatalf("%s: %+v (HTTP %v): %+v, want 400 bad_request", s.id, q, overHTTP, ans)
	}
	s.answers[id] = ans
	return id
}

// logRecord is what the test reads of a decision log record.
type logRecord struct {
	DecisionID string            `json:"decision_id"`
	Timestamp  time.Time         `json:"timestamp"`
	Labels     map[string]string `json:"labels"`
	Erased     []string          `json:"erased"`
	Gatehouse  struct {
		Tenant          string `json:"tenant"`
		Subject         string `json:"subject"`
		Allowed         bool   `json:"allowed"`
		HTTPStatus      int    `json:"http_status"`
		Reason          string `json:"reason"`
		PolicyRevision  string `json:"policy_revision"`
		TenancyRevision uint64 `json:"tenancy_revision"`
	} `json:"gatehouse"`
}

// fileRecords reads a decision log file: every record, in order.
func fileRecords(t *testing.T, path string) ([]logRecord, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var recs []logRecord
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var r logRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v: %.200s", path, err, sc.Bytes())
		}
		recs = append(recs, r)
	}
	return recs, b
}

// pages reads every page of a list endpoint (path with its query) with
// bearer tok; it returns the items, the raw answers, and the status of the
// first page (a refusal stops there).
func (w *fleetWorld) pages(t *testing.T, path, tok string) ([]json.RawMessage, []byte, int) {
	t.Helper()
	var items []json.RawMessage
	var raw []byte
	after := ""
	for range 1000 {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		status, body := w.get(t, path+sep+"limit=70&after="+url.QueryEscape(after), tok)
		raw = append(raw, body...)
		if status != http.StatusOK {
			if items != nil {
				t.Fatalf("GET %s: page after %q: %d %s", path, after, status, body)
			}
			return nil, raw, status
		}
		var page struct {
			Items []json.RawMessage `json:"items"`
			Next  string            `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		items = append(items, page.Items...)
		if page.Next == "" {
			if items == nil {
				items = []json.RawMessage{}
			}
			return items, raw, status
		}
		after = page.Next
	}
	t.Fatalf("GET %s: more than 1000 pages", path)
	return nil, nil, 0
}

func (w *fleetWorld) get(t *testing.T, path, tok string) (int, []byte) {
	t.Helper()
	a := *w.adm
	a.token = tok
	status, body, err := a.do(http.MethodGet, path, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return status, body
}

// decisions reads every decision record at the control (admin token).
func (w *fleetWorld) decisions(t *testing.T) ([]logRecord, []byte) {
	t.Helper()
	items, raw, status := w.pages(t, "/v1/decisions", w.k.admin)
	if status != http.StatusOK {
		t.Fatalf("GET /v1/decisions: %d %s", status, raw)
	}
	recs := make([]logRecord, len(items))
	for i, it := range items {
		if err := json.Unmarshal(it, &recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return recs, raw
}

// sortedIDs returns the decision ids of decision records, sorted.
func sortedIDs(items []json.RawMessage) []string {
	ids := make([]string, 0, len(items))
	for _, it := range items {
		var r logRecord
		_ = json.Unmarshal(it, &r)
		ids = append(ids, r.DecisionID)
	}
	slices.Sort(ids)
	return ids
}

// revisionView is GET /v1/revisions/{R}.
type revisionView struct {
	Revision uint64   `json:"revision"`
	Sidecars int      `json:"sidecars"`
	Applied  int      `json:"applied"`
	Pending  []string `json:"pending"`
}

func (w *fleetWorld) revision(t *testing.T, rev uint64) revisionView {
	t.Helper()
	status, body := w.get(t, fmt.Sprintf("/v1/revisions/%d", rev), w.k.admin)
	var v revisionView
	if status != http.StatusOK || json.Unmarshal(body, &v) != nil {
		t.Fatalf("GET /v1/revisions/%d: %d %s", rev, status, body)
	}
	return v
}

// metric sums every series of name in a Prometheus text answer; name may
// end with a full label set ({reason="evicted"}) to read that series only.
func metric(t *testing.T, metricsURL, name string) float64 {
	t.Helper()
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatalf("GET %s: %v", metricsURL, err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", metricsURL, l, err)
		}
		sum += v
	}
	return sum
}

// secrets are every bearer credential the test used.
func (w *fleetWorld) secrets(t *testing.T) []string {
	out := []string{w.k.admin, "crash-sync-token", maskedSSN}
	for _, u := range []string{"alice", "bob", "carol", "dave", "erin", "frank", "mallory"} {
		out = append(out, token(t, u))
	}
	return out
}

func (w *fleetWorld) noSecrets(t *testing.T, what string, b []byte) {
	t.Helper()
	for _, s := range w.secrets(t) {
		if bytes.Contains(b, []byte(s)) {
			t.Errorf("%s holds a bearer credential (%.12s...)", what, s)
		}
	}
}

// TestDecisionLogsFleetAuditEndToEnd: decision records of a few hundred
// mixed decisions arrive exactly once in each sidecar's file and at the
// control, token-free, joined to the answers' decision ids, usage
// matching; audit and decisions visible per membership; a revocation
// followed through the fleet view with one sidecar killed; the control's
// intake down while the sidecars keep deciding: every record delivered or
// counted as dropped.
func TestDecisionLogsFleetAuditEndToEnd(t *testing.T) {
	start := time.Now()
	const ttl = 3 * time.Second
	w := newFleetWorld(t, ttl, "")
	a, b := w.startSidecar(t, "side-a", fastReports), w.startSidecar(t, "side-b", fastReports)
	for _, s := range []*loggingSidecar{a, b} {
		s.waitReady(t, 30*time.Second)
		s.waitRevision(t, w.seedRev, 30*time.Second)
	}

	// 1. A few hundred mixed decisions, gRPC and HTTP, on both sidecars.
	decided := map[string]string{} // decision id -> sidecar id
	expect := map[string]logQuery{}
	for i := range 300 {
		s := []*loggingSidecar{a, b}[i%2]
		q := logQueries[(i/2)%len(logQueries)]
		id := s.decide(t, q, i%3 == 0)
		if _, dup := decided[id]; dup {
			t.Fatalf("decision id %s answered twice", id)
		}
		decided[id], expect[id] = s.id, q
	}
	checkFile := func(s *loggingSidecar) {
		t.Helper()
		var recs []logRecord
		var raw []byte
		testutil.Eventually(t, 20*time.Second, func() (bool, string) {
			recs, raw = fileRecords(t, s.logFile)
			mine := 0
			for _, id := range decided {
				if id == s.id {
					mine++
				}
			}
			return len(recs) >= mine, fmt.Sprintf("%s: %d records in the file, %d decided", s.id, len(recs), mine)
		})
		w.noSecrets(t, s.id+"'s decision log file", raw)
		seen := map[string]bool{}
		for _, r := range recs {
			if decided[r.DecisionID] != s.id || seen[r.DecisionID] {
				t.Errorf("%s's file: record %s: decided by %q, seen before %v", s.id, r.DecisionID, decided[r.DecisionID], seen[r.DecisionID])
			}
			seen[r.DecisionID] = true
			q := expect[r.DecisionID]
			if r.Gatehouse.Allowed != q.allowed || r.Labels["id"] != s.id || r.Labels["version"] == "" || r.Gatehouse.Tenant != q.logged ||
				!r.joins(s.answers[r.DecisionID]) ||
				!slices.Contains(r.Erased, "/input/attributes/request/http/headers/x-ssn") {
				t.Errorf("%s's file: record %+v for %+v", s.id, r, q)
			}
		}
	}
	checkFile(a)
	checkFile(b)
	var atControl []logRecord
	var raw []byte
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		atControl, raw = w.decisions(t)
		return len(atControl) >= len(decided), fmt.Sprintf("%d records at the control, %d decided", len(atControl), len(decided))
	})
	w.noSecrets(t, "GET /v1/decisions", raw)
	seen := map[string]bool{}
	for _, r := range atControl {
		q, ok := expect[r.DecisionID]
		by := map[string]*loggingSidecar{a.id: a, b.id: b}[decided[r.DecisionID]]
		if !ok || seen[r.DecisionID] || r.Labels["id"] != decided[r.DecisionID] || r.Gatehouse.Allowed != q.allowed || !r.joins(by.answers[r.DecisionID]) {
			t.Errorf("at the control: record %+v (known %v, seen before %v) for %+v by %s", r, ok, seen[r.DecisionID], q, decided[r.DecisionID])
		}
		seen[r.DecisionID] = true
	}
	if len(seen) != len(decided) {
		t.Fatalf("%d of %d decisions at the control", len(seen), len(decided))
	}
	w.checkUsage(t, atControl)
	w.checkFilters(t, atControl)
	t.Logf("1: %d decisions, each once in its sidecar's file and at the control (%v)", len(decided), time.Since(start).Round(time.Millisecond))

	// 4. Audit and decisions visibility per membership: a tenant admin (bob,
	// beta), an SP admin (carol, acme: alpha, beta, partners too), the
	// admin, a project-grant admin and a user without memberships (403).
	// Delegated writes first, so that the audit has their records.
	for _, wr := range []struct{ who, path, body string }{
		{"bob", "/v1/users/bob-intern", `{"id": "bob-intern", "tenant": "beta", "kind": "human", "status": "active"}`},
		{"carol", "/v1/tenants/delta", `{"id": "delta", "name": "Delta", "kind": "customer", "parent": "acme"}`},
	} {
		d := *w.adm
		d.token = token(t, wr.who)
		status, body, err := d.do(http.MethodPut, wr.path, []byte(wr.body))
		if err != nil || status != http.StatusOK {
			t.Fatalf("%s PUT %s: %v %d %s", wr.who, wr.path, err, status, body)
		}
	}
	type visible struct {
		who     string
		tok     string
		tenants []string // nil: everything
		status  int
	}
	all, _, _ := w.pages(t, "/v1/audit", w.k.admin)
	// Each delegated write's audit record names its actor, with the issuer,
	// and the tenants it touched.
	for _, want := range []struct{ collection, id, actor, tenant string }{
		{"users", "bob-intern", "bob", "beta"},
		{"tenants", "delta", "carol", "acme"},
	} {
		found := 0
		for _, it := range all {
			var r struct {
				Collection, ID, Op string
				Tenants            []string
				Actor              struct{ Kind, ID, Issuer string }
			}
			_ = json.Unmarshal(it, &r)
			if r.Collection != want.collection || r.ID != want.id {
				continue
			}
			found++
			if r.Op != "put" || r.Actor.Kind != "user" || r.Actor.ID != want.actor || r.Actor.Issuer != issuer || !slices.Contains(r.Tenants, want.tenant) {
				t.Errorf("audit record of %s/%s: %s", want.collection, want.id, it)
			}
		}
		if found != 1 {
			t.Errorf("%d audit records of %s/%s, want 1", found, want.collection, want.id)
		}
	}
	for _, v := range []visible{
		{"admin", w.k.admin, nil, http.StatusOK},
		{"bob", token(t, "bob"), []string{"beta"}, http.StatusOK},
		{"carol", token(t, "carol"), []string{"acme", "alpha", "beta", "partners", "delta"}, http.StatusOK},
		{"alice", token(t, "alice"), nil, http.StatusForbidden},
		{"mallory", token(t, "mallory"), nil, http.StatusForbidden},
	} {
		in := func(ts ...string) bool {
			if v.tenants == nil {
				return true
			}
			for _, x := range ts {
				if slices.Contains(v.tenants, x) {
					return true
				}
			}
			return false
		}
		audit, rawA, st := w.pages(t, "/v1/audit", v.tok)
		decs, rawD, stD := w.pages(t, "/v1/decisions", v.tok)
		w.noSecrets(t, v.who+"'s GET /v1/audit", rawA)
		w.noSecrets(t, v.who+"'s GET /v1/decisions", rawD)
		if st != v.status || stD != v.status {
			t.Errorf("%s: GET /v1/audit %d, /v1/decisions %d, want %d", v.who, st, stD, v.status)
			continue
		}
		if v.status != http.StatusOK {
			continue
		}
		var wantAudit []string
		for _, it := range all {
			var r struct{ Tenants []string }
			_ = json.Unmarshal(it, &r)
			if in(r.Tenants...) {
				wantAudit = append(wantAudit, string(it))
			}
		}
		gotAudit := make([]string, len(audit))
		for i, it := range audit {
			gotAudit[i] = string(it)
		}
		if len(wantAudit) == 0 || !slices.Equal(gotAudit, wantAudit) {
			t.Errorf("%s sees %d audit records, want the %d of its tenants %v", v.who, len(gotAudit), len(wantAudit), v.tenants)
		}
		var wantDec, gotDec []string
		for _, r := range atControl {
			if in(r.Gatehouse.Tenant) && (v.tenants == nil || r.Gatehouse.Tenant != "") {
				wantDec = append(wantDec, r.DecisionID)
			}
		}
		gotDec = sortedIDs(decs)
		slices.Sort(wantDec)
		if len(wantDec) == 0 || !slices.Equal(gotDec, wantDec) {
			t.Errorf("%s sees %d decision records, want the %d of its tenants %v", v.who, len(gotDec), len(wantDec), v.tenants)
		}
		if v.tenants != nil {
			if st, body := w.get(t, "/v1/audit?tenant=initech", v.tok); st != http.StatusForbidden {
				t.Errorf("%s: GET /v1/audit?tenant=initech: %d %s", v.who, st, body)
			}
		}
	}
	t.Logf("4: audit and decisions visibility per membership (%v)", time.Since(start).Round(time.Millisecond))

	// 2. The fleet view: both sidecars report; a revocation is pending, then
	// applied by both; a killed sidecar stays pending for later revisions
	// and drops out after sidecar_ttl; the lag gauge follows.
	status, body, err := w.adm.do(http.MethodDelete, "/v1/user_grants/bob-tk", nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("revoke bob-tk: %v %d %s", err, status, body)
	}
	var del struct{ Revision uint64 }
	_ = json.Unmarshal(body, &del)
	first := w.revision(t, del.Revision)
	if first.Sidecars != 2 || first.Applied+len(first.Pending) != 2 {
		t.Fatalf("revision %d right after the write: %+v", del.Revision, first)
	}
	testutil.Eventually(t, 15*time.Second, func() (bool, string) {
		v := w.revision(t, del.Revision)
		return v.Sidecars == 2 && v.Applied == 2 && len(v.Pending) == 0, fmt.Sprintf("revision %d: %+v", del.Revision, v)
	})
	revoked := logQuery{"bob", "beta", "timekeeping", false, "beta", false}
	a.decide(t, revoked, false)
	b.decide(t, revoked, true)
	t.Logf("2: revocation at %d: %d pending right after, then applied by both", del.Revision, len(first.Pending))

	b.kill()
	var revs []uint64
	for i := range 3 {
		status, body, err := w.adm.do(http.MethodPut, fmt.Sprintf("/v1/users/temp-%d", i), fmt.Appendf(nil, `{"id": "temp-%d", "tenant": "beta", "kind": "human", "status": "active"}`, i))
		if err != nil || status != http.StatusOK {
			t.Fatalf("write: %v %d %s", err, status, body)
		}
		var ans struct{ Revision uint64 }
		_ = json.Unmarshal(body, &ans)
		revs = append(revs, ans.Revision)
	}
	last := revs[len(revs)-1]
	metrics := w.ctl.url + "/metrics"
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		v := w.revision(t, last)
		lag := metric(t, metrics, "gatehouse_control_fleet_lag_revisions")
		return v.Sidecars == 2 && v.Applied == 1 && slices.Equal(v.Pending, []string{"side-b"}) && lag >= 3,
			fmt.Sprintf("revision %d with side-b killed: %+v, lag gauge %v", last, v, lag)
	})
	status, body, err = w.adm.do(http.MethodGet, "/v1/sidecars", nil)
	var fleet struct {
		Items []struct {
			ID              string            `json:"id"`
			TenancyRevision uint64            `json:"tenancy_revision"`
			LagRevisions    uint64            `json:"lag_revisions"`
			Labels          map[string]string `json:"labels"`
			Ready           bool              `json:"ready"`
		}
		Revision uint64
	}
	if err != nil || status != http.StatusOK || json.Unmarshal(body, &fleet) != nil || len(fleet.Items) != 2 {
		t.Fatalf("GET /v1/sidecars: %v %d %s", err, status, body)
	}
	for _, it := range fleet.Items {
		if it.LagRevisions != fleet.Revision-it.TenancyRevision || !it.Ready || it.Labels["zone"] != "z-"+it.ID ||
			(it.ID == "side-a") != (it.LagRevisions == 0) {
			t.Errorf("GET /v1/sidecars at revision %d: %+v", fleet.Revision, it)
		}
	}
	testutil.Eventually(t, ttl+10*time.Second, func() (bool, string) {
		v := w.revision(t, last)
		lag := metric(t, metrics, "gatehouse_control_fleet_lag_revisions")
		n := metric(t, metrics, "gatehouse_control_fleet_sidecars")
		return v.Sidecars == 1 && v.Applied == 1 && len(v.Pending) == 0 && lag == 0 && n == 1,
			fmt.Sprintf("revision %d after side-b's ttl: %+v, lag gauge %v, sidecars gauge %v", last, v, lag, n)
	})
	t.Logf("2: side-b killed: pending at %d, then gone after the ttl (%v)", last, time.Since(start).Round(time.Millisecond))

	// 3. The control's intake down (killed) while side-a and side-c (an
	// upload buffer of a few records) keep deciding from their caches;
	// restarted on the same address and file: every record is delivered
	// afterwards or counted as dropped, and the fleet view knows both again.
	c := w.startSidecar(t, "side-c", "{min_delay_seconds: 0.1, max_delay_seconds: 0.5, buffer_size_limit_bytes: 8000}")
	c.waitReady(t, 30*time.Second)
	for _, s := range []*loggingSidecar{a, c} {
		s.waitRevision(t, last, 10*time.Second)
	}
	dropped0 := map[string]float64{}
	for _, s := range []*loggingSidecar{a, c} {
		dropped0[s.id] = metric(t, s.opsURL+"/metrics", "gatehouse_decision_logs_dropped_total")
	}
	address := w.ctl.addr
	w.ctl.kill()
	down := map[string]map[string]bool{a.id: {}, c.id: {}}
	var slowest time.Duration
	for i := range 180 {
		s := []*loggingSidecar{a, a, c}[i%3]
		q := logQueries[i%len(logQueries)]
		if q == logQueries[0] {
			q.allowed = false // revoked above
		}
		t0 := time.Now()
		down[s.id][s.decide(t, q, i%2 == 0)] = true
		slowest = max(slowest, time.Since(t0))
	}
	if slowest > 2*time.Second {
		t.Errorf("a check took %v while the control was down", slowest)
	}
	time.Sleep(time.Second) // uploads fail and back off meanwhile
	w.start(t, address)
	var recs []logRecord
	for _, s := range []*loggingSidecar{a, c} {
		var delivered int
		var dropped float64
		testutil.Eventually(t, 20*time.Second, func() (bool, string) {
			recs, raw = w.decisions(t)
			delivered = 0
			for _, r := range recs {
				if down[s.id][r.DecisionID] {
					delivered++
				}
			}
			dropped = metric(t, s.opsURL+"/metrics", "gatehouse_decision_logs_dropped_total") - dropped0[s.id]
			return float64(delivered)+dropped == float64(len(down[s.id])),
				fmt.Sprintf("%s: %d decided while the control was down: %d delivered, %v dropped", s.id, len(down[s.id]), delivered, dropped)
		})
		if s == c && dropped == 0 {
			t.Errorf("side-c's upload buffer of 8000 bytes dropped nothing of %d records", len(down[s.id]))
		}
		fileRecs, _ := fileRecords(t, s.logFile)
		inFile := 0
		for _, r := range fileRecs {
			if down[s.id][r.DecisionID] {
				inFile++
			}
		}
		if inFile != len(down[s.id]) {
			t.Errorf("%s's file has %d of the %d decisions made while the control was down", s.id, inFile, len(down[s.id]))
		}
		t.Logf("3: %s: %d decisions with the control down: %d delivered after the restart, %v dropped", s.id, len(down[s.id]), delivered, dropped)
	}
	w.noSecrets(t, "GET /v1/decisions after the restart", raw)
	ids := map[string]bool{}
	for _, r := range recs {
		if ids[r.DecisionID] {
			t.Errorf("decision %s twice at the control", r.DecisionID)
		}
		ids[r.DecisionID] = true
	}
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		v := w.revision(t, last)
		return v.Sidecars == 2 && v.Applied == 2, fmt.Sprintf("the restarted control's view of revision %d: %+v", last, v)
	})
	w.checkUsage(t, recs)
	w.checkFilters(t, recs)
	t.Logf("3: slowest check %v with the control down; total %v", slowest.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestDecisionLogUploadWithinControlBodyLimit: a control endpoint whose
// max_body_bytes is below what a sidecar gathers between two uploads (a
// burst of decisions) still receives every record, exactly once: an
// upload answered 413 is split, not dropped. Then a burst right before
// SIGTERM: the records reach the control before the sidecar exits.
func TestDecisionLogUploadWithinControlBodyLimit(t *testing.T) {
	w := newFleetWorld(t, time.Minute, "max_body_bytes: 65536\n")
	s := w.startSidecar(t, "side-limit", "{min_delay_seconds: 1, max_delay_seconds: 2}")
	s.waitReady(t, 30*time.Second)
	s.waitRevision(t, w.seedRev, 30*time.Second)
	decided := map[string]bool{}
	for i := range 120 { // ~2.5 KB each: several times 64 KiB in one upload
		decided[s.decide(t, logQueries[i%len(logQueries)], i%2 == 0)] = true
	}
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		recs, _ := w.decisions(t)
		dropped := metric(t, s.opsURL+"/metrics", "gatehouse_decision_logs_dropped_total")
		n := 0
		for _, r := range recs {
			if decided[r.DecisionID] {
				n++
			}
		}
		if dropped > 0 {
			t.Fatalf("%v records dropped (%d of %d at the control)", dropped, n, len(decided))
		}
		return n == len(decided) && len(recs) == n, fmt.Sprintf("%d of %d decisions at the control (%d records)", n, len(decided), len(recs))
	})
	for i := range 60 {
		decided[s.decide(t, logQueries[i%len(logQueries)], i%2 == 1)] = true
	}
	s.stop()
	recs, raw := w.decisions(t)
	w.noSecrets(t, "GET /v1/decisions", raw)
	n := 0
	for _, r := range recs {
		if decided[r.DecisionID] {
			n++
		}
	}
	inFile, _ := fileRecords(t, s.logFile)
	if n != len(decided) || len(recs) != n || len(inFile) != n {
		t.Errorf("after SIGTERM: %d of %d decisions at the control (%d records), %d in the file", n, len(decided), len(recs), len(inFile))
	}
}

// joins reports whether a record says what its answer said.
func (r logRecord) joins(a answered) bool {
	g := r.Gatehouse
	return g.HTTPStatus == a.status && (a.reason == "" || g.Reason == a.reason) &&
		g.PolicyRevision == a.policyRevision && a.policyRevision != "" && g.TenancyRevision == a.tenancyRev && a.tenancyRev != 0
}

// checkUsage compares GET /v1/usage (admin) with the counts of the records
// per tenant and hour.
func (w *fleetWorld) checkUsage(t *testing.T, recs []logRecord) {
	t.Helper()
	want := map[string][2]uint64{} // tenant ‖ hour -> allowed, denied
	for _, r := range recs {
		k := r.Gatehouse.Tenant + " " + r.Timestamp.UTC().Truncate(time.Hour).Format(time.RFC3339)
		u := want[k]
		if r.Gatehouse.Allowed {
			u[0]++
		} else {
			u[1]++
		}
		want[k] = u
	}
	status, body := w.get(t, "/v1/usage", w.k.admin)
	var ua struct {
		Items []struct {
			Tenant          string
			Hour            time.Time
			Allowed, Denied uint64
		}
	}
	if status != http.StatusOK || json.Unmarshal(body, &ua) != nil {
		t.Fatalf("GET /v1/usage: %d %s", status, body)
	}
	got := map[string][2]uint64{}
	for _, it := range ua.Items {
		got[it.Tenant+" "+it.Hour.UTC().Format(time.RFC3339)] = [2]uint64{it.Allowed, it.Denied}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("usage per tenant and hour:\n got %v\nwant %v", got, want)
	}
}

// checkFilters compares GET /v1/decisions with filters (admin) with the
// records that match them.
func (w *fleetWorld) checkFilters(t *testing.T, recs []logRecord) {
	t.Helper()
	for _, f := range []struct {
		query string
		match func(logRecord) bool
	}{
		{"tenant=beta&allowed=true", func(r logRecord) bool { return r.Gatehouse.Tenant == "beta" && r.Gatehouse.Allowed }},
		{"tenant=alpha&allowed=false", func(r logRecord) bool { return r.Gatehouse.Tenant == "alpha" && !r.Gatehouse.Allowed }},
		{"allowed=false&subject=dave", func(r logRecord) bool { return r.Gatehouse.Subject == "dave" && !r.Gatehouse.Allowed }},
		{"subject=alice&allowed=true", func(r logRecord) bool { return r.Gatehouse.Subject == "alice" && r.Gatehouse.Allowed }},
		{"subject=bob", func(r logRecord) bool { return r.Gatehouse.Subject == "bob" }},
	} {
		var want, got []string
		for _, r := range recs {
			if f.match(r) {
				want = append(want, r.DecisionID)
			}
		}
		items, raw, status := w.pages(t, "/v1/decisions?"+f.query, w.k.admin)
		if status != http.StatusOK {
			t.Fatalf("GET /v1/decisions?%s: %d %s", f.query, status, raw)
		}
		got = sortedIDs(items)
		slices.Sort(want)
		if len(want) == 0 || !slices.Equal(got, want) {
			t.Errorf("GET /v1/decisions?%s: %d records, want %d", f.query, len(got), len(want))
		}
	}
}

// TestDecisionStoreBoundedEndToEnd: a control whose decision store is
// bounded (decisions.max_mb: 1) below what the sidecar sends keeps the
// newest records, counts every evicted one, and keeps counting all of them
// in the usage.
func TestDecisionStoreBoundedEndToEnd(t *testing.T) {
	w := newFleetWorld(t, time.Minute, "decisions: {max_mb: 1}\n")
	s := w.startSidecar(t, "side-bounded", fastReports)
	s.waitReady(t, 30*time.Second)
	s.waitRevision(t, w.seedRev, 30*time.Second)
	var order []string
	for i := range 700 { // ~2.5 KB each: more than 1 MiB
		order = append(order, s.decide(t, logQueries[i%len(logQueries)], i%2 == 0))
	}
	metrics := w.ctl.url + "/metrics"
	var recs []logRecord
	var evicted float64
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		recs, _ = w.decisions(t)
		evicted = metric(t, metrics, `gatehouse_control_decisions_dropped_total{reason="evicted"}`)
		return float64(len(recs))+evicted == float64(len(order)),
			fmt.Sprintf("%d stored + %v evicted of %d decided", len(recs), evicted, len(order))
	})
	if evicted == 0 {
		t.Fatalf("nothing evicted from a 1 MiB store by %d records", len(order))
	}
	// The newest are kept: the stored ones are the last len(recs) decided
	// (the sidecar's timestamps follow the order of its answers).
	kept := map[string]bool{}
	for _, r := range recs {
		kept[r.DecisionID] = true
	}
	for i, id := range order {
		if kept[id] != (i >= len(order)-len(recs)) {
			t.Fatalf("decision %d of %d kept %v with %d stored: not the oldest evicted first", i, len(order), kept[id], len(recs))
		}
	}
	status, body := w.get(t, "/v1/usage", w.k.admin)
	var ua struct {
		Items []struct{ Allowed, Denied uint64 }
	}
	if status != http.StatusOK || json.Unmarshal(body, &ua) != nil {
		t.Fatalf("GET /v1/usage: %d %s", status, body)
	}
	var n uint64
	for _, it := range ua.Items {
		n += it.Allowed + it.Denied
	}
	if n != uint64(len(order)) {
		t.Errorf("usage counts %d decisions, %d were decided (%d stored, %v evicted)", n, len(order), len(recs), evicted)
	}
	t.Logf("%d decided: %d stored, %v evicted", len(order), len(recs), evicted)
}

// TestDecisionLogLostAnswerStoredOnce: uploads whose answers are cut after
// the control stored them (a proxy cuts the first connections after one
// byte of the answer) are sent again; the control stores each record once
// and counts the copies as duplicates; nothing is dropped.
func TestDecisionLogLostAnswerStoredOnce(t *testing.T) {
	w := newFleetWorld(t, time.Minute, "")
	p := startProxy(t, w.ctl.addr)
	p.setBudgets(1, 1)
	w.logsURL = p.url() + "/v1/logs"
	s := w.startSidecar(t, "side-cut", fastReports)
	s.waitReady(t, 30*time.Second)
	s.waitRevision(t, w.seedRev, 30*time.Second)
	decided := map[string]bool{}
	for i := range 60 {
		decided[s.decide(t, logQueries[i%len(logQueries)], i%2 == 0)] = true
	}
	metrics := w.ctl.url + "/metrics"
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		recs, _ := w.decisions(t)
		n := 0
		for _, r := range recs {
			if decided[r.DecisionID] {
				n++
			}
		}
		return n == len(decided) && len(recs) == n, fmt.Sprintf("%d of %d decisions at the control (%d records)", n, len(decided), len(recs))
	})
	// The proxy counts a cut once it has closed both sides, which may come
	// after the control stored what the cut upload carried.
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		cuts, _ := p.stats()
		return cuts == 2, fmt.Sprintf("%d upload answers cut, want 2", cuts)
	})
	if d := metric(t, metrics, `gatehouse_control_decisions_received_total{result="duplicate"}`); d == 0 {
		t.Errorf("no duplicate counted after cut answers")
	}
	if d := metric(t, s.opsURL+"/metrics", "gatehouse_decision_logs_dropped_total"); d != 0 {
		t.Errorf("%v records dropped", d)
	}
}
