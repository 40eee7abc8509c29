package decisionlog_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

const issuer = "https://idp.example.com/"

// policy echoes the Authorization header into what it returns, so that
// only scrubbing keeps the token out of the records.
const policy = `package envoy.authz

default allow := {"allowed": false, "http_status": 403, "reason": "no"}

allow := {"allowed": true, "reason": "ok", "headers": {"x-echo": object.get(input.attributes.request.http.headers, "authorization", "")},
	"dynamic_metadata": {"tenant": "acme"}} if {
	input.token.valid
	input.parsed_path[0] == "ok"
}

allow := {"allowed": false, "http_status": 401, "reason": "invalid_token",
	"body": concat(" ", ["bad token", object.get(input.attributes.request.http.headers, "authorization", "")])} if {
	not input.token.valid
}
`

// collector is an upload endpoint speaking OPA's protocol.
type collector struct {
	srv     *httptest.Server
	mu      sync.Mutex
	raw     bytes.Buffer // every decompressed body
	records []map[string]any
	down    atomic.Bool // answer 503
	posts   atomic.Int64
	auth    atomic.Value
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.posts.Add(1)
		if c.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if r.Method != http.MethodPost || r.Header.Get("Content-Encoding") != "gzip" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		c.auth.Store(r.Header.Get("Authorization"))
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(zr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var recs []map[string]any
		if err := json.Unmarshal(body, &recs); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		c.raw.Write(body)
		c.records = append(c.records, recs...)
		c.mu.Unlock()
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *collector) snapshot() ([]map[string]any, []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]map[string]any(nil), c.records...), bytes.Clone(c.raw.Bytes())
}

// harness is a sidecar on real sockets whose answers go to a Logger.
type harness struct {
	sc      *testutil.Sidecar
	log     *decisionlog.Logger
	console *syncBuffer
	done    chan struct{}
	cancel  context.CancelFunc
	stopped bool
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

type harnessOpts struct {
	cfg      decisionlog.Config
	policies map[string]string
	dryRun   bool
	wrap     func(*testutil.Sidecar, *decisionlog.Logger) interface{ Observe(decisionlog.Entry) }
}

func startHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	key := testutil.RSAKey(t, "declog")
	keyDir := testutil.PolicyDir(t, map[string]string{"k.pem": string(testutil.PublicKeyPEM(t, &key.PublicKey))})
	h := &harness{console: &syncBuffer{}, done: make(chan struct{})}
	obs := &lateObserver{}
	pols := o.policies
	if pols == nil {
		pols = map[string]string{"authz.rego": policy}
	}
	sc := testutil.StartSidecar(t, testutil.Options{
		Policies: pols,
		Issuers:  []token.IssuerConfig{{Issuer: issuer, Audiences: []string{"api"}, Algorithms: []string{"RS256"}, PublicKeyFile: filepath.Join(keyDir, "k.pem")}},
		Server:   envoyConfig(obs, o.dryRun),
	})
	cfg := o.cfg
	cfg.ID, cfg.Version, cfg.Path, cfg.Registerer = "sidecar-1", "test", "envoy/authz/allow", sc.Registry
	cfg.Labels = map[string]string{"zone": "z1"}
	if cfg.Console {
		cfg.Stdout = h.console
	}
	logger, _ := testutil.Logger(t)
	l, err := decisionlog.New(cfg, sc.Engine, logger)
	if err != nil {
		t.Fatalf("decisionlog.New: %v", err)
	}
	obs.set(l)
	if o.wrap != nil {
		obs.set(o.wrap(sc, l))
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = l.Run(ctx); close(h.done) }()
	h.sc, h.log, h.cancel = sc, l, cancel
	t.Cleanup(h.stop)
	return h
}

// stop stops the sidecar, then the logger (which writes what is queued).
func (h *harness) stop() {
	if h.stopped {
		return
	}
	h.stopped = true
	h.sc.Stop()
	h.cancel()
	<-h.done
}

// lateObserver lets the observer be set after the server is built.
type lateObserver struct{ o atomic.Value }

func (l *lateObserver) set(o interface{ Observe(decisionlog.Entry) }) { l.o.Store(&o) }

func (l *lateObserver) Observe(e decisionlog.Entry) {
	if p, ok := l.o.Load().(*interface{ Observe(decisionlog.Entry) }); ok {
		(*p).Observe(e)
	}
}

