package authz_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// echo denies with the whole input (and a data document) as the body.
const echo = `package envoy.authz
allow := {"allowed": false, "body": json.marshal({"input": input, "tenancy": data.tenancy, "static": data.static})}
`

func decideCode(tb testing.TB, err error) authz.Code {
	tb.Helper()
	var de *authz.DecideError
	if !errors.As(err, &de) {
		tb.Fatalf("error %v is not a *DecideError", err)
	}
	return de.Code
}

// TestEngineNotReady: without a policy (or without tenancy data) the engine
// is not ready and cannot decide.
func TestEngineNotReady(t *testing.T) {
	t.Parallel()
	t.Run("no policy", func(t *testing.T) {
		t.Parallel()
		e := authz.New(authz.Config{}, nil, nil, testLogger(t))
		if err := e.Ready(); !errors.Is(err, authz.ErrNotReady) {
			t.Errorf("Ready = %v", err)
		}
		d, err := decide(t, e, nil, "")
		if !errors.Is(err, authz.ErrNotReady) || decideCode(t, err) != authz.CodeUnavailable {
			t.Fatalf("Decide = %v, %v; want unavailable, not ready", d, err)
		}
		if e.Policy() != nil || e.PolicyStatus().Revision != "" {
			t.Error("a policy before any load")
		}
	})
	t.Run("no tenancy data", func(t *testing.T) {
		t.Parallel()
		ten := testutil.NewTenancy(0, nil)
		ten.Set(authz.TenancyState{})
		e, _ := engineOn(t, policy("allow := true"), authz.Config{}, ten)
		if err := e.Ready(); !errors.Is(err, authz.ErrNotReady) {
			t.Errorf("Ready = %v", err)
		}
		if _, err := decide(t, e, nil, ""); !errors.Is(err, authz.ErrNotReady) || decideCode(t, err) != authz.CodeUnavailable {
			t.Fatalf("Decide error %v; want unavailable, not ready", err)
		}
		ten.Set(authz.TenancyState{Present: true, Revision: 1, SyncedAt: time.Now()})
		if err := e.Ready(); err != nil {
			t.Errorf("Ready with data = %v", err)
		}
	})
}

func testLogger(tb testing.TB) *slog.Logger {
	tb.Helper()
	l, _ := testutil.Logger(tb)
	return l
}

// TestEngineInput: Decide adds input.token and input.tenancy_revision, and
// the policy reads data.tenancy from the tenancy store and static data next
// to it.
func TestEngineInput(t *testing.T) {
	t.Parallel()
	ten := testutil.NewTenancy(42, map[string]any{"tenants": map[string]any{"acme": map[string]any{"status": "active"}}})
	files := map[string]string{"policy.rego": echo, "static/data.json": `{"plans": ["free"]}`}
	e, _ := engineOn(t, files, authz.Config{}, ten)
	signed := testutil.MintJWT(t, jwt.SigningMethodRS256, testutil.RSAKey(t, "engine"), "k1", testutil.Claims("https://idp.example.com/", "alice", nil))
	tests := map[string]struct {
		authorization string
		wantToken     string
	}{
		"no header":            {"", `{"error":"missing","valid":false}`},
		"basic":                {"Basic abc", `{"error":"missing","valid":false}`},
		"not a JWT":            {"Bearer a.b.c", `{"error":"malformed","valid":false}`},
		"no issuer is trusted": {"Bearer " + signed, `{"error":"unknown_issuer","valid":false}`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, err := decide(t, e, map[string]any{"attributes": map[string]any{"k": "v"}}, tc.authorization)
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Input   map[string]json.RawMessage
				Tenancy json.RawMessage
				Static  json.RawMessage
			}
			if err := json.Unmarshal([]byte(d.Body), &got); err != nil {
				t.Fatalf("%v: %s", err, d.Body)
			}
			if s := string(got.Input["token"]); s != tc.wantToken {
				t.Errorf("input.token = %s, want %s", s, tc.wantToken)
			}
			if s := string(got.Input["tenancy_revision"]); s != "42" {
				t.Errorf("input.tenancy_revision = %s", s)
			}
			if s := string(got.Input["attributes"]); s != `{"k":"v"}` {
				t.Errorf("input.attributes = %s", s)
			}
			if s := string(got.Tenancy); s != `{"tenants":{"acme":{"status":"active"}}}` {
				t.Errorf("data.tenancy = %s", s)
			}
			if s := string(got.Static); s != `{"plans":["free"]}` {
				t.Errorf("data.static = %s", s)
			}
			if d.TenancyRevision != 42 || d.PolicyRevision != e.Policy().Revision() || d.TokenError == "" || d.Subject != "" {
				t.Errorf("decision %+v", d)
			}
		})
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestEngineDecisionIdentity: every decision has a fresh UUIDv4 and names
// the revisions it used.
func TestEngineDecisionIdentity(t *testing.T) {
	t.Parallel()
	e, _ := engineWith(t, policy("allow := true"), authz.Config{})
	seen := map[string]bool{}
	for range 100 {
		d, err := decide(t, e, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if !uuidV4.MatchString(d.ID) || seen[d.ID] {
			t.Fatalf("decision id %q is not a fresh UUIDv4", d.ID)
		}
		seen[d.ID] = true
		if d.PolicyRevision == "" || d.PolicyRevision != e.PolicyStatus().Revision || d.Duration <= 0 {
			t.Fatalf("decision %+v", d)
		}
	}
}

// TestEngineEvaluationErrors: runtime errors are "cannot decide" (internal).
func TestEngineEvaluationErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"complete rule conflict": "allow := true if input.a == 1\nallow := false if input.b == 2",
		"object key conflict":    "allow := {\"allowed\": true, \"headers\": h}\nh[\"x\"] := \"1\" if input.a\nh[\"x\"] := \"2\" if input.b",
		"function conflict":      "f(_) := 1\nf(x) := 2 if x\nallow := f(true) == 1",
	}
	for name, rules := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e, _ := engineWith(t, policy(rules), authz.Config{})
			d, err := decide(t, e, map[string]any{"a": 1, "b": 2}, "")
			if !errors.Is(err, authz.ErrEvaluation) || decideCode(t, err) != authz.CodeInternal {
				t.Fatalf("Decide = %+v, %v; want an internal evaluation error", d, err)
			}
		})
	}
}

