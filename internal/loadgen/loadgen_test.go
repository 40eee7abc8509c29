package loadgen_test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gatehouse-dev/gatehouse/internal/keys"
	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
)

const testScenario = `{
  "issuer": "https://bench.gatehouse.test/",
  "audience": "api",
  "requests": [
    {"name": "alice-ok", "weight": 6, "path": "/t/acme/items?x=1", "host": "api.example.com",
     "headers": {"X-Foo": "bar"}, "context_extensions": {"project": "p1"},
     "subject": "alice", "claims": {"tenant": "acme"}, "token": "valid", "expect": "allow"},
    {"name": "alice-other-tenant", "weight": 2, "method": "post", "path": "/t/globex/items",
     "subject": "alice", "claims": {"tenant": "acme"}, "token": "valid", "expect": "deny"},
    {"name": "expired", "path": "/t/acme/items", "subject": "alice", "claims": {"tenant": "acme"},
     "token": "expired", "expect": "deny"},
    {"name": "no-token", "path": "/t/acme/items", "token": "none", "expect": "deny"},
    {"name": "garbage", "path": "/t/acme/items", "token": "garbage", "expect": "deny"}
  ]
}`

// testKeys writes a key pair to a temporary folder and returns the private key
// and the public key as read back from public.pem.
func testKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	signing, public, err := keys.WriteRSA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := keys.LoadRSA(signing)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(public)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("public.pem: not a PUBLIC KEY PEM block")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(signing); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("signing.pem mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	return key, pub.(*rsa.PublicKey)
}

func plan(t testing.TB, scenario string, key *rsa.PrivateKey, expectAll *loadgen.Outcome) *loadgen.Plan {
	t.Helper()
	sc, err := loadgen.ParseScenario([]byte(scenario))
	if err != nil {
		t.Fatal(err)
	}
	p, err := loadgen.NewPlan(sc, loadgen.PlanOptions{SigningKey: key, ExpectAll: expectAll})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// serve runs an Authorization server on 127.0.0.1:0 until the test ends.
func serve(t testing.TB, srv authv3.AuthorizationServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if srv == nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- loadgen.ServeNoop(ctx, lis) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("ServeNoop: %v", err)
			}
		})
		return lis.Addr().String()
	}
	s := grpc.NewServer()
	authv3.RegisterAuthorizationServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// tenantServer decides as bench/policies/simple does: allow when the bearer
// token verifies and its tenant claim is the path's /t/{tenant}.
type tenantServer struct {
	authv3.UnimplementedAuthorizationServer
	pub *rsa.PublicKey
}

func (s tenantServer) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	deny := &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}}
	h := req.GetAttributes().GetRequest().GetHttp()
	raw, ok := strings.CutPrefix(h.GetHeaders()["authorization"], "Bearer ")
	if !ok {
		return deny, nil
	}
	var claims jwt.MapClaims
	tok, err := jwt.ParseWithClaims(raw, &claims, func(tok *jwt.Token) (any, error) {
		if tok.Header["kid"] != loadgen.KeyID {
			return nil, errors.New("unknown kid")
		}
		return s.pub, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer("https://bench.gatehouse.test/"),
		jwt.WithAudience("api"), jwt.WithExpirationRequired())
	if err != nil || !tok.Valid {
		return deny, nil
	}
	seg := strings.Split(strings.TrimPrefix(h.GetPath(), "/"), "/")
	if len(seg) < 2 || seg[0] != "t" || claims["tenant"] != seg[1] {
		return deny, nil
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}}, nil
}

// failServer answers every Check with a gRPC error.
type failServer struct {
	authv3.UnimplementedAuthorizationServer
}

func (failServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return nil, status.Error(codes.Internal, "policy exploded")
}

