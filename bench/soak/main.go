// main.go is long (about 700 lines) on purpose: the soak test is one
// self-contained program — a control endpoint, a sidecar, a load, a writer
// and the watchers — read top to bottom as the scenario it runs.

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gatehouse-dev/gatehouse/internal/keys"
	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

const issuer = "https://bench.gatehouse.test/"

// world is the soak's data: the benchmark's shape, smaller.
var world = worldgen.Spec{Providers: 4, Tenants: 200, Users: 10000, Projects: 40, GrantsPerProject: 20, UserGrants: 30000, ExternalPct: 10, Seed: 3}

type config struct {
	bin, policies      string
	duration, window   time.Duration
	fraction           float64
	concurrency        int
	rssRatio           float64
	rssSlackMiB        float64
	goroutineSlack     float64
	keep               bool
	writeEvery, reload time.Duration
}

func main() {
	var c config
	def := 5 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak: SOAK_DURATION:", err)
			os.Exit(2)
		}
		def = d
	}
	flag.StringVar(&c.bin, "bin", "bin/gatehouse", "the gatehouse binary")
	flag.StringVar(&c.policies, "policies", "policies", "the policies to serve (copied; the copy is edited)")
	flag.DurationVar(&c.duration, "duration", def, "how long to soak (SOAK_DURATION)")
	flag.DurationVar(&c.window, "window", 10*time.Second, "length of a reported window")
	flag.Float64Var(&c.fraction, "load", 0.7, "open-loop rate as a fraction of the measured peak")
	flag.IntVar(&c.concurrency, "concurrency", 16, "load generator workers")
	flag.Float64Var(&c.rssRatio, "rss-ratio", 1.25, "fail when the final RSS exceeds the first window's times this ...")
	flag.Float64Var(&c.rssSlackMiB, "rss-slack-mib", 32, "... plus this many MiB")
	flag.Float64Var(&c.goroutineSlack, "goroutine-slack", 25, "fail when goroutines end this many above the first window's")
	flag.DurationVar(&c.writeEvery, "write-every", time.Second, "interval of control writes")
	flag.DurationVar(&c.reload, "reload-every", 10*time.Second, "interval of policy edits")
	flag.BoolVar(&c.keep, "keep", false, "keep the work folder (logs, data)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("soak: PASS")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(ctx context.Context, c config) error {
	work, err := os.MkdirTemp("", "gatehouse-soak-")
	if err != nil {
		return err
	}
	if c.keep {
		logf("work folder %s (kept)", work)
	} else {
		defer os.RemoveAll(work)
	}
	signing, public, err := keys.WriteRSA(filepath.Join(work, "keys"))
	if err != nil {
		return err
	}
	key, err := keys.LoadRSA(signing)
	if err != nil {
		return err
	}
	adminFile, syncFile := filepath.Join(work, "admin.token"), filepath.Join(work, "sync.token")
	if err := os.WriteFile(adminFile, []byte("soak-admin"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(syncFile, []byte("soak-sync"), 0o600); err != nil {
		return err
	}
	policies := filepath.Join(work, "policies")
	if err := os.CopyFS(policies, os.DirFS(c.policies)); err != nil {
		return fmt.Errorf("copy policies: %w", err)
	}

	// the control endpoint and its world
	ctl, err := start(work, "control", nil, c.bin, "control", "--addr", "127.0.0.1:0", "--data-dir", filepath.Join(work, "control"),
		"--admin-token-file", adminFile, "--sync-token-file", syncFile, "--log-format", "json")
	if err != nil {
		return err
	}
	defer ctl.stop()
	m, err := ctl.waitLog("control listening", 30*time.Second)
	if err != nil {
		return err
	}
	admin := &adminClient{url: "http://" + addr(m["addr"]), token: "soak-admin"}
	logf("control on %s; writing the world", admin.url)
	w, err := seed(admin)
	if err != nil {
		return err
	}

	// the sidecar
	cfg := fmt.Sprintf(`listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", ops: "127.0.0.1:0"}
policies: {dir: %q}
data: {dir: %q, control_url: %q, token_file: %q, min_revision_wait: 2s}
issuers:
  - {issuer: %q, audiences: [api], algorithms: [RS256], public_key_file: %q}
log: {level: info, format: json}
`, policies, filepath.Join(work, "sidecar"), admin.url, syncFile, issuer, public)
	cfgFile := filepath.Join(work, "serve.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return err
	}
	sc, err := start(work, "sidecar", []string{"GOMAXPROCS=1"}, c.bin, "serve", "--config", cfgFile)
	if err != nil {
		return err
	}
	defer sc.stop()
	m, err = sc.waitLog("gatehouse serve starting", 30*time.Second)
	if err != nil {
		return err
	}
	grpcAddr, opsURL := addr(m["grpc"]), "http://"+addr(m["ops"])
	if _, err := sc.waitLog("ready", 120*time.Second); err != nil {
		return err
	}
	logf("sidecar ready (pid %d): grpc %s, ops %s", sc.cmd.Process.Pid, grpcAddr, opsURL)

	// the load: requests with known answers
	sc2 := loadgen.Scenario{Issuer: issuer, Audience: "api"}
	exp := map[string]any{"exp": time.Now().Add(c.duration + time.Hour).Unix()} // outlive the soak
	for i, r := range w.Requests(2000, 80, 11) {
		expect := "deny"
		if r.Allow {
			expect = "allow"
		}
		sc2.Requests = append(sc2.Requests, loadgen.Request{Name: fmt.Sprintf("r%04d-%s", i, r.Reason), Weight: 1, Path: r.Path,
			Host: "api.example.com", ContextExtensions: r.Context, Subject: r.Subject, Claims: exp, Token: loadgen.TokenValid, Expect: expect})
	}
	plan, err := loadgen.NewPlan(&sc2, loadgen.PlanOptions{SigningKey: key})
	if err != nil {
		return err
	}
	peak, err := loadgen.Run(ctx, loadgen.Config{Addr: grpcAddr, Plan: plan, Concurrency: c.concurrency, Warmup: 2 * time.Second, Duration: 5 * time.Second, PID: sc.cmd.Process.Pid})
	if err != nil {
		return err
	}
	if err := peak.Check(); err != nil {
		return fmt.Errorf("peak run: %w", err)
	}
	rate := peak.ChecksPerSec * c.fraction
	logf("peak %.0f checks/s (closed loop c=%d); soaking at %.0f/s for %v", peak.ChecksPerSec, c.concurrency, rate, c.duration)

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	soakToken, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"iss": issuer, "aud": "api", "sub": "soak-u",
		"exp": time.Now().Add(c.duration + time.Hour).Unix()}).SignedString(key)
	if err != nil {
		return err
	}

	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var st stats
	wg.Go(func() { writeLoop(bg, c.writeEvery, admin, client, soakToken, &st) })
	wg.Go(func() { reloadLoop(bg, c.reload, filepath.Join(policies, "envoy", "authz.rego"), opsURL, &st) })

	fmt.Printf("\n| t | checks/s | p99 ms | errors | wrong | writes ok/wrong/err | write→decision p99 ms (so far) | reloads ok/failed | RSS MiB | goroutines | heap MiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	var rows []sample
	begin := time.Now()
	var failures []string
	for i := 0; time.Since(begin) < c.duration && ctx.Err() == nil; i++ {
		res, err := loadgen.Run(ctx, loadgen.Config{Addr: grpcAddr, Plan: plan, Concurrency: c.concurrency, Rate: rate, Duration: c.window})
		if err != nil {
			failures = append(failures, fmt.Sprintf("window %d: %v", i, err))
			break
		}
		s, err := scrape(opsURL)
		if err != nil {
			failures = append(failures, fmt.Sprintf("window %d: metrics: %v", i, err))
			break
		}
		s.at, s.res = time.Since(begin), res
		rows = append(rows, s)
		ok, wrong, werr, lat := st.writes()
		rok, rfail := st.reloads.Load(), st.reloadFailures.Load()
		fmt.Printf("| %s | %.0f | %.2f | %d | %d | %d/%d/%d | %.1f | %d/%d | %.1f | %.0f | %.1f |\n",
			s.at.Round(time.Second), res.ChecksPerSec, res.Latency.P99, res.Errors, res.Mismatches, ok, wrong, werr, lat, rok, rfail,
			s.rss/(1<<20), s.goroutines, s.heap/(1<<20))
		if err := res.Check(); err != nil {
			failures = append(failures, fmt.Sprintf("window %d: %v", i, err))
		}
		if res.Missed > 0 {
			logf("window %d: the load generator missed %d scheduled calls (machine busy?)", i, res.Missed)
		}
		if !sc.alive() {
			failures = append(failures, "the sidecar exited")
			break
		}
	}
	stopBG()
	wg.Wait()
	if len(rows) == 0 {
		return errors.Join(append([]error{errors.New("no window completed")}, errs(failures)...)...)
	}
	ok, wrong, werr, _ := st.writes()
	if wrong > 0 || werr > 0 {
		failures = append(failures, fmt.Sprintf("%d writes decided wrongly, %d failed (of %d)", wrong, werr, ok+wrong+werr))
	}
	if n := st.reloadFailures.Load(); n > 0 {
		failures = append(failures, fmt.Sprintf("%d policy edits were not served within 3s", n))
	}
	if st.reloads.Load() == 0 && c.duration >= 2*c.reload {
		failures = append(failures, "no policy edit was picked up")
	}
	first, last := rows[0], rows[len(rows)-1]
	if len(rows) >= 3 {
		last.rss = (rows[len(rows)-1].rss + rows[len(rows)-2].rss) / 2
	}
	rssLimit := first.rss*c.rssRatio + c.rssSlackMiB*(1<<20)
	fmt.Printf("\nRSS %.1f MiB after the first window, %.1f at the end (bound %.1f); goroutines %.0f then %.0f (bound %.0f); %d checks in %d windows\n",
		first.rss/(1<<20), last.rss/(1<<20), rssLimit/(1<<20), first.goroutines, last.goroutines, first.goroutines+c.goroutineSlack, totalChecks(rows), len(rows))
	if last.rss > rssLimit {
		failures = append(failures, fmt.Sprintf("RSS grew from %.1f to %.1f MiB (bound %.1f)", first.rss/(1<<20), last.rss/(1<<20), rssLimit/(1<<20)))
	}
	if last.goroutines > first.goroutines+c.goroutineSlack {
		failures = append(failures, fmt.Sprintf("goroutines grew from %.0f to %.0f", first.goroutines, last.goroutines))
	}
	if len(failures) > 0 {
		return errors.Join(errs(failures)...)
	}
	return nil
}

func errs(msgs []string) []error {
	out := make([]error, len(msgs))
	for i, m := range msgs {
		out[i] = errors.New(m)
	}
	return out
}

func totalChecks(rows []sample) int64 {
	var n int64
	for _, r := range rows {
		n += r.res.Checks
	}
	return n
}

// --- processes -------------------------------------------------------------

type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	lines  []string
}