// TestEngineFreshness: max_staleness and min revision make Decide wait
// (bounded) or answer unavailable.
func TestEngineFreshness(t *testing.T) {
	t.Parallel()
	t.Run("stale", func(t *testing.T) {
		t.Parallel()
		ten := testutil.NewTenancy(3, nil)
		ten.Set(authz.TenancyState{Present: true, Revision: 3, SyncedAt: time.Now().Add(-time.Minute)})
		e, _ := engineOn(t, policy("allow := true"), authz.Config{MaxStaleness: time.Second}, ten)
		if _, err := decide(t, e, nil, ""); !errors.Is(err, authz.ErrStale) || decideCode(t, err) != authz.CodeUnavailable {
			t.Fatalf("Decide error %v, want unavailable stale", err)
		}
	})
	t.Run("min revision not reached", func(t *testing.T) {
		t.Parallel()
		e, _ := engineWith(t, policy("allow := true"), authz.Config{MinRevisionWait: 20 * time.Millisecond})
		start := time.Now()
		_, err := e.Decide(t.Context(), &authz.Request{MinRevision: 5})
		if !errors.Is(err, authz.ErrRevisionNotReached) || decideCode(t, err) != authz.CodeUnavailable {
			t.Fatalf("Decide error %v, want unavailable revision not reached", err)
		}
		if el := time.Since(start); el < 20*time.Millisecond {
			t.Errorf("gave up after %v, before the wait bound", el)
		}
	})
	t.Run("min revision reached", func(t *testing.T) {
		t.Parallel()
		ten := testutil.NewTenancy(9, nil)
		e, _ := engineOn(t, policy("allow := true"), authz.Config{MinRevisionWait: time.Nanosecond}, ten)
		d, err := e.Decide(t.Context(), &authz.Request{MinRevision: 9})
		if err != nil || !d.Allowed || d.TenancyRevision != 9 {
			t.Fatalf("Decide = %+v, %v", d, err)
		}
	})
}