func checkSane(t *testing.T, res *loadgen.Result) {
	t.Helper()
	if res.Checks <= 0 {
		t.Fatalf("Checks = %d, want > 0", res.Checks)
	}
	var sum int64
	for _, rs := range res.Requests {
		if rs.Count != rs.Allowed+rs.Denied+rs.Errors {
			t.Errorf("%s: Count %d != %d+%d+%d", rs.Name, rs.Count, rs.Allowed, rs.Denied, rs.Errors)
		}
		sum += rs.Count
	}
	if sum != res.Checks {
		t.Errorf("per-request counts add up to %d, Checks = %d", sum, res.Checks)
	}
	if got, want := res.ChecksPerSec, float64(res.Checks)/res.DurationSeconds; got != want {
		t.Errorf("ChecksPerSec = %v, want %v", got, want)
	}
	l := res.Latency
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Errorf("percentiles out of order: %+v", l)
	}
	if l.Mean <= 0 || l.Mean > l.Max || l.Max > 5000 {
		t.Errorf("mean/max implausible: %+v", l)
	}
}

func TestRunClosedLoopAgainstNoop(t *testing.T) {
	t.Parallel()
	key, _ := testKeys(t)
	allow := loadgen.Allow
	addr := serve(t, nil)
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr:        addr,
		Plan:        plan(t, testScenario, key, &allow),
		Concurrency: 4,
		Conns:       2,
		Warmup:      100 * time.Millisecond,
		Duration:    400 * time.Millisecond,
		PID:         os.Getpid(), // the server runs in this process
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSane(t, res)
	if !res.OK || res.Check() != nil || res.Errors != 0 || res.Mismatches != 0 {
		t.Errorf("noop with expect-all allow: OK=%v errors=%d mismatches=%d: %v", res.OK, res.Errors, res.Mismatches, res.Check())
	}
	if res.Mode != loadgen.ModeClosed || res.ServiceLatency != nil || res.Concurrency != 4 || res.Conns != 2 {
		t.Errorf("mode %q conc %d conns %d service %v", res.Mode, res.Concurrency, res.Conns, res.ServiceLatency)
	}
	// Weights 6:2:1:1:1 — the heaviest request is sent most.
	if res.Requests[0].Count <= res.Requests[1].Count || res.Requests[1].Count <= res.Requests[4].Count/2 {
		t.Errorf("mix does not follow the weights: %+v", res.Requests)
	}
	if res.Server == nil || res.Server.RSSMiB <= 0 || res.Server.CPUMicrosPerCheck < 0 {
		t.Errorf("server stats = %+v", res.Server)
	}
	line := res.String()
	if !strings.Contains(line, "closed c=4 conns=2") || !strings.Contains(line, "all answers as expected") {
		t.Errorf("String() = %q", line)
	}
	var back loadgen.Result
	b, _ := json.Marshal(res)
	if err := json.Unmarshal(b, &back); err != nil || back.Checks != res.Checks || back.Latency != res.Latency {
		t.Errorf("JSON round trip: %v %s", err, b)
	}
}

func TestRunVerifiesDecisions(t *testing.T) {
	t.Parallel()
	key, pub := testKeys(t)
	addr := serve(t, tenantServer{pub: pub})
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr: addr, Plan: plan(t, testScenario, key, nil), Concurrency: 3, Duration: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSane(t, res)
	if err := res.Check(); err != nil {
		t.Fatalf("a server that decides correctly: %v\n%s", err, res)
	}
	for _, rs := range res.Requests {
		if (rs.Expect == "allow") != (rs.Allowed == rs.Count) || rs.Count == 0 {
			t.Errorf("%+v", rs)
		}
	}
}

func TestRunReportsMismatches(t *testing.T) {
	t.Parallel()
	key, _ := testKeys(t)
	addr := serve(t, nil) // allows everything; the scenario expects denies
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr: addr, Plan: plan(t, testScenario, key, nil), Concurrency: 2, Duration: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSane(t, res)
	var denies int64
	for _, rs := range res.Requests {
		if rs.Expect == "deny" {
			denies += rs.Count
			if rs.Mismatches != rs.Count {
				t.Errorf("%s: %d mismatches of %d", rs.Name, rs.Mismatches, rs.Count)
			}
		} else if rs.Mismatches != 0 {
			t.Errorf("%s: %d mismatches", rs.Name, rs.Mismatches)
		}
	}
	if res.OK || res.Mismatches != denies || res.Mismatches == 0 {
		t.Errorf("OK=%v mismatches=%d, want %d", res.OK, res.Mismatches, denies)
	}
	err = res.Check()
	if !errors.Is(err, loadgen.ErrMismatch) || errors.Is(err, loadgen.ErrRPC) || !strings.Contains(err.Error(), "alice-other-tenant") {
		t.Errorf("Check() = %v", err)
	}
	if s := res.String(); !strings.Contains(s, "FAILED") || !strings.Contains(s, "MISMATCH") {
		t.Errorf("String() hides the mismatch: %q", s)
	}
}

