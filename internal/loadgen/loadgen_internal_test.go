package loadgen

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

func TestHistogramBuckets(t *testing.T) {
	t.Parallel()
	prevHi := int64(-1)
	for i := range histBuckets {
		lo, hi := bucketRange(i)
		if lo != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d = [%d, %d] after %d", i, lo, hi, prevHi)
		}
		if bucketOf(lo) != i || bucketOf(hi) != i {
			t.Fatalf("bucket %d = [%d, %d] maps back to %d, %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if lo > 0 && float64(hi-lo)/float64(lo) > 1.0/histSub {
			t.Fatalf("bucket %d = [%d, %d] wider than 1/%d", i, lo, hi, histSub)
		}
		prevHi = hi
	}
	if prevHi != math.MaxInt64 {
		t.Fatalf("last bucket ends at %d", prevHi)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	var exact []time.Duration
	a, b := NewHistogram(), NewHistogram()
	for i := range 100_000 {
		// Log-uniform from 1 µs to 100 ms.
		d := time.Duration(math.Exp(rng.Float64()*math.Log(1e5)) * 1e3)
		exact = append(exact, d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(b)
	slices.Sort(exact)
	if a.Count() != uint64(len(exact)) || a.Max() != exact[len(exact)-1] {
		t.Fatalf("count %d max %v", a.Count(), a.Max())
	}
	for _, q := range []float64{0.001, 0.5, 0.9, 0.99, 0.999, 1} {
		want := exact[int(math.Ceil(q*float64(len(exact))))-1]
		got := a.Quantile(q)
		if rel := math.Abs(float64(got-want)) / float64(want); rel > 0.005 {
			t.Errorf("q%v = %v, want %v (%.2f%% off)", q, got, want, 100*rel)
		}
	}
	var sum time.Duration
	for _, d := range exact {
		sum += d
	}
	if mean := sum / time.Duration(len(exact)); (a.Mean() - mean).Abs() > time.Microsecond {
		t.Errorf("mean %v, want %v", a.Mean(), mean)
	}
	if e := NewHistogram(); e.Quantile(0.5) != 0 || e.Max() != 0 || e.Mean() != 0 {
		t.Error("empty histogram not zero")
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	h := NewHistogram()
	if n := testing.AllocsPerRun(1000, func() { h.Record(123 * time.Microsecond) }); n != 0 {
		t.Errorf("Record allocates %v times", n)
	}
}

func TestStatusCode(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		resp *authv3.CheckResponse
		want int32
	}{
		"empty":  {&authv3.CheckResponse{}, 0},
		"ok":     {noopResponse, 0},
		"denied": {&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 7, Message: "no"}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "forbidden"}}}, 7},
		"unauth": {&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 16}}, 16},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, err := proto.Marshal(tc.resp)
			if err != nil {
				t.Fatal(err)
			}
			got, err := statusCode(b)
			if err != nil || got != tc.want {
				t.Errorf("statusCode = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
	if _, err := statusCode([]byte{0x0a, 0x05, 0x08}); err == nil {
		t.Error("truncated response: no error")
	}
}

func TestWireMatchesProto(t *testing.T) {
	t.Parallel()
	sc, err := ParseScenario([]byte(`{"requests": [{"name": "a", "path": "/x", "headers": {"a": "b"}, "context_extensions": {"p": "1"}, "expect": "allow"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(sc, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got authv3.CheckRequest
	if err := proto.Unmarshal(p.wire[0].data.Materialize(), &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, p.Requests[0]) {
		t.Errorf("wire bytes decode to %v, want %v", &got, p.Requests[0])
	}
}

func TestSleeper(t *testing.T) {
	t.Parallel()
	s := newSleeper()
	defer s.close()
	for _, d := range []time.Duration{50 * time.Microsecond, 300 * time.Microsecond, 2 * time.Millisecond} {
		start := time.Now()
		if !s.sleep(t.Context(), d) {
			t.Fatal("sleep returned false")
		}
		if got := time.Since(start); got < d {
			t.Errorf("sleep(%v) returned after %v", d, got)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	if s.sleep(ctx, time.Hour) || time.Since(start) > time.Second {
		t.Error("sleep ignored a cancelled context")
	}
}

func TestParseStatus(t *testing.T) {
	const status = "Name:\tgatehouse\nVmPeak:\t  900000 kB\nVmHWM:\t  300000 kB\nVmRSS:\t  120000 kB\nRssAnon:\t   80000 kB\nRssFile:\t   39000 kB\nRssShmem:\t    1000 kB\nThreads:\t8\n"
	m, err := parseStatus(1, []byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Mem{RSS: 120000 << 10, RSSAnon: 80000 << 10, RSSFile: 39000 << 10, RSSShmem: 1000 << 10, Peak: 300000 << 10}); m != want {
		t.Errorf("parseStatus = %+v, want %+v", m, want)
	}
	// An old kernel without the parts: VmRSS alone.
	if m, err := parseStatus(1, []byte("VmRSS:\t 2048 kB\n")); err != nil || m != (Mem{RSS: 2 << 20}) {
		t.Errorf("VmRSS only: %+v %v", m, err)
	}
	for _, bad := range []string{"", "Name:\tx\n", "VmRSS:\t12 MB\n", "VmRSS:\tx kB\n", "VmRSS:\t12\n", "VmRSS:\t1 kB\nRssAnon:\t-5 kB\n"} {
		if _, err := parseStatus(1, []byte(bad)); err == nil {
			t.Errorf("parseStatus(%q) = nil error", bad)
		}
	}
}

func TestProcMemSelf(t *testing.T) {
	m, err := ProcMem(os.Getpid())
	if err != nil {
		t.Skip("no /proc:", err)
	}
	if m.RSSAnon <= 0 || m.RSSFile <= 0 || m.RSS != m.RSSAnon+m.RSSFile+m.RSSShmem || m.Peak < m.RSS {
		t.Errorf("ProcMem(self) = %+v: want RSS = anon + file + shmem <= peak", m)
	}
}

func TestParseMetrics(t *testing.T) {
	const text = `# HELP gatehouse_decision_cache_total Decisions by cache result.
# TYPE gatehouse_decision_cache_total counter
gatehouse_decision_cache_total{result="hit"} 12
gatehouse_decision_cache_total{result="miss"} 3e+06
gatehouse_decision_cache_total{result="stale",policy="a\"b,c}"} 4 1700000000000
gatehouse_decision_cache_total{policy="x",result="stale"} 1
gatehouse_decision_cache_total_other{result="hit"} 1000
gatehouse_token_cache_hits_total 7
go_goroutines 12
`
	got, err := parseMetrics(strings.NewReader(text), MetricDecisionCache, MetricTokenCacheHits, MetricTokenVerifications)
	if err != nil {
		t.Fatal(err)
	}
	want := counters{
		MetricDecisionCache:  {"hit": 12, "miss": 3e6, "stale": 5},
		MetricTokenCacheHits: {"": 7},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseMetrics = %v, want %v", got, want)
	}
	for _, bad := range []string{
		`gatehouse_token_cache_hits_total`,
		`gatehouse_token_cache_hits_total x`,
		`gatehouse_token_cache_hits_total NaN`,
		`gatehouse_token_cache_hits_total{result="hit} 1`,
		`gatehouse_token_cache_hits_total{result} 1`,
		`gatehouse_token_cache_hits_total 1 2 3`,
	} {
		if _, err := parseMetrics(strings.NewReader(bad), MetricTokenCacheHits); err == nil {
			t.Errorf("parseMetrics(%q) = nil error", bad)
		}
	}
	// Deltas: growth over the window; a family absent in the last scrape
	// gives no figures.
	before := counters{MetricDecisionCache: {"hit": 10, "miss": 5}, MetricTokenVerifications: {"valid": 100}, MetricTokenCacheHits: {"": 40}}
	after := counters{MetricDecisionCache: {"hit": 40, "miss": 15, "bypass": 10}, MetricTokenVerifications: {"valid": 150, "expired": 10}, MetricTokenCacheHits: {"": 70}}
	d, tk := cacheStats(before, after)
	if d == nil || d.Lookups != 50 || d.Hits != 30 || d.HitRate != 0.6 || d.ByResult["bypass"] != 10 {
		t.Errorf("decisions = %+v", d)
	}
	if tk == nil || tk.Lookups != 60 || tk.Hits != 30 || tk.HitRate != 0.5 {
		t.Errorf("tokens = %+v", tk)
	}
	if d, tk := cacheStats(counters{}, counters{}); d != nil || tk != nil {
		t.Errorf("no counters: %+v %+v", d, tk)
	}
}

func TestParseHostTimes(t *testing.T) {
	t.Parallel()
	const stat = "cpu  3425914 155698 585073 3616720 29205 11 49954 168650 0 0\n" +
		"cpu0 1737302 77560 282544 1801690 10968 0 20238 84244 0 0\nintr 1 2 3\n"
	h, err := parseHostTimes([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	want := HostTimes{Busy: 3425914 + 155698 + 585073 + 11 + 49954, Idle: 3616720 + 29205, Steal: 168650}
	if h != want {
		t.Errorf("parseHostTimes = %+v, want %+v", h, want)
	}
	// A kernel without the steal field.
	if h, err := parseHostTimes([]byte("cpu 1 2 3 4 5 6 7\n")); err != nil || h != (HostTimes{Busy: 1 + 2 + 3 + 6 + 7, Idle: 4 + 5}) {
		t.Errorf("no steal field: %+v %v", h, err)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n", "cpu 1 2 3 4 5 6 x 8\n", "cpu 1 2 3 4 5 6 7 -8\n"} {
		if _, err := parseHostTimes([]byte(bad)); err == nil {
			t.Errorf("parseHostTimes(%q) = nil error", bad)
		}
	}
	live, err := ReadHostTimes()
	if err != nil {
		t.Skip("no /proc/stat:", err)
	}
	if live.Busy == 0 {
		t.Errorf("ReadHostTimes = %+v: a running machine has busy time", live)
	}
}

func TestHostStats(t *testing.T) {
	t.Parallel()
	// A 2-core machine over a 2 s window (400 ticks of CPU time): 40 ticks
	// stolen, 260 busy, of which the server used 1.0 s and the load
	// generator 0.6 s: the others 1.0 s, 0.5 cores.
	a := HostTimes{Busy: 1000, Idle: 5000, Steal: 10}
	b := HostTimes{Busy: 1260, Idle: 5100, Steal: 50}
	h := hostStats(a, b, 0.6+1.0, 2)
	if math.Abs(h.StealPct-10) > 1e-9 || math.Abs(h.OtherCores-0.5) > 1e-9 {
		t.Errorf("hostStats = %+v, want steal 10%% and 0.5 other cores", h)
	}
	// With only the load generator measured, the rest is "other"; CPU times
	// read at slightly different instants never make it negative.
	if h := hostStats(a, b, 0.6, 2); math.Abs(h.OtherCores-1) > 1e-9 {
		t.Errorf("no server: %+v, want 1 other core", h)
	}
	if h := hostStats(a, b, 3, 2); h.OtherCores != 0 {
		t.Errorf("more self CPU than busy time: %+v, want 0 other cores", h)
	}
	if h := hostStats(a, a, 0, 0); h.StealPct != 0 || h.OtherCores != 0 {
		t.Errorf("empty window: %+v", h)
	}
}