// TestEnginePolicyStatus: loads and failures show in PolicyStatus and the
// gatehouse_policy_loads_total counter.
func TestEnginePolicyStatus(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	e := authz.New(authz.Config{Registerer: reg}, nil, nil, testLogger(t))
	ps := compileModule(t, "package envoy.authz\nallow := true\n", "rev-1")
	e.SetPolicy(ps)
	st := e.PolicyStatus()
	if st.Revision != "rev-1" || st.LoadedAt.IsZero() || st.LastError != "" {
		t.Errorf("status after a load: %+v", st)
	}
	e.PolicyFailed(errors.New("policy.rego:3: rego_parse_error: unexpected eof"))
	st = e.PolicyStatus()
	if st.Revision != "rev-1" || !strings.Contains(st.LastError, "rego_parse_error") {
		t.Errorf("status after a failure: %+v", st)
	}
	if err := e.Ready(); err != nil {
		t.Errorf("a failed reload made the engine unready: %v", err)
	}
	e.SetPolicy(compileModule(t, "package envoy.authz\nallow := false\n", "rev-2"))
	if st := e.PolicyStatus(); st.Revision != "rev-2" || st.LastError != "" {
		t.Errorf("status after the fix: %+v", st)
	}
	for result, want := range map[string]float64{"success": 2, "error": 1} {
		if got := testutil.MetricValue(t, reg, "gatehouse_policy_loads_total", map[string]string{"result": result}); got != want {
			t.Errorf("gatehouse_policy_loads_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}

func compileModule(tb testing.TB, src, rev string) *authz.PolicySet {
	tb.Helper()
	m, err := ast.ParseModuleWithOpts("policy.rego", src, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if err != nil {
		tb.Fatal(err)
	}
	ps, err := authz.Compile(authz.Source{Modules: map[string]*ast.Module{"policy.rego": m}, Revision: rev}, authz.DefaultDecision)
	if err != nil {
		tb.Fatal(err)
	}
	return ps
}

// TestEngineSwapUnderLoad: policies swap while decisions run; each decision
// is made wholly by one policy set (run with -race).
func TestEngineSwapUnderLoad(t *testing.T) {
	t.Parallel()
	e := authz.New(authz.Config{}, nil, nil, testLogger(t))
	sets := make([]*authz.PolicySet, 4)
	for i := range sets {
		sets[i] = compileModule(t, fmt.Sprintf("package envoy.authz\nallow := {\"allowed\": true, \"headers\": {\"x-rev\": %q}}\n", fmt.Sprint(i)), fmt.Sprint(i))
	}
	e.SetPolicy(sets[0])
	var done atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		defer done.Store(true)
		for i := range 200 {
			e.SetPolicy(sets[i%len(sets)])
		}
	})
	for range 4 {
		wg.Go(func() {
			for !done.Load() {
				d, err := e.Decide(t.Context(), &authz.Request{Input: ast.NewObject()})
				if err != nil {
					t.Errorf("Decide: %v", err)
					return
				}
				if len(d.Headers) != 1 || d.Headers[0].Value != d.PolicyRevision {
					t.Errorf("decision mixes policy sets: headers %v, revision %s", d.Headers, d.PolicyRevision)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestEnginePrintGoesToDebugLog: Rego print() output lands in the debug
// log, with its location.
func TestEnginePrintGoesToDebugLog(t *testing.T) {
	t.Parallel()
	logger, logs := testutil.Logger(t) // Debug
	e := authz.New(authz.Config{}, nil, nil, logger)
	loadDir(t, e, testutil.PolicyDir(t, policy("allow if {\n\tprint(\"path is\", input.p)\n}")))
	if _, err := decide(t, e, map[string]any{"p": "/x"}, ""); err != nil {
		t.Fatal(err)
	}
	if l := logs.String(); !strings.Contains(l, `"msg":"rego print"`) || !strings.Contains(l, `path is /x`) || !strings.Contains(l, "policy.rego:3") {
		t.Errorf("print output not in the debug log:\n%s", l)
	}
}

// TestParseRevision accepts non-negative integers only.
func TestParseRevision(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		in      string
		want    uint64
		wantErr bool
	}{
		"empty":    {"", 0, false},
		"zero":     {"0", 0, false},
		"number":   {"42", 42, false},
		"max":      {"18446744073709551615", 1<<64 - 1, false},
		"negative": {"-1", 0, true},
		"float":    {"1.5", 0, true},
		"word":     {"latest", 0, true},
		"overflow": {"18446744073709551616", 0, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := authz.ParseRevision(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ParseRevision(%q) = %d, %v", tc.in, got, err)
			}
		})
	}
}

// TestEngineDecisionCache: in production (Info logging) repeated requests
// may be answered from the decision cache, but never with a stale answer:
// a different referenced input, new tenancy data or a new policy is
// evaluated afresh, and each answer has its own decision id.
func TestEngineDecisionCache(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	ten := testutil.NewTenancy(1, map[string]any{"flags": map[string]any{"open": true}})
	dir := testutil.PolicyDir(t, policy(`allow := {"allowed": data.tenancy.flags.open, "headers": {"x-path": input.path, "x-v": "1"}}`))
	logger, _ := testutil.LoggerAt(t, slog.LevelInfo)
	e := authz.New(authz.Config{Registerer: reg}, nil, ten, logger)
	loadDir(t, e, dir)
	ask := func(path, other string) *authz.Decision {
		t.Helper()
		d, err := decide(t, e, map[string]any{"path": path, "request_id": other}, "")
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	hits := func() float64 {
		return testutil.MetricValue(t, reg, "gatehouse_decision_cache_total", map[string]string{"result": "hit"})
	}
	header := func(d *authz.Decision, k string) string {
		for _, h := range d.Headers {
			if h.Key == k {
				return h.Value
			}
		}
		return ""
	}

	first := ask("/a", "r1")
	second := ask("/a", "r2") // differs only where the policy never looks
	if hits() != 1 {
		t.Fatalf("cache hits %v after a repeated request, want 1", hits())
	}
	if second.ID == first.ID || !second.Allowed || header(second, "x-path") != "/a" {
		t.Errorf("cached decision %+v (first %+v)", second, first)
	}
	if d := ask("/b", "r1"); header(d, "x-path") != "/b" {
		t.Errorf("a request with another path got %v", d.Headers)
	}

	ten.Update(2, map[string]any{"flags": map[string]any{"open": false}})
	if d := ask("/a", "r3"); d.Allowed || d.TenancyRevision != 2 {
		t.Errorf("after the data changed: %+v; want denied at revision 2", d)
	}

	if err := os.WriteFile(filepath.Join(dir, "policy.rego"), []byte("package envoy.authz\n"+`allow := {"allowed": true, "headers": {"x-v": "2"}}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	loadDir(t, e, dir)
	if d := ask("/a", "r4"); header(d, "x-v") != "2" {
		t.Errorf("after a policy reload: %v", d.Headers)
	}
}

// TestConfigValidateNamesFields: the engine's Config.Validate names its own
// fields (*FieldError), never a configuration file's keys, and reports
// every problem at once.
func TestConfigValidateNamesFields(t *testing.T) {
	t.Parallel()
	err := authz.Config{MaxStaleness: -time.Second, MinRevisionWait: -time.Second}.Validate()
	var fields []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *authz.FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("%v is not a *FieldError", e)
		}
		fields = append(fields, fe.Field)
	}
	if strings.Join(fields, ",") != "MaxStaleness,MinRevisionWait" {
		t.Fatalf("fields %v", fields)
	}
	if strings.Contains(err.Error(), "data.") {
		t.Fatalf("%q names a serve key", err)
	}
	if err := (authz.Config{}).Validate(); err != nil {
		t.Fatalf("zero Config: %v", err)
	}
}

// TestDecideErrorsAreDecideErrors: every way Decide cannot decide returns
// a *DecideError with its code, as the package documentation promises —
// including a failing Request.Build, whose error was returned unwrapped.
func TestDecideErrorsAreDecideErrors(t *testing.T) {
	t.Parallel()
	ready, _ := engineWith(t, map[string]string{"policy.rego": "package envoy.authz\nallow := true\n"}, authz.Config{})
	badShape, _ := engineWith(t, map[string]string{"policy.rego": "package envoy.authz\nallow := {\"allowed\": \"yes\"}\n"}, authz.Config{})
	conflict, _ := engineWith(t, map[string]string{"policy.rego": "package envoy.authz\nallow := input.a\nallow := input.b\n"}, authz.Config{})
	notReady := authz.New(authz.Config{}, nil, nil, nil)
	buildErr := errors.New("no input for you")
	tests := map[string]struct {
		e    *authz.Engine
		req  *authz.Request
		code authz.Code
		is   error
	}{
		"not ready":     {notReady, &authz.Request{}, authz.CodeUnavailable, authz.ErrNotReady},
		"build fails":   {ready, &authz.Request{Build: func(*authz.Need) (ast.Object, error) { return nil, buildErr }}, authz.CodeInternal, buildErr},
		"bad shape":     {badShape, &authz.Request{Input: ast.NewObject()}, authz.CodeInternal, authz.ErrBadDecision},
		"eval conflict": {conflict, &authz.Request{Input: ast.MustParseTerm(`{"a": 1, "b": 2}`).Value.(ast.Object)}, authz.CodeInternal, authz.ErrEvaluation},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, err := tc.e.Decide(t.Context(), tc.req)
			if d != nil {
				t.Fatalf("decision %+v, want none", d)
			}
			if got := decideCode(t, err); got != tc.code {
				t.Fatalf("code %s, want %s (%v)", got, tc.code, err)
			}
			if !errors.Is(err, tc.is) {
				t.Fatalf("error %v is not %v", err, tc.is)
			}
		})
	}
}

// TestTwoEnginesShareARegistry: a second Engine on the registry of the
// first (a reload that builds a new engine, two engines in one test
// process) shares its metrics instead of panicking in MustRegister, and
// both count into them.
func TestTwoEnginesShareARegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	policy := map[string]string{"policy.rego": "package envoy.authz\nallow := true\n"}
	e1, _ := engineWith(t, policy, authz.Config{Registerer: reg})
	e2, _ := engineWith(t, policy, authz.Config{Registerer: reg})
	for _, e := range []*authz.Engine{e1, e2} {
		if _, err := decide(t, e, nil, ""); err != nil {
			t.Fatal(err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var loads float64
	for _, f := range families {
		if f.GetName() == "gatehouse_policy_loads_total" {
			for _, m := range f.GetMetric() {
				loads += m.GetCounter().GetValue()
			}
		}
	}
	if loads != 2 {
		t.Fatalf("gatehouse_policy_loads_total = %v, want 2 (one load per engine)", loads)
	}
}