func TestRunReportsErrors(t *testing.T) {
	t.Parallel()
	addr := serve(t, failServer{})
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr: addr, Plan: plan(t, `{"requests": [{"name": "r", "path": "/", "expect": "allow"}]}`, nil, nil),
		Duration: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors == 0 || res.Errors != res.Checks || res.Mismatches != 0 || res.OK {
		t.Errorf("errors=%d checks=%d mismatches=%d OK=%v", res.Errors, res.Checks, res.Mismatches, res.OK)
	}
	if fe := res.Requests[0].FirstError; fe != "Internal: policy exploded" {
		t.Errorf("FirstError = %q", fe)
	}
	if err := res.Check(); !errors.Is(err, loadgen.ErrRPC) || errors.Is(err, loadgen.ErrMismatch) {
		t.Errorf("Check() = %v", err)
	}
}

func TestRunOpenLoop(t *testing.T) {
	t.Parallel()
	key, _ := testKeys(t)
	allow := loadgen.Allow
	addr := serve(t, nil)
	const rate, window = 1000.0, 500 * time.Millisecond
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr: addr, Plan: plan(t, testScenario, key, &allow), Concurrency: 8,
		Rate: rate, Warmup: 100 * time.Millisecond, Duration: window,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSane(t, res)
	// Exactly the calls scheduled inside the window are recorded (or missed).
	if want := int64(rate * window.Seconds()); res.Checks+res.Missed != want {
		t.Errorf("checks %d + missed %d, want %d scheduled", res.Checks, res.Missed, want)
	}
	if res.Mode != loadgen.ModeOpen || res.TargetRate != rate || res.ServiceLatency == nil {
		t.Fatalf("mode %q target %v service %v", res.Mode, res.TargetRate, res.ServiceLatency)
	}
	// Latency counts from the scheduled time, never after the actual send.
	if s := res.ServiceLatency; s.P50 > res.Latency.P50 || s.P99 > res.Latency.P99 || s.Max > res.Latency.Max {
		t.Errorf("service latency %+v above latency %+v", *s, res.Latency)
	}
	if !strings.HasPrefix(res.String(), "open 1000/s c=8") {
		t.Errorf("String() = %q", res.String())
	}
}

// slowServer answers after a fixed delay.
type slowServer struct {
	authv3.UnimplementedAuthorizationServer
	delay time.Duration
}

func (s slowServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	time.Sleep(s.delay)
	return &authv3.CheckResponse{}, nil
}

// An open loop above what the server can serve queues, and the queueing
// shows in the latency: no coordinated omission.
func TestRunOpenLoopCountsQueueing(t *testing.T) {
	t.Parallel()
	addr := serve(t, slowServer{delay: 10 * time.Millisecond})
	// One worker, 10 ms per call, 200 calls/s scheduled: it falls behind
	// by 5 ms per call.
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr: addr, Plan: plan(t, `{"requests": [{"name": "r", "path": "/", "expect": "allow"}]}`, nil, nil),
		Concurrency: 1, Rate: 200, Duration: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.ServiceLatency.P50 > 50 || res.Latency.Max < 100 {
		t.Errorf("latency from schedule %+v should grow far beyond service %+v", res.Latency, *res.ServiceLatency)
	}
}