func mint(t *testing.T, subject string) string {
	return testutil.MintJWT(t, jwt.SigningMethodRS256, testutil.RSAKey(t, "declog"), "", testutil.Claims(issuer, subject, nil))
}

// answer is what a client saw.
type answer struct {
	id      string
	allowed bool
	status  int
}

// check sends r over gRPC (i even) or HTTP (i odd).
func (h *harness) check(t *testing.T, i int, r testutil.Request) answer {
	t.Helper()
	if i%2 == 0 {
		resp, err := h.sc.Check(t.Context(), r)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		a := answer{id: resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue(), allowed: resp.GetStatus().GetCode() == 0, status: 200}
		if !a.allowed {
			a.status = int(resp.GetDeniedResponse().GetStatus().GetCode())
		}
		return a
	}
	resp := h.sc.CheckHTTP(t, t.Context(), r)
	return answer{id: resp.Header.Get("x-gatehouse-decision-id"), allowed: resp.Status == 200, status: resp.Status}
}

func readLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func byID(t *testing.T, sink string, recs []map[string]any) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, r := range recs {
		id, _ := r["decision_id"].(string)
		if prev, dup := out[id]; dup {
			a, _ := json.Marshal(prev)
			b, _ := json.Marshal(r)
			t.Errorf("%s: decision %s logged twice:\n%s\n%s", sink, id, a, b)
		}
		out[id] = r
	}
	return out
}

// mixed are requests of every kind, each carrying its secret in the
// Authorization header and, for some, in the query and body too.
func mixed(t *testing.T) (reqs []testutil.Request, secrets []string) {
	alice, bob := mint(t, "alice"), mint(t, "bob")
	garbage := "garbage-token-7f3a9c1e"
	for i := range 300 {
		var r testutil.Request
		switch i % 6 {
		case 0:
			r = testutil.Request{Path: "/ok/items?access_token=" + alice, Headers: map[string]string{"authorization": "Bearer " + alice}}
		case 1:
			r = testutil.Request{Path: "/no/items", Headers: map[string]string{"authorization": "Bearer " + bob}}
		case 2:
			r = testutil.Request{Path: "/ok/x", Headers: map[string]string{"authorization": "Bearer " + garbage}}
		case 3:
			r = testutil.Request{Path: "/ok/x"}
		case 4:
			r = testutil.Request{Method: "POST", Path: fmt.Sprintf("/ok/%d", i), Body: `{"t":"` + bob + `"}`,
				Headers: map[string]string{"authorization": "bearer " + bob, "content-type": "application/json"}}
		case 5:
			r = testutil.Request{Method: "POST", Path: "/ok/x", Body: `{"bad` + alice, // 400 before evaluation
				Headers: map[string]string{"authorization": "Bearer " + alice, "content-type": "application/json"}}
		}
		reqs = append(reqs, r)
	}
	return reqs, []string{alice, bob, garbage}
}

