package loadgen_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
)

// bearers returns the plan's bearer tokens, by request index.
func bearers(p *loadgen.Plan) []string {
	out := make([]string, len(p.Requests))
	for i, r := range p.Requests {
		out[i] = strings.TrimPrefix(r.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"], "Bearer ")
	}
	return out
}

// userScenario is a scenario of n requests by users u0..users-1, each with
// a valid token, plus the kinds that are not minted per user.
func userScenario(t testing.TB, n, users int, extra ...loadgen.Request) *loadgen.Scenario {
	t.Helper()
	sc := &loadgen.Scenario{Issuer: "https://bench.gatehouse.test/", Audience: "api"}
	for i := range n {
		sc.Requests = append(sc.Requests, loadgen.Request{
			Name: fmt.Sprintf("r%d", i), Path: fmt.Sprintf("/t/x/items/%d", i), Subject: fmt.Sprintf("u%d", i%users),
			Token: loadgen.TokenValid, Expect: "allow",
		})
	}
	sc.Requests = append(sc.Requests, extra...)
	if err := sc.Validate(); err != nil {
		t.Fatal(err)
	}
	return sc
}

// One token per distinct set of claims (a user's requests share it, as
// clients reuse their token): the plan signs each once and counts distinct
// requests and tokens.
func TestNewPlanSharesTokensPerClaims(t *testing.T) {
	t.Parallel()
	key, pub := testKeys(t)
	extra := []loadgen.Request{
		{Name: "exp-a", Path: "/a", Subject: "u0", Token: loadgen.TokenExpired, Expect: "deny"},
		{Name: "exp-b", Path: "/b", Subject: "u0", Token: loadgen.TokenExpired, Expect: "deny"},
		{Name: "claims", Path: "/c", Subject: "u0", Claims: map[string]any{"tenant": "acme"}, Token: loadgen.TokenValid, Expect: "allow"},
		{Name: "none", Path: "/d", Expect: "deny"},
		{Name: "garbage", Path: "/e", Token: loadgen.TokenGarbage, Expect: "deny"},
		{Name: "same-as-r0", Path: "/t/x/items/0", Subject: "u0", Token: loadgen.TokenValid, Expect: "allow"},
	}
	sc := userScenario(t, 30, 7, extra...)
	p, err := loadgen.NewPlan(sc, loadgen.PlanOptions{SigningKey: key})
	if err != nil {
		t.Fatal(err)
	}
	// 7 users' tokens, one expired (both expired requests share it), one
	// with an extra claim, the garbage token.
	if p.DistinctTokens != 10 || p.MintedTokens != 9 {
		t.Errorf("DistinctTokens %d MintedTokens %d, want 10 and 9", p.DistinctTokens, p.MintedTokens)
	}
	// same-as-r0 repeats r0 (only its id differs); everything else differs.
	if want := len(sc.Requests) - 1; p.DistinctRequests != want {
		t.Errorf("DistinctRequests = %d, want %d", p.DistinctRequests, want)
	}
	tok := bearers(p)
	for i := range 30 {
		if tok[i] != tok[i%7] {
			t.Fatalf("requests %d and %d of user u%d carry different tokens", i, i%7, i%7)
		}
		var claims jwt.MapClaims
		if _, err := jwt.ParseWithClaims(tok[i], &claims, func(*jwt.Token) (any, error) { return pub, nil }); err != nil || claims["sub"] != fmt.Sprintf("u%d", i%7) {
			t.Fatalf("request %d: %v %v", i, err, claims)
		}
	}
	if tok[30] != tok[31] || tok[30] == tok[0] || tok[32] == tok[0] || tok[35] != tok[0] {
		t.Error("expired tokens should be shared, a token with other claims should differ")
	}
}

// A token cache file: the second plan signs nothing and sends the very same
// tokens; tokens too close to their exp, of another key, expired or with
// their own exp are signed again; a broken file is replaced.
func TestNewPlanTokenCache(t *testing.T) {
	t.Parallel()
	key, pub := testKeys(t)
	other, _ := testKeys(t)
	cache := filepath.Join(t.TempDir(), "sub", "tokens.json")
	now := time.Now()
	sc := userScenario(t, 20, 10,
		loadgen.Request{Name: "expired", Path: "/x", Subject: "u1", Token: loadgen.TokenExpired, Expect: "deny"},
		loadgen.Request{Name: "own-exp", Path: "/y", Subject: "u1", Claims: map[string]any{"exp": now.Add(time.Hour).Unix()}, Token: loadgen.TokenValid, Expect: "allow"})
	mk := func(k any, at time.Time) *loadgen.Plan {
		t.Helper()
		opts := loadgen.PlanOptions{SigningKey: key, TokenCache: cache, Now: at}
		if k != nil {
			opts.SigningKey = other
		}
		p, err := loadgen.NewPlan(sc, opts)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := mk(nil, now)
	if first.MintedTokens != 12 {
		t.Fatalf("first plan signed %d tokens, want 12", first.MintedTokens)
	}
	if fi, err := os.Stat(cache); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v %v", fi, err)
	}
	var claims jwt.MapClaims
	if _, err := jwt.ParseWithClaims(bearers(first)[0], &claims, func(*jwt.Token) (any, error) { return pub, nil }); err != nil {
		t.Fatal(err)
	}
	if exp, _ := claims.GetExpirationTime(); exp == nil || exp.Sub(now) < loadgen.TokenCacheValidity-time.Minute {
		t.Errorf("a cached token's exp = %v, want %v ahead", exp, loadgen.TokenCacheValidity)
	}

	second := mk(nil, now.Add(time.Minute))
	if second.MintedTokens != 2 { // the expired one and the one with its own exp
		t.Errorf("second plan signed %d tokens, want 2", second.MintedTokens)
	}
	for i, tok := range bearers(second)[:20] {
		if tok != bearers(first)[i] {
			t.Fatalf("request %d: the cached token was not reused", i)
		}
	}

	late := mk(nil, now.Add(loadgen.TokenCacheValidity-loadgen.TokenCacheMinValidity+time.Minute))
	if late.MintedTokens != 12 {
		t.Errorf("tokens with less than %v left: signed %d, want 12", loadgen.TokenCacheMinValidity, late.MintedTokens)
	}
	if other := mk(other, now.Add(time.Minute)); other.MintedTokens != 12 {
		t.Errorf("another signing key: signed %d, want 12", other.MintedTokens)
	}

	if err := os.WriteFile(cache, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p := mk(nil, now); p.MintedTokens != 12 {
		t.Errorf("after a broken cache file: signed %d, want 12", p.MintedTokens)
	}
	if p := mk(nil, now); p.MintedTokens != 2 {
		t.Errorf("the broken cache file was not replaced: signed %d, want 2", p.MintedTokens)
	}
}

// metricsServer serves Gatehouse's cache counters as Prometheus text and
// counts like a decision cache: a request id seen before is a hit.
type metricsServer struct {
	authv3.UnimplementedAuthorizationServer
	mu             sync.Mutex
	seen           map[string]bool
	hit, miss      int64
	verified, toks int64
	scrapes        atomic.Int64
}

func (m *metricsServer) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	id := req.GetAttributes().GetRequest().GetHttp().GetId()
	m.mu.Lock()
	if m.seen[id] {
		m.hit++
		m.toks++
	} else {
		m.seen[id] = true
		m.miss++
	}
	m.verified++
	m.mu.Unlock()
	return &authv3.CheckResponse{Status: &rpcstatus.Status{}}, nil
}

func (m *metricsServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	m.scrapes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(w, "# HELP gatehouse_decision_cache_total Decisions by cache result.\n# TYPE gatehouse_decision_cache_total counter\n")
	fmt.Fprintf(w, "gatehouse_decision_cache_total{result=\"bypass\"} 0\ngatehouse_decision_cache_total{result=\"hit\"} %d\n", m.hit)
	fmt.Fprintf(w, "gatehouse_decision_cache_total{result=\"miss\"} %d\ngatehouse_decision_cache_total{result=\"stale\"} 0\n", m.miss)
	fmt.Fprintf(w, "gatehouse_decision_cache_totally_else 99\n")
	fmt.Fprintf(w, "gatehouse_token_cache_hits_total %d\n", m.toks)
	fmt.Fprintf(w, "gatehouse_token_verifications_total{result=\"valid\"} %d\n", m.verified)
	fmt.Fprintf(w, "gatehouse_token_verifications_total{result=\"expired\"} 0\n")
}

func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + lis.Addr().String() + "/metrics"
}

