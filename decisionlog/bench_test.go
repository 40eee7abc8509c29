package decisionlog_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// benchPolicy is envoy's BenchmarkCheckGRPC policy.
const benchPolicy = `package envoy.authz
default allow := false
allow := {"allowed": true, "headers": {"x-user": input.token.subject}} if {
	input.token.valid
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "api"
	input.attributes.contextExtensions.project == "p1"
}
`

// cpuTime is the process's user+system CPU time: under a shared machine's
// contention it moves less than wall time (the client's share is the same
// in every variant).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCheckDecisionLog is a full gRPC Check over loopback, 4×GOMAXPROCS
// concurrent callers, with decision logs off and with a file sink (every
// decision logged), hot (decision cache on) and cold (every check
// evaluated). Read off/file per pair: the logging overhead. dropped/op
// counts records the queue could not take; cpu-ns/op is the process CPU
// per check, the records of the run written (compare those: wall time
// follows the machine's other load).
func BenchmarkCheckDecisionLog(b *testing.B) {
	for _, load := range []struct {
		name    string
		entries int
	}{{"hot", 0}, {"cold", -1}} {
		for _, sink := range []string{"off", "file"} {
			b.Run(load.name+"/"+sink, func(b *testing.B) { benchDecisionLog(b, load.entries, sink == "file") })
		}
	}
}

func benchDecisionLog(b *testing.B, cacheEntries int, file bool) {
	discard := slog.New(slog.DiscardHandler)
	key := testutil.RSAKey(b, "bench")
	dir := testutil.PolicyDir(b, map[string]string{"idp.pem": string(testutil.PublicKeyPEM(b, &key.PublicKey))})
	obs := &lateObserver{}
	var cfg envoy.Config
	cfg.HTTPAddr = "-"
	if file {
		cfg.Observer = obs
	}
	sc := testutil.StartSidecar(b, testutil.Options{
		Policies: map[string]string{"policy.rego": benchPolicy},
		Issuers:  []authz.IssuerConfig{{Issuer: issuer, Audiences: []string{"api"}, PublicKeyFile: filepath.Join(dir, "idp.pem")}},
		Engine:   authz.Config{DecisionCacheEntries: cacheEntries},
		Server:   cfg,
		Logger:   discard,
	})
	reg := prometheus.NewRegistry()
	if file {
		l, err := decisionlog.New(decisionlog.Config{File: &decisionlog.FileConfig{Path: filepath.Join(b.TempDir(), "d.log")}, Registerer: reg}, sc.Engine, discard)
		if err != nil {
			b.Fatal(err)
		}
		obs.set(l)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = l.Run(ctx); close(done) }()
		b.Cleanup(func() { sc.Stop(); cancel(); <-done })
	}
	tok := testutil.MintJWT(b, jwt.SigningMethodRS256, key, "k1", testutil.Claims(issuer, "alice", map[string]any{"scope": "read write"}))
	req := testutil.CheckRequest(testutil.Request{
		Path: "/api/v1/projects/p1/items?limit=20&after=abc",
		Headers: map[string]string{
			"authorization": "Bearer " + tok, "accept": "application/json", "user-agent": "Mozilla/5.0 (X11; Linux x86_64)",
			"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https", "cookie": "session=0123456789abcdef",
			"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
		ContextExtensions: map[string]string{"project": "p1"},
	})
	if resp, err := sc.Client.Check(b.Context(), req); err != nil || resp.GetOkResponse() == nil {
		b.Fatalf("the benchmark request is not allowed: %v, %v", resp, err)
	}
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := sc.Client.Check(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if file {
		// the records of this run are written before the CPU is read
		testutil.Eventually(b, 30*time.Second, func() (bool, string) {
			w := testutil.MetricValue(b, reg, "gatehouse_decision_logs_written_total", map[string]string{"sink": "file"})
			d := testutil.MetricValue(b, reg, "gatehouse_decision_logs_dropped_total", map[string]string{"reason": "queue_full"})
			return int(w+d) >= b.N, "records pending"
		})
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	if file {
		dropped := testutil.MetricValue(b, reg, "gatehouse_decision_logs_dropped_total", map[string]string{"reason": "queue_full"})
		b.ReportMetric(dropped/float64(b.N), "dropped/op")
	}
}