func TestRecordsArriveOnceInEverySinkWithoutTokens(t *testing.T) {
	t.Parallel()
	coll := newCollector(t)
	tokenFile := filepath.Join(t.TempDir(), "upload.token")
	if err := os.WriteFile(tokenFile, []byte("upload-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "decisions.log")
	h := startHarness(t, harnessOpts{cfg: decisionlog.Config{
		Console: true,
		File:    &decisionlog.FileConfig{Path: file},
		Service: &decisionlog.ServiceConfig{URL: coll.srv.URL, TokenFile: tokenFile,
			Reporting: decisionlog.ReportingConfig{MinDelaySeconds: 0.05, MaxDelaySeconds: 0.2}},
	}})
	reqs, secrets := mixed(t)
	answers := map[string]answer{}
	for i, r := range reqs {
		a := h.check(t, i, r)
		if a.id == "" {
			t.Fatalf("request %d: no decision id", i)
		}
		answers[a.id] = a
	}
	h.stop()

	fileBytes, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	uploaded, rawUpload := coll.snapshot()
	sinks := map[string][]map[string]any{
		"file": readLines(t, fileBytes), "console": readLines(t, h.console.Bytes()), "service": uploaded,
	}
	for sink, b := range map[string][]byte{"file": fileBytes, "console": h.console.Bytes(), "service": rawUpload} {
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s: a raw token is in the output", sink)
			}
		}
		if bytes.Contains(bytes.ToLower(b), []byte(`"authorization"`)) {
			t.Errorf("%s: an authorization header is in the output", sink)
		}
	}
	if got := coll.auth.Load(); got != "Bearer upload-secret" {
		t.Errorf("upload Authorization = %v, want the token file's", got)
	}
	for sink, recs := range sinks {
		got := byID(t, sink, recs)
		if len(recs) != len(answers) {
			t.Errorf("%s: %d records for %d decisions", sink, len(recs), len(answers))
		}
		for id, a := range answers {
			rec, ok := got[id]
			if !ok {
				t.Errorf("%s: decision %s not logged", sink, id)
				continue
			}
			g, _ := rec["gatehouse"].(map[string]any)
			if g["allowed"] != a.allowed || int(g["http_status"].(float64)) != a.status {
				t.Errorf("%s: %s: gatehouse %v, answer %+v", sink, id, g, a)
			}
			labels, _ := rec["labels"].(map[string]any)
			if labels["id"] != "sidecar-1" || labels["version"] != "test" || labels["zone"] != "z1" || rec["path"] != "envoy/authz/allow" {
				t.Errorf("%s: %s: labels %v path %v", sink, id, labels, rec["path"])
			}
			for _, k := range []string{"timestamp", "metrics", "req_id"} {
				if _, ok := rec[k]; !ok {
					t.Errorf("%s: %s: no %s", sink, id, k)
				}
			}
			if a.allowed {
				if g["subject"] != "alice" && g["subject"] != "bob" || g["issuer"] != issuer || g["tenant"] != "acme" || g["reason"] != "ok" {
					t.Errorf("%s: %s: allowed record %v", sink, id, g)
				}
				in, _ := rec["input"].(map[string]any)
				if tok, _ := in["token"].(map[string]any); tok["valid"] != true {
					t.Errorf("%s: %s: input.token %v", sink, id, in["token"])
				}
				if er, _ := rec["erased"].([]any); len(er) == 0 {
					t.Errorf("%s: %s: the erased authorization header is not listed", sink, id)
				}
			}
		}
	}
	if v := testutil.MetricValue(t, h.sc.Registry, "gatehouse_decision_logs_written_total", map[string]string{"sink": "service"}); int(v) != len(answers) {
		t.Errorf("written{service} = %v, want %d", v, len(answers))
	}
}

func TestMaskAndDropPolicy(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "decisions.log")
	h := startHarness(t, harnessOpts{
		cfg: decisionlog.Config{File: &decisionlog.FileConfig{Path: file}},
		policies: map[string]string{"authz.rego": policy, "log.rego": `package system.log

mask contains "/input/attributes/request/http/headers/x-ssn"

mask contains {"op": "upsert", "path": "/input/parsed_body/password", "value": "***"} if input.input.parsed_body.password

mask contains "/result/headers" if input.result.allowed

mask contains "/input/attributes/request/http/body"

mask contains "/input/nowhere"

drop if input.input.parsed_path[0] == "health"
`},
	})
	tok := mint(t, "alice")
	ok := h.check(t, 0, testutil.Request{Method: "POST", Path: "/ok/a", Body: `{"password":"hunter2","user":"alice"}`,
		Headers: map[string]string{"authorization": "Bearer " + tok, "x-ssn": "123-45-6789", "content-type": "application/json"}})
	dropped := h.check(t, 1, testutil.Request{Path: "/health", Headers: map[string]string{"authorization": "Bearer " + tok}})
	h.stop()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	recs := byID(t, "file", readLines(t, b))
	if _, ok := recs[dropped.id]; ok || len(recs) != 1 {
		t.Fatalf("data.system.log.drop did not drop: %d records", len(recs))
	}
	if bytes.Contains(b, []byte("123-45-6789")) || bytes.Contains(b, []byte("hunter2")) {
		t.Errorf("masked values are in the record: %s", b)
	}
	rec := recs[ok.id]
	body := rec["input"].(map[string]any)["parsed_body"].(map[string]any)
	if body["password"] != "***" || body["user"] != "alice" {
		t.Errorf("parsed_body = %v", body)
	}
	if _, has := rec["result"].(map[string]any)["headers"]; has {
		t.Errorf("result.headers not erased: %v", rec["result"])
	}
	erased := fmt.Sprint(rec["erased"])
	for _, p := range []string{"/input/attributes/request/http/headers/x-ssn", "/result/headers", "/input/attributes/request/http/headers/authorization"} {
		if !strings.Contains(erased, p) {
			t.Errorf("erased %v lacks %s", erased, p)
		}
	}
	if strings.Contains(erased, "nowhere") {
		t.Errorf("erased lists a path that was not there: %v", erased)
	}
	if fmt.Sprint(rec["masked"]) != "[/input/parsed_body/password]" {
		t.Errorf("masked = %v", rec["masked"])
	}
	if v := testutil.MetricValue(t, h.sc.Registry, "gatehouse_decision_logs_skipped_total", map[string]string{"reason": "policy"}); v != 1 {
		t.Errorf("skipped{policy} = %v", v)
	}
}

