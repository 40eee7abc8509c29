package loadgen

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
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