// The cache counters are read at both ends of the recorded window: their
// growth over it, not their totals, is reported.
func TestRunReportsCacheHitRates(t *testing.T) {
	t.Parallel()
	m := &metricsServer{seen: map[string]bool{}}
	// Totals before the run must not count.
	m.hit, m.miss, m.verified, m.toks = 1000, 5000, 6000, 1000
	addr := serve(t, m)
	url := serveHTTP(t, m)
	// 50 distinct requests, each evaluated once in the warm-up: the window
	// is all hits. The warm-up is long enough for a loaded CI machine (one
	// made 48 checks in 300 ms).
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr: addr, Plan: plan(t, `{"requests": [`+requestsJSON(50)+`]}`, nil, nil),
		Concurrency: 2, Warmup: 2 * time.Second, Duration: 300 * time.Millisecond, MetricsURL: url,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := res.DecisionCache
	if d == nil || res.TokenCache == nil || res.MetricsError != "" {
		t.Fatalf("cache stats missing: %+v %+v %q", d, res.TokenCache, res.MetricsError)
	}
	// The scrapes are a little outside the window: allow a few calls, more
	// on a loaded machine where a scrape takes a while (the totals before
	// the run, 6,000, would be far outside either).
	slack := max(20, res.Checks/5)
	if diff := d.Lookups - res.Checks; diff < -slack || diff > slack || d.Lookups < 20 {
		t.Errorf("decision lookups %d over a window of %d checks", d.Lookups, res.Checks)
	}
	if d.Hits != d.ByResult["hit"] || d.ByResult["miss"] != 0 || d.HitRate != 1 {
		t.Errorf("decision cache = %+v, want all hits", d)
	}
	if tc := res.TokenCache; tc.HitRate != 1 || tc.Lookups != d.Lookups {
		t.Errorf("token cache = %+v", tc)
	}
	if m.scrapes.Load() != 2 {
		t.Errorf("%d scrapes, want 2", m.scrapes.Load())
	}
	if !strings.Contains(res.String(), "decision cache 100.0% hits") {
		t.Errorf("String() = %q", res.String())
	}
	b, _ := json.Marshal(res)
	if !strings.Contains(string(b), `"decision_cache":{"lookups":`) || !strings.Contains(string(b), `"distinct_requests":50`) {
		t.Errorf("JSON lacks the cache figures: %s", b)
	}

	// A server without the counters: no figures; an unreachable /metrics:
	// the reason, and the run still counts.
	empty := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "go_goroutines 7") }))
	for _, tc := range []struct {
		url     string
		wantErr bool
	}{{empty, false}, {"http://127.0.0.1:1/metrics", true}} {
		res, err := loadgen.Run(t.Context(), loadgen.Config{
			Addr: addr, Plan: plan(t, `{"requests": [`+requestsJSON(3)+`]}`, nil, nil),
			Duration: 100 * time.Millisecond, MetricsURL: tc.url,
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.DecisionCache != nil || res.TokenCache != nil || (res.MetricsError != "") != tc.wantErr || !res.OK {
			t.Errorf("%s: decisions %+v tokens %+v error %q OK %v", tc.url, res.DecisionCache, res.TokenCache, res.MetricsError, res.OK)
		}
	}
}

func requestsJSON(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"name": "r%d", "path": "/r/%d", "expect": "allow"}`, i, i)
	}
	return b.String()
}

// Random cold-like scenarios: every request of a user carries the same
// token, distinct users carry distinct ones, and the counts add up.
func TestNewPlanTokensProperty(t *testing.T) {
	t.Parallel()
	key, _ := testKeys(t)
	r := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		n, users := 1+r.IntN(60), 1+r.IntN(20)
		sc := userScenario(t, n, users)
		p, err := loadgen.NewPlan(sc, loadgen.PlanOptions{SigningKey: key})
		if err != nil {
			t.Fatal(err)
		}
		byUser := map[string]string{}
		tokens := map[string]bool{}
		for i, tok := range bearers(p) {
			sub := sc.Requests[i].Subject
			if prev, ok := byUser[sub]; ok && prev != tok {
				t.Fatalf("n=%d users=%d: %s has two tokens", n, users, sub)
			}
			byUser[sub] = tok
			tokens[tok] = true
		}
		if len(tokens) != len(byUser) || p.DistinctTokens != len(tokens) || p.MintedTokens != len(tokens) || p.DistinctRequests != n {
			t.Errorf("n=%d users=%d: %d tokens for %d users; plan says %d distinct, %d minted, %d requests",
				n, users, len(tokens), len(byUser), p.DistinctTokens, p.MintedTokens, p.DistinctRequests)
		}
	}
}

// The table sets hot and cold rows side by side with their cost relative to
// the floor of the same run, memory split into anonymous and file pages,
// and the server's cache hit rates.
func TestBenchTableHotCold(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(server, file, content string) { writeServerFile(t, dir, server, file, content) }
	run := func(rate, cpu, anon, file, peak float64, distinct, tokens int, hits float64) string {
		r := loadgen.Result{ChecksPerSec: rate, OK: true, Checks: 1000, Latency: loadgen.Latency{P50: 1.25, P99: 9.5},
			DistinctRequests: distinct, DistinctTokens: tokens,
			Server: &loadgen.ProcStats{CPUMicrosPerCheck: cpu, RSSMiB: anon + file, RSSAnonMiB: anon, RSSFileMiB: file, PeakRSSMiB: peak}}
		if hits >= 0 {
			r.DecisionCache = &loadgen.CacheStats{Lookups: 1000, Hits: int64(hits * 1000), HitRate: hits}
			r.TokenCache = &loadgen.CacheStats{Lookups: 1000, Hits: 500, HitRate: 0.5}
		}
		b, _ := json.Marshal(r)
		return string(b)
	}
	write("noop", "floor", "")
	write("noop", "c16.json", run(25000, 32, 12, 8, 21, 20000, 16385, -1))
	write("hot", "label", "Gatehouse, 200k grants\n")
	write("hot", "workload", "hot\n")
	write("hot", "c16.json", run(15000, 48, 60, 30, 95, 2000, 1961, 0.995))
	write("hot", "c1.json", run(2000, 60, 70, 31, 96, 2000, 1961, 0.999)) // the larger RSS sample
	write("cold", "label", "Gatehouse, 200k grants")
	write("cold", "workload", "cold")
	write("cold", "notes", "ready after 7,512 ms\n\nwrite -> changed decision: p99 11 ms\n")
	write("cold", "c16.json", run(2200, 400, 200, 77, 301, 20000, 16385, 0.026))
	write("peer", "label", "opa-envoy-plugin")
	write("peer", "workload", "cold")
	write("peer", "skipped", "does not build")

	f, out := benchTable(t, dir, "", "noop", "hot", "cold", "peer")
	lines := strings.Split(out, "\n")
	row := func(prefix string) []string {
		for _, l := range lines {
			if strings.HasPrefix(l, "| "+prefix) {
				cells := strings.Split(strings.Trim(l, "|"), "|")
				for i := range cells {
					cells[i] = strings.TrimSpace(cells[i])
				}
				return cells
			}
		}
		t.Fatalf("no row %q in\n%s", prefix, out)
		return nil
	}
	header := row("server")
	col := func(cells []string, name string) string {
		for i, h := range header {
			if h == name {
				return cells[i]
			}
		}
		t.Fatalf("no column %q in %v", name, header)
		return ""
	}
	hot, cold := row("Gatehouse, 200k grants | hot"), row("Gatehouse, 200k grants | cold")
	for _, c := range []struct {
		row       []string
		col, want string
	}{
		{row("noop (floor)"), "CPU vs floor", "1.00×"},
		{row("noop (floor)"), "decision cache hits", "-"},
		{hot, "workload", "hot 2,000 req, 1,961 tokens"},
		{hot, "server CPU µs/check", "48.0"},
		{hot, "CPU vs floor", "1.50×"},
		{hot, "ratio to floor", "0.60"},
		{hot, "p50 c=16", "1.25 ms"},
		{hot, "p99 c=16", "9.50 ms"},
		{hot, "RSS anon MiB", "70.0"},
		{hot, "RSS file MiB", "31.0"},
		{hot, "peak RSS MiB", "96.0"},
		{hot, "decision cache hits", "99.5%"},
		{hot, "token cache hits", "50.0%"},
		{cold, "workload", "cold 20,000 req, 16,385 tokens"},
		{cold, "checks/s c=16", "2,200"},
		{cold, "CPU vs floor", "12.50×"},
		{cold, "RSS anon MiB", "200.0"},
		{cold, "RSS file MiB", "77.0"},
		{cold, "decision cache hits", "2.6%"},
		{cold, "p99 c=1", "-"},
		{row("opa-envoy-plugin"), "checks/s c=16", "skipped"},
		{row("opa-envoy-plugin"), "workload", "cold"},
	} {
		if got := col(c.row, c.col); got != c.want {
			t.Errorf("%s / %s = %q, want %q", c.row[0], c.col, got, c.want)
		}
	}
	for _, want := range []string{"- cold: ready after 7,512 ms", "- cold: write -> changed decision: p99 11 ms", "- peer: skipped (does not build)"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("notes lack %q:\n%s", want, out)
		}
	}
	if !f.OK() {
		t.Error("OK() = false")
	}
	// The saved file keeps every figure.
	b, _ := json.Marshal(f)
	var back loadgen.BenchFile
	if err := json.Unmarshal(b, &back); err != nil || back.Servers[2].C16.DecisionCache.HitRate != 0.026 ||
		back.Servers[1].C1.Server.RSSFileMiB != 31 || back.Servers[2].Label != "Gatehouse, 200k grants" || len(back.Servers[2].Notes) != 2 {
		t.Errorf("round trip: %v %s", err, b)
	}
}

// Priming sends every distinct request once before the warm-up: a hot
// workload's window then holds no first-seen request, however short the
// warm-up; without it, a window reached before the first pass ends has
// misses.
func TestRunPrime(t *testing.T) {
	t.Parallel()
	for _, primed := range []bool{false, true} {
		var (
			res  *loadgen.Result
			seen int
		)
		// A window in which the stalled machine (CI under -race) answered
		// nothing says nothing either way: asked again, a few times.
		for attempt := 0; attempt < 5; attempt++ {
			m := &metricsServer{seen: map[string]bool{}}
			addr, url := serve(t, m), serveHTTP(t, m)
			var err error
			res, err = loadgen.Run(t.Context(), loadgen.Config{
				Addr: addr, Plan: plan(t, `{"requests": [`+requestsJSON(5000)+`]}`, nil, nil),
				Concurrency: 4, Duration: 50 * time.Millisecond, MetricsURL: url, Prime: primed,
			})
			if err != nil {
				t.Fatal(err)
			}
			m.mu.Lock()
			seen = len(m.seen)
			m.mu.Unlock()
			if res.DecisionCache != nil && res.DecisionCache.Lookups > 0 {
				break
			}
		}
		d := res.DecisionCache
		switch {
		case d == nil || res.Checks == 0:
			t.Fatalf("primed=%v: no figures: %+v", primed, res)
		case primed && (d.ByResult["miss"] != 0 || seen != 5000 || !res.Primed):
			t.Errorf("primed: %d misses in the window, %d requests seen", d.ByResult["miss"], seen)
		case !primed && (d.ByResult["miss"] == 0 || res.Primed):
			t.Errorf("not primed: no misses in a window shorter than the first pass (%+v)", d)
		}
	}
}

// HS256 tokens (for a peer verifying them in Rego) verify with the secret,
// and never come from the cache entries of an RSA key or another secret.
func TestNewPlanHS256(t *testing.T) {
	t.Parallel()
	key, _ := testKeys(t)
	cache := filepath.Join(t.TempDir(), "tokens.json")
	sc := userScenario(t, 6, 3)
	secret := []byte(strings.Repeat("s", 32))
	mk := func(opts loadgen.PlanOptions) *loadgen.Plan {
		t.Helper()
		opts.TokenCache = cache
		p, err := loadgen.NewPlan(sc, opts)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := mk(loadgen.PlanOptions{SigningKey: key}); p.MintedTokens != 3 {
		t.Fatalf("RS256: signed %d", p.MintedTokens)
	}
	hs := mk(loadgen.PlanOptions{HMACSecret: secret})
	if hs.MintedTokens != 3 {
		t.Errorf("HS256 after RS256 tokens were cached: signed %d, want 3", hs.MintedTokens)
	}
	tok, err := jwt.Parse(bearers(hs)[0], func(*jwt.Token) (any, error) { return secret, nil }, jwt.WithValidMethods([]string{"HS256"}))
	if err != nil || !tok.Valid {
		t.Fatalf("HS256 token: %v", err)
	}
	if p := mk(loadgen.PlanOptions{HMACSecret: secret}); p.MintedTokens != 0 {
		t.Errorf("HS256 again: signed %d, want 0", p.MintedTokens)
	}
	if p := mk(loadgen.PlanOptions{HMACSecret: []byte(strings.Repeat("t", 32))}); p.MintedTokens != 3 {
		t.Errorf("another secret: signed %d, want 3", p.MintedTokens)
	}
}