func TestSampling(t *testing.T) {
	t.Parallel()
	zero := 0.0
	file := filepath.Join(t.TempDir(), "decisions.log")
	h := startHarness(t, harnessOpts{cfg: decisionlog.Config{File: &decisionlog.FileConfig{Path: file}, Sample: decisionlog.SampleConfig{Allow: &zero}}})
	tok := mint(t, "alice")
	var denies int
	for i := range 40 {
		r := testutil.Request{Path: "/ok/a", Headers: map[string]string{"authorization": "Bearer " + tok}}
		if i%2 == 1 {
			r.Path = "/no/a"
			denies++
		}
		h.check(t, i, r)
	}
	h.stop()
	b, _ := os.ReadFile(file)
	recs := readLines(t, b)
	if len(recs) != denies {
		t.Fatalf("%d records, want the %d denies", len(recs), denies)
	}
	for _, r := range recs {
		if r["gatehouse"].(map[string]any)["allowed"] != false {
			t.Errorf("an allow was logged with sample.allow 0")
		}
	}
	if v := testutil.MetricValue(t, h.sc.Registry, "gatehouse_decision_logs_skipped_total", map[string]string{"reason": "sample"}); int(v) != 40-denies {
		t.Errorf("skipped{sample} = %v", v)
	}
}

// TestUploadDown: the service is down for a while and the buffer is small:
// Checks are not slowed, and every record is delivered or counted.
func TestUploadDown(t *testing.T) {
	t.Parallel()
	coll := newCollector(t)
	coll.down.Store(true)
	h := startHarness(t, harnessOpts{cfg: decisionlog.Config{
		Service: &decisionlog.ServiceConfig{URL: coll.srv.URL,
			Reporting: decisionlog.ReportingConfig{MinDelaySeconds: 0.02, MaxDelaySeconds: 0.1, BufferSizeLimitBytes: 64 << 10}},
	}})
	tok := mint(t, "alice")
	const n = 400
	var slowest time.Duration
	ids := map[string]bool{}
	for i := range n {
		if i == n/2 {
			testutil.Eventually(t, 5*time.Second, func() (bool, string) {
				return coll.posts.Load() >= 3, "no retries while the service is down"
			})
		}
		start := time.Now()
		a := h.check(t, i, testutil.Request{Path: fmt.Sprintf("/ok/%d", i), Headers: map[string]string{"authorization": "Bearer " + tok}})
		slowest = max(slowest, time.Since(start))
		ids[a.id] = true
	}
	if slowest > 2*time.Second {
		t.Errorf("a check took %v while the upload was down", slowest)
	}
	coll.down.Store(false)
	h.stop()
	recs, _ := coll.snapshot()
	got := byID(t, "service", recs)
	for id := range got {
		if !ids[id] {
			t.Errorf("unknown decision %s uploaded", id)
		}
	}
	var lost float64
	for _, r := range []string{"queue_full", "buffer_full", "rejected", "shutdown", "encode_error"} {
		lost += testutil.MetricValue(t, h.sc.Registry, "gatehouse_decision_logs_dropped_total", map[string]string{"reason": r})
	}
	if len(got)+int(lost) != n {
		t.Errorf("%d uploaded + %v counted as dropped != %d decisions", len(got), lost, n)
	}
	if lost == 0 {
		t.Errorf("a 64 KiB buffer held %d records while the service was down: the bound is not applied", n)
	}
	if len(got) == 0 {
		t.Errorf("nothing was uploaded once the service was back")
	}
}