// start runs a child process, its stderr (JSON logs) kept in memory and in
// work/<name>.log.
func start(work, name string, env []string, bin string, args ...string) (*process, error) {
	p := &process{name: name, cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	logFile, err := os.Create(filepath.Join(work, name+".log"))
	if err != nil {
		return nil, err
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			p.mu.Lock()
			if len(p.lines) < 10000 {
				p.lines = append(p.lines, sc.Text())
			}
			p.mu.Unlock()
		}
	}()
	go func() {
		<-read
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitLog returns the fields of the first log line with msg.
func (p *process) waitLog(msg string, timeout time.Duration) (map[string]any, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		lines := p.lines
		p.mu.Unlock()
		for _, l := range lines {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
				return m, nil
			}
		}
		if !p.alive() {
			return nil, fmt.Errorf("%s exited before logging %q", p.name, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, fmt.Errorf("%s: no %q within %v", p.name, msg, timeout)
}

func addr(v any) string {
	switch a := v.(type) {
	case string:
		return a
	case map[string]any:
		port, _ := a["Port"].(float64)
		ip, _ := a["IP"].(string)
		return net.JoinHostPort(ip, strconv.Itoa(int(port)))
	}
	return ""
}

// --- the control endpoint ------------------------------------------------------

type adminClient struct{ url, token string }

func (a *adminClient) do(method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, a.url+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// write sends one write and returns its revision.
func (a *adminClient) write(method, path string, body any) (uint64, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return 0, err
		}
	}
	status, resp, err := a.do(method, path, b)
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("%s %s: %d %s", method, path, status, bytes.TrimSpace(resp))
	}
	var ans struct{ Revision uint64 }
	return ans.Revision, json.Unmarshal(resp, &ans)
}

// seed writes the world in batches, plus the soak's own corner: tenant
// soak-t (a customer of t00000) holding a grant on p0000 (owned by t00000),
// and its user soak-u, whose user grant the write loop toggles.
func seed(a *adminClient) (*worldgen.World, error) {
	var ops []tenancy.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := a.write(http.MethodPost, "/v1/batch", map[string]any{"ops": ops})
		ops = ops[:0]
		return err
	}
	add := func(e tenancy.Entity) error {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		ops = append(ops, tenancy.Op{Op: tenancy.OpPut, Collection: e.Collection(), Value: b})
		if len(ops) == tenancy.MaxBatch {
			return flush()
		}
		return nil
	}
	w, err := worldgen.Generate(world, add)
	if err != nil {
		return nil, err
	}
	for _, e := range []tenancy.Entity{
		&tenancy.Tenant{ID: "soak-t", Parent: worldgen.TenantID(0), Kind: "customer"},
		&tenancy.ProjectGrant{ID: "soak-pg", Project: worldgen.ProjectID(0), Tenant: "soak-t", Roles: []string{"reader", "writer"}},
		&tenancy.User{ID: "soak-u", Tenant: "soak-t"},
	} {
		if err := add(e); err != nil {
			return nil, err
		}
	}
	return w, flush()
}