func TestRunConfigErrors(t *testing.T) {
	t.Parallel()
	p := plan(t, `{"requests": [{"name": "r", "path": "/", "expect": "allow"}]}`, nil, nil)
	tests := map[string]struct {
		cfg  loadgen.Config
		want string
	}{
		"no addr":         {loadgen.Config{Plan: p, Duration: time.Second}, "addr is required"},
		"no plan":         {loadgen.Config{Addr: "x:1", Duration: time.Second}, "no requests"},
		"no duration":     {loadgen.Config{Addr: "x:1", Plan: p}, "duration"},
		"conns > conc":    {loadgen.Config{Addr: "x:1", Plan: p, Duration: time.Second, Concurrency: 2, Conns: 3}, "conns 3"},
		"negative rate":   {loadgen.Config{Addr: "x:1", Plan: p, Duration: time.Second, Rate: -1}, "rate"},
		"negative conc":   {loadgen.Config{Addr: "x:1", Plan: p, Duration: time.Second, Concurrency: -1}, "concurrency"},
		"negative warmup": {loadgen.Config{Addr: "x:1", Plan: p, Duration: time.Second, Warmup: -1}, "warmup"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := loadgen.Run(t.Context(), tc.cfg)
			if !errors.Is(err, loadgen.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run() = %v, want ErrConfig mentioning %q", err, tc.want)
			}
		})
	}
}

func TestRunNoServer(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	_, err = loadgen.Run(t.Context(), loadgen.Config{
		Addr: addr, Plan: plan(t, `{"requests": [{"name": "r", "path": "/", "expect": "allow"}]}`, nil, nil),
		Duration: time.Second,
	})
	if err == nil || !strings.Contains(err.Error(), "connect to "+addr) {
		t.Errorf("Run() = %v", err)
	}
}

func TestParseScenarioErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		json string
		want string
	}{
		"not json":        {`{"requests": [`, "unexpected EOF"},
		"unknown field":   {`{"requests": [{"name": "a", "path": "/", "expect": "allow", "paht": "/x"}]}`, `unknown field "paht"`},
		"trailing data":   {`{"requests": [{"name": "a", "path": "/", "expect": "allow"}]} {}`, "trailing data"},
		"no requests":     {`{"requests": []}`, "no requests"},
		"no name":         {`{"requests": [{"path": "/", "expect": "allow"}]}`, "name is required"},
		"duplicate name":  {`{"requests": [{"name": "a", "path": "/", "expect": "allow"}, {"name": "a", "path": "/", "expect": "deny"}]}`, "duplicate name"},
		"negative weight": {`{"requests": [{"name": "a", "weight": -1, "path": "/", "expect": "allow"}]}`, "weight -1"},
		"relative path":   {`{"requests": [{"name": "a", "path": "x", "expect": "allow"}]}`, `path "x"`},
		"bad token":       {`{"requests": [{"name": "a", "path": "/", "token": "forged", "expect": "allow"}]}`, `token "forged"`},
		"no issuer":       {`{"requests": [{"name": "a", "path": "/", "token": "valid", "expect": "allow"}]}`, "needs the scenario's issuer"},
		"bad expect":      {`{"requests": [{"name": "a", "path": "/", "expect": "maybe"}]}`, `expect "maybe"`},
		"expect error":    {`{"requests": [{"name": "a", "path": "/", "expect": "error"}]}`, `expect "error"`},
		"missing expect":  {`{"requests": [{"name": "a", "path": "/"}]}`, `expect ""`},
		"bad header":      {`{"requests": [{"name": "a", "path": "/", "expect": "allow", "headers": {"x y": "1"}}]}`, `header name "x y"`},
		"weights too big": {`{"requests": [{"name": "a", "weight": 2000000, "path": "/", "expect": "allow"}]}`, "weights add up"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := loadgen.ParseScenario([]byte(tc.json))
			if !errors.Is(err, loadgen.ErrScenario) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseScenario() = %v, want ErrScenario mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseScenarioReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := loadgen.ParseScenario([]byte(`{"requests": [{"name": "a", "path": "x", "expect": "no"}]}`))
	if err == nil || !strings.Contains(err.Error(), `path "x"`) || !strings.Contains(err.Error(), `expect "no"`) {
		t.Errorf("ParseScenario() = %v", err)
	}
}

func TestLoadScenarioBenchFile(t *testing.T) {
	t.Parallel()
	sc, err := loadgen.LoadScenario(filepath.Join("..", "..", "bench", "scenario-simple.json"))
	if err != nil {
		t.Fatal(err)
	}
	total, deny := 0, 0
	for _, r := range sc.Requests {
		total += max(r.Weight, 1)
		if r.Expect == "deny" {
			deny += max(r.Weight, 1)
		}
	}
	if deny*5 != total {
		t.Errorf("bench scenario denies %d of %d, want 20%%", deny, total)
	}
	if _, err := loadgen.LoadScenario(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("LoadScenario(missing) = nil error")
	}
}

func TestNewPlanNeedsSigningKey(t *testing.T) {
	t.Parallel()
	sc, err := loadgen.ParseScenario([]byte(testScenario))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadgen.NewPlan(sc, loadgen.PlanOptions{}); !errors.Is(err, loadgen.ErrNoSigningKey) {
		t.Errorf("NewPlan without key = %v, want ErrNoSigningKey", err)
	}
}

func TestNewPlanBuildsEnvoyRequests(t *testing.T) {
	t.Parallel()
	key, pub := testKeys(t)
	p := plan(t, testScenario, key, nil)
	if len(p.Requests) != 5 || len(p.Names) != 5 || p.Names[0] != "alice-ok" || p.Expect[1] != loadgen.Deny {
		t.Fatalf("plan = %v %v", p.Names, p.Expect)
	}
	a := p.Requests[0].GetAttributes()
	h := a.GetRequest().GetHttp()
	want := map[string]string{
		":authority": "api.example.com", ":method": "GET", ":path": "/t/acme/items?x=1", ":scheme": "http",
		"x-foo": "bar", "x-request-id": h.GetId(), "user-agent": "gatehouse-loadgen/1",
	}
	for k, v := range want {
		if got := h.GetHeaders()[k]; got != v {
			t.Errorf("header %q = %q, want %q", k, got, v)
		}
	}
	for k := range h.GetHeaders() {
		if k != strings.ToLower(k) {
			t.Errorf("header %q is not lowercase", k)
		}
	}
	if h.GetMethod() != "GET" || h.GetPath() != "/t/acme/items?x=1" || h.GetHost() != "api.example.com" ||
		h.GetScheme() != "http" || h.GetProtocol() != "HTTP/1.1" || len(h.GetId()) != 36 {
		t.Errorf("http = %v", h)
	}
	if a.GetContextExtensions()["project"] != "p1" || a.GetSource().GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" ||
		a.GetDestination().GetAddress().GetSocketAddress().GetPortValue() != 8000 {
		t.Errorf("attributes = %v", a)
	}
	if m := p.Requests[1].GetAttributes().GetRequest().GetHttp().GetMethod(); m != "POST" {
		t.Errorf("method = %q, want POST", m)
	}

	// Tokens: valid verifies with public.pem and carries the claims;
	// expired is expired; none has no header; garbage is not a JWT.
	bearer := func(i int) string {
		return p.Requests[i].GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"]
	}
	keyFunc := func(*jwt.Token) (any, error) { return pub, nil }
	var claims jwt.MapClaims
	tok, err := jwt.ParseWithClaims(strings.TrimPrefix(bearer(0), "Bearer "), &claims, keyFunc, jwt.WithValidMethods([]string{"RS256"}))
	if err != nil || !tok.Valid || tok.Header["kid"] != "bench" {
		t.Fatalf("valid token: %v %v", err, tok)
	}
	if claims["sub"] != "alice" || claims["tenant"] != "acme" || claims["iss"] != "https://bench.gatehouse.test/" || claims["aud"] != "api" {
		t.Errorf("claims = %v", claims)
	}
	if exp, _ := claims.GetExpirationTime(); exp == nil || time.Until(exp.Time) < 50*time.Minute {
		t.Errorf("exp = %v, want about an hour ahead", exp)
	}
	if _, err := jwt.Parse(strings.TrimPrefix(bearer(2), "Bearer "), keyFunc); !errors.Is(err, jwt.ErrTokenExpired) {
		t.Errorf("expired token: %v", err)
	}
	if b := bearer(3); b != "" {
		t.Errorf("token none: authorization = %q", b)
	}
	if _, err := jwt.Parse(strings.TrimPrefix(bearer(4), "Bearer "), keyFunc); !errors.Is(err, jwt.ErrTokenMalformed) {
		t.Errorf("garbage token: %v", err)
	}
}

func TestLoadSigningKeyErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "a.pem")
	pub := filepath.Join(dir, "pub.pem")
	_ = os.WriteFile(notPEM, []byte("hello"), 0o600)
	_ = os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}), 0o600)
	for _, path := range []string{notPEM, pub, filepath.Join(dir, "missing.pem")} {
		if _, err := keys.LoadRSA(path); err == nil {
			t.Errorf("LoadRSA(%s) = nil error", filepath.Base(path))
		}
	}
}