// TestObserveNeverBlocks: with the writer stopped, a full queue drops and
// counts instead of waiting.
func TestObserveNeverBlocks(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	discard := slog.New(slog.DiscardHandler)
	l, err := decisionlog.New(decisionlog.Config{Console: true, QueueSize: 4, Stdout: io.Discard, Registerer: reg}, authz.New(authz.Config{}, nil, nil, discard), discard)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 1000 {
		l.Observe(decisionlog.Entry{Decision: &authz.Decision{ID: authz.NewDecisionID(), Allowed: true}})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("1000 Observe took %v", d)
	}
	if v := testutil.MetricValue(t, reg, "gatehouse_decision_logs_dropped_total", map[string]string{"reason": "queue_full"}); v != 996 {
		t.Errorf("dropped{queue_full} = %v, want 996", v)
	}

	// The queue is bounded in bytes too: entries holding large requests.
	reg = prometheus.NewRegistry()
	l, err = decisionlog.New(decisionlog.Config{Console: true, QueueBytes: 10 << 20, Stdout: io.Discard, Registerer: reg}, authz.New(authz.Config{}, nil, nil, discard), discard)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		l.Observe(decisionlog.Entry{Decision: &authz.Decision{ID: authz.NewDecisionID(), Allowed: true}, Size: 1 << 20})
	}
	if v := testutil.MetricValue(t, reg, "gatehouse_decision_logs_dropped_total", map[string]string{"reason": "queue_full"}); v != 90 {
		t.Errorf("dropped{queue_full} = %v with 1 MiB entries and queue_bytes 10 MiB, want 90", v)
	}
}

// TestUploadRejected: a 4xx the service will not take back is not retried
// for ever: the batch is dropped and counted, and later batches go on.
func TestUploadRejected(t *testing.T) {
	t.Parallel()
	var posts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if posts.Add(1) == 1 {
			http.Error(w, "malformed", http.StatusBadRequest) // 413 splits the batch instead: TestUploadSplitOn413
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(srv.Close)
	reg := prometheus.NewRegistry()
	discard := slog.New(slog.DiscardHandler)
	l, err := decisionlog.New(decisionlog.Config{Registerer: reg, Service: &decisionlog.ServiceConfig{URL: srv.URL,
		Reporting: decisionlog.ReportingConfig{MinDelaySeconds: 0.02}}}, authz.New(authz.Config{}, nil, nil, discard), discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { _ = l.Run(ctx); close(done) }()
	observe := func(n int) {
		for range n {
			l.Observe(decisionlog.Entry{Decision: &authz.Decision{ID: authz.NewDecisionID(), Allowed: true}, Start: time.Now()})
		}
	}
	observe(5)
	testutil.Eventually(t, 5*time.Second, func() (bool, string) { return posts.Load() >= 1, "no upload" })
	observe(7)
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		w := testutil.MetricValue(t, reg, "gatehouse_decision_logs_written_total", map[string]string{"sink": "service"})
		r := testutil.MetricValue(t, reg, "gatehouse_decision_logs_dropped_total", map[string]string{"reason": "rejected"})
		return w+r == 12 && r > 0 && w > 0, fmt.Sprintf("written %v rejected %v", w, r)
	})
	cancel()
	<-done
}