// --- background work --------------------------------------------------------

type stats struct {
	mu                      sync.Mutex
	ok, wrong, errs         int
	latencies               []time.Duration
	reloads, reloadFailures atomic.Int64
}

func (s *stats) writes() (ok, wrong, errs int, p99ms float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.latencies); n > 0 {
		l := append([]time.Duration(nil), s.latencies...)
		sortDurations(l)
		p99ms = float64(l[min(n-1, n*99/100)]) / float64(time.Millisecond)
	}
	return s.ok, s.wrong, s.errs, p99ms
}

func sortDurations(d []time.Duration) {
	for i := 1; i < len(d); i++ {
		for j := i; j > 0 && d[j] < d[j-1]; j-- {
			d[j], d[j-1] = d[j-1], d[j]
		}
	}
}

// writeLoop grants and revokes soak-u's user grant every interval; after
// each write, a check at the write's revision must reflect it.
func writeLoop(ctx context.Context, every time.Duration, a *adminClient, client authv3.AuthorizationClient, tok string, s *stats) {
	t := time.NewTicker(every)
	defer t.Stop()
	for granted := false; ; granted = !granted {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		var rev uint64
		var err error
		if !granted {
			rev, err = a.write(http.MethodPut, "/v1/user_grants/soak-ug", &tenancy.UserGrant{ID: "soak-ug", User: "soak-u", Project: worldgen.ProjectID(0), Tenant: "soak-t", Roles: []string{"reader"}})
		} else {
			rev, err = a.write(http.MethodDelete, "/v1/user_grants/soak-ug", nil)
		}
		allowed := false
		if err == nil {
			allowed, err = soakCheck(ctx, client, tok, rev)
		}
		s.mu.Lock()
		switch {
		case ctx.Err() != nil:
		case err != nil:
			s.errs++
			logf("write check: %v", err)
		case allowed != !granted:
			s.wrong++
			logf("write check: at revision %d the sidecar answered allowed=%v, want %v", rev, allowed, !granted)
		default:
			s.ok++
			s.latencies = append(s.latencies, time.Since(start))
		}
		s.mu.Unlock()
	}
}