func TestProc(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := loadgen.ProcCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
	if rss, err := loadgen.ProcRSS(os.Getpid()); err != nil || rss < 1<<20 {
		t.Errorf("ProcRSS = %d, %v", rss, err)
	}
	if _, err := loadgen.ProcCPU(1 << 30); !errors.Is(err, loadgen.ErrProc) {
		t.Errorf("ProcCPU(no such pid) = %v", err)
	}
}

func TestBenchTable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(server, file, content string) { writeServerFile(t, dir, server, file, content) }
	run := func(rate, p99 float64, ok bool) string {
		r := loadgen.Result{ChecksPerSec: rate, Latency: loadgen.Latency{P99: p99}, OK: ok, Checks: 100,
			Server: &loadgen.ProcStats{CPUMicrosPerCheck: 30, RSSMiB: 19.5}}
		if !ok {
			r.Mismatches = 7
			r.Requests = []loadgen.RequestStats{{Name: "wrong-tenant", Expect: "deny", Allowed: 7, Mismatches: 7}}
		}
		b, _ := json.Marshal(r)
		return string(b)
	}
	write("noop", "floor", "")
	write("noop", "c16.json", run(28000, 2.7, true))
	write("noop", "c1.json", run(5000, 0.36, true))
	write("noop", "half_peak.json", run(14000, 0.5, true))
	write("gatehouse", "c16.json", run(14000, 3, false))
	write("other", "skipped", "bin/other not built\n")

	f, out := benchTable(t, dir, "not pinned", "noop", "gatehouse", "other")
	for _, want := range []string{
		"| noop (floor) ", "| 28,000 ", "| 1.00 ", "| 0.36 ms ", "| 2.70 ms ", "| 0.50 ms ", "| 30.0 ", "| 19.5 ",
		"| gatehouse INVALID ", "| 0.50 ", "| other ", "| skipped ", "- other: skipped (bin/other not built)",
		"- not pinned", "gatehouse c=16: INVALID, 7 mismatches", "wrong-tenant",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if f.OK() {
		t.Error("OK() = true with mismatches")
	}
	f.Servers = f.Servers[:1]
	if !f.OK() {
		t.Error("OK() = false for a valid floor")
	}
	if _, err := loadgen.CollectBenchServer(filepath.Join(dir, "absent")); err == nil {
		t.Error("CollectBenchServer(absent) = nil error")
	}
}

// writeServerFile writes content to dir/server/file, as bench/bench.sh
// leaves a server's results for CollectBenchServer.
func writeServerFile(t *testing.T, dir, server, file, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, server), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, server, file), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// benchTable collects the servers' folders under dir, in order, into a
// BenchFile with note and returns it with its table.
func benchTable(t *testing.T, dir, note string, servers ...string) (*loadgen.BenchFile, string) {
	t.Helper()
	f := &loadgen.BenchFile{Note: note}
	for _, s := range servers {
		bs, err := loadgen.CollectBenchServer(filepath.Join(dir, s))
		if err != nil {
			t.Fatal(err)
		}
		f.Servers = append(f.Servers, bs)
	}
	var buf bytes.Buffer
	if err := f.Table(&buf); err != nil {
		t.Fatal(err)
	}
	return f, buf.String()
}