// TestUploadSplitOn413: a service whose body limit is below the batch
// answers 413; the batch is halved until it fits, every record arriving
// once; a single record over the limit is dropped and counted (rejected),
// and the records after it go on.
func TestUploadSplitOn413(t *testing.T) {
	t.Parallel()
	var limit atomic.Int64
	limit.Store(4096)
	var mu sync.Mutex
	got := map[string]int{}
	var posts, refused atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body, _ := io.ReadAll(zr)
		if int64(len(body)) > limit.Load() {
			refused.Add(1)
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		var recs []struct {
			ID string `json:"decision_id"`
		}
		if err := json.Unmarshal(body, &recs); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, r := range recs {
			got[r.ID]++
		}
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	reg := prometheus.NewRegistry()
	discard := slog.New(slog.DiscardHandler)
	l, err := decisionlog.New(decisionlog.Config{Registerer: reg, Service: &decisionlog.ServiceConfig{URL: srv.URL,
		Reporting: decisionlog.ReportingConfig{MinDelaySeconds: 0.05}}}, authz.New(authz.Config{}, nil, nil, discard), discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { _ = l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	metrics := func() (float64, float64) {
		return testutil.MetricValue(t, reg, "gatehouse_decision_logs_written_total", map[string]string{"sink": "service"}),
			testutil.MetricValue(t, reg, "gatehouse_decision_logs_dropped_total", map[string]string{"reason": "rejected"})
	}
	var ids []string
	for _, n := range []int{1, 7, 40, 3, 64} { // batches of several sizes
		for range n {
			id := authz.NewDecisionID()
			ids = append(ids, id)
			l.Observe(decisionlog.Entry{Decision: &authz.Decision{ID: id, Allowed: true, Reason: strings.Repeat("r", 200)}, Start: time.Now()})
		}
		testutil.Eventually(t, 10*time.Second, func() (bool, string) {
			w, r := metrics()
			return w == float64(len(ids)), fmt.Sprintf("written %v rejected %v of %d", w, r, len(ids))
		})
	}
	mu.Lock()
	for _, id := range ids {
		if got[id] != 1 {
			t.Errorf("decision %s uploaded %d times", id, got[id])
		}
	}
	mu.Unlock()
	if refused.Load() == 0 {
		t.Fatalf("no upload was over the service's limit: the test proves nothing")
	}
	// A single record over the limit: dropped, counted; the next ones go on.
	limit.Store(10)
	l.Observe(decisionlog.Entry{Decision: &authz.Decision{ID: authz.NewDecisionID(), Allowed: true}, Start: time.Now()})
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		w, r := metrics()
		return r == 1, fmt.Sprintf("written %v rejected %v", w, r)
	})
	limit.Store(1 << 20)
	l.Observe(decisionlog.Entry{Decision: &authz.Decision{ID: authz.NewDecisionID(), Allowed: true}, Start: time.Now()})
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		w, r := metrics()
		return w == float64(len(ids)+1) && r == 1, fmt.Sprintf("written %v rejected %v", w, r)
	})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	neg, big := -0.1, 1.5
	for name, tc := range map[string]struct {
		cfg  decisionlog.Config
		want string
	}{
		"ok":                   {cfg: decisionlog.Config{Console: true}},
		"file no path":         {cfg: decisionlog.Config{File: &decisionlog.FileConfig{}}, want: "decision_logs.file.path"},
		"bad url":              {cfg: decisionlog.Config{Service: &decisionlog.ServiceConfig{URL: "ftp://x"}}, want: "decision_logs.service.url"},
		"no host":              {cfg: decisionlog.Config{Service: &decisionlog.ServiceConfig{URL: "http://"}}, want: "decision_logs.service.url"},
		"sample < 0":           {cfg: decisionlog.Config{Sample: decisionlog.SampleConfig{Allow: &neg}}, want: "decision_logs.sample.allow"},
		"sample > 1":           {cfg: decisionlog.Config{Sample: decisionlog.SampleConfig{Deny: &big}}, want: "decision_logs.sample.deny"},
		"queue negative":       {cfg: decisionlog.Config{QueueSize: -1}, want: "decision_logs.queue_size"},
		"queue bytes negative": {cfg: decisionlog.Config{QueueBytes: -1}, want: "decision_logs.queue_bytes"},
		"max below min": {cfg: decisionlog.Config{Service: &decisionlog.ServiceConfig{URL: "http://x", Reporting: decisionlog.ReportingConfig{MinDelaySeconds: 5, MaxDelaySeconds: 1}}},
			want: "max_delay_seconds"},
		"negative buffer": {cfg: decisionlog.Config{Service: &decisionlog.ServiceConfig{URL: "http://x", Reporting: decisionlog.ReportingConfig{BufferSizeLimitBytes: -1}}},
			want: "buffer_size_limit_bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.SetDefaults()
			err := cfg.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func envoyConfig(obs envoy.Observer, dryRun bool) envoy.Config {
	return envoy.Config{Observer: obs, DryRun: dryRun}
}

// shadowPolicy allows only /ok/a: /ok/b is a disagreement.
const shadowPolicy = `package envoy.authz

default allow := {"allowed": false, "http_status": 403, "reason": "shadow_no"}

allow := {"allowed": true, "reason": "shadow_ok"} if {
	input.token.valid
	input.parsed_path == ["ok", "a"]
}
`

func TestShadowDisagreementCountedAnswersStayActive(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "decisions.log")
	var shadow *decisionlog.Shadow
	h := startHarness(t, harnessOpts{
		cfg: decisionlog.Config{File: &decisionlog.FileConfig{Path: file}},
		wrap: func(sc *testutil.Sidecar, l *decisionlog.Logger) interface{ Observe(decisionlog.Entry) } {
			logger, _ := testutil.Logger(t)
			se := authz.New(authz.Config{}, sc.Verifier, nil, logger)
			src, err := bundle.NewDirSource(bundle.PolicyConfig{Dir: testutil.PolicyDir(t, map[string]string{"s.rego": shadowPolicy})}, se, logger)
			if err != nil {
				t.Fatal(err)
			}
			if err := src.Load(); err != nil {
				t.Fatal(err)
			}
			shadow = decisionlog.NewShadow(decisionlog.ShadowConfig{Registerer: sc.Registry}, se, l, logger)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { _ = shadow.Run(ctx); close(done) }()
			t.Cleanup(func() { cancel(); <-done })
			return shadow
		},
	})
	tok := mint(t, "alice")
	want := map[string]string{"/ok/a": "agree", "/ok/b": "disagree", "/no/a": "agree"}
	counts := map[string]int{}
	ids := map[string]string{}
	for i := range 60 {
		path := []string{"/ok/a", "/ok/b", "/no/a"}[i%3]
		a := h.check(t, i, testutil.Request{Path: path, Headers: map[string]string{"authorization": "Bearer " + tok}})
		if wantAllowed := path != "/no/a"; a.allowed != wantAllowed {
			t.Fatalf("%s: allowed %v: the shadow policy's answer reached the client", path, a.allowed)
		}
		counts[want[path]]++
		ids[a.id] = path
	}
	// The shadow stops before the logger: harness.stop stops the sidecar
	// and the logger; let the shadow drain first.
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		n := testutil.MetricValue(t, h.sc.Registry, "gatehouse_shadow_total", map[string]string{"result": "agree"}) +
			testutil.MetricValue(t, h.sc.Registry, "gatehouse_shadow_total", map[string]string{"result": "disagree"})
		return int(n) == 60, fmt.Sprintf("%v shadowed", n)
	})
	h.stop()
	for _, r := range []string{"agree", "disagree"} {
		if v := testutil.MetricValue(t, h.sc.Registry, "gatehouse_shadow_total", map[string]string{"result": r}); int(v) != counts[r] {
			t.Errorf("shadow_total{%s} = %v, want %d", r, v, counts[r])
		}
	}
	b, _ := os.ReadFile(file)
	for id, rec := range byID(t, "file", readLines(t, b)) {
		g := rec["gatehouse"].(map[string]any)
		sh, _ := g["shadow"].(map[string]any)
		if sh == nil {
			t.Errorf("%s: no shadow answer in the record", id)
			continue
		}
		if agree := want[ids[id]] == "agree"; sh["agree"] != agree {
			t.Errorf("%s (%s): shadow %v", id, ids[id], sh)
		}
		if ids[id] == "/ok/b" && (sh["allowed"] != false || sh["reason"] != "shadow_no" || g["allowed"] != true) {
			t.Errorf("%s: a disagreement without both results: %v", id, g)
		}
	}
}