func soakCheck(ctx context.Context, client authv3.AuthorizationClient, tok string, rev uint64) (bool, error) {
	path := "/t/soak-t/api/items"
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Method: "GET", Path: path, Host: "api.example.com", Scheme: "https", Protocol: "HTTP/1.1",
		Headers: map[string]string{":method": "GET", ":path": path, ":authority": "api.example.com",
			"authorization": "Bearer " + tok, "x-gatehouse-min-revision": strconv.FormatUint(rev, 10)},
	}}, ContextExtensions: map[string]string{"project": worldgen.ProjectID(0), "roles": "reader"}}}
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := client.Check(c, req)
	if err != nil {
		return false, err
	}
	return resp.GetStatus().GetCode() == int32(code.Code_OK), nil
}

// reloadLoop edits a policy file every interval (a comment line) and waits
// for the sidecar to serve the new policy revision.
func reloadLoop(ctx context.Context, every time.Duration, file, opsURL string, s *stats) {
	orig, err := os.ReadFile(file)
	if err != nil {
		logf("policy edit: %v", err)
		s.reloadFailures.Add(1)
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		before, _ := policyStatus(opsURL)
		content := append(append([]byte(nil), orig...), fmt.Sprintf("\n# soak edit %d\n", n)...)
		if err := os.WriteFile(file, content, 0o644); err != nil {
			logf("policy edit: %v", err)
			s.reloadFailures.Add(1)
			continue
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			rev, lastErr := policyStatus(opsURL)
			if lastErr != "" {
				logf("policy edit %d: %s", n, lastErr)
			}
			if rev != "" && rev != before {
				s.reloads.Add(1)
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				if ctx.Err() == nil {
					logf("policy edit %d: still serving %s after 3s", n, before)
					s.reloadFailures.Add(1)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func policyStatus(opsURL string) (revision, lastErr string) {
	resp, err := http.Get(opsURL + "/v1/status")
	if err != nil {
		return "", err.Error()
	}
	defer resp.Body.Close()
	var st struct {
		Policy struct {
			Revision  string `json:"revision"`
			LastError string `json:"last_error"`
		} `json:"policy"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", err.Error()
	}
	return st.Policy.Revision, st.Policy.LastError
}

// --- metrics -------------------------------------------------------------------

type sample struct {
	at                    time.Duration
	res                   *loadgen.Result
	rss, goroutines, heap float64
}

// scrape reads the sidecar's process and Go runtime gauges.
func scrape(opsURL string) (sample, error) {
	resp, err := http.Get(opsURL + "/metrics")
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	var s sample
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			s.rss = v
			found++
		case "go_goroutines":
			s.goroutines = v
			found++
		case "go_memstats_heap_inuse_bytes":
			s.heap = v
		}
	}
	if found < 2 {
		return s, errors.New("process_resident_memory_bytes or go_goroutines missing from /metrics")
	}
	return s, nil
}