func TestDryRunAllowsAndLogsTheDecision(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "decisions.log")
	h := startHarness(t, harnessOpts{cfg: decisionlog.Config{File: &decisionlog.FileConfig{Path: file}}, dryRun: true})
	tok := mint(t, "alice")
	decided := map[string]int{}
	for i, r := range []testutil.Request{
		{Path: "/no/a", Headers: map[string]string{"authorization": "Bearer " + tok}}, // 403
		{Path: "/ok/a"}, // 401
		{Path: "/ok/a", Headers: map[string]string{"authorization": "Bearer " + tok}},                                 // 200
		{Method: "POST", Path: "/ok/a", Body: "{bad", Headers: map[string]string{"content-type": "application/json"}}, // 400
	} {
		for tr := range 2 {
			a := h.check(t, 2*i+tr, r)
			if !a.allowed || a.status != 200 {
				t.Errorf("%s %s: dry run answered %+v", r.Method, r.Path, a)
			}
			decided[a.id] = []int{403, 401, 200, 400}[i]
		}
	}
	h.stop()
	b, _ := os.ReadFile(file)
	recs := byID(t, "file", readLines(t, b))
	for id, status := range decided {
		g := recs[id]["gatehouse"].(map[string]any)
		if g["dry_run"] != true || int(g["http_status"].(float64)) != status || g["allowed"] != (status == 200) {
			t.Errorf("%s: record %v, decided %d", id, g, status)
		}
	}
}
