package envoy_test

import (
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// entries records what the observer sees.
type entries struct {
	mu sync.Mutex
	es []decisionlog.Entry
}

func (r *entries) Observe(e decisionlog.Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.es = append(r.es, e)
}

func (r *entries) last() decisionlog.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.es[len(r.es)-1]
}

// TestTracingSpanPerCheck: every Check, over both transports, is one
// server span, child of the request's W3C traceparent when it has a
// valid one, and the decision log entry carries its ids.
func TestTracingSpanPerCheck(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	obs := &entries{}
	sc := testutil.StartSidecar(t, testutil.Options{
		Policies: map[string]string{"p.rego": "package envoy.authz\nallow if input.parsed_path[0] == \"ok\"\n"},
		Server:   envoy.Config{Observer: obs, Tracer: tp.Tracer("gatehouse")},
	})
	const parentTrace, parentSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for name, tc := range map[string]struct {
		traceparent string
		child       bool
		path        string
	}{
		"child of traceparent":  {traceparent: "00-" + parentTrace + "-" + parentSpan + "-01", child: true, path: "/ok"},
		"deny is traced too":    {traceparent: "00-" + parentTrace + "-" + parentSpan + "-01", child: true, path: "/no"},
		"no traceparent":        {path: "/ok"},
		"malformed traceparent": {traceparent: "00-zz-" + parentSpan + "-01", path: "/ok"},
		"all-zero trace id":     {traceparent: "00-00000000000000000000000000000000-" + parentSpan + "-01", path: "/ok"},
	} {
		for tr := range 2 {
			r := testutil.Request{Path: tc.path, Headers: map[string]string{}}
			if tc.traceparent != "" {
				r.Headers["traceparent"] = tc.traceparent
			}
			var id string
			if tr == 0 {
				resp, err := sc.Check(t.Context(), r)
				if err != nil {
					t.Fatal(err)
				}
				id = resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()
			} else {
				id = sc.CheckHTTP(t, t.Context(), r).Header.Get("x-gatehouse-decision-id")
			}
			spans := rec.Ended()
			sp := spans[len(spans)-1]
			e := obs.last()
			if e.Decision.ID != id || e.TraceID != sp.SpanContext().TraceID().String() || e.SpanID != sp.SpanContext().SpanID().String() {
				t.Errorf("%s/%d: entry %s trace %s span %s; span %v", name, tr, e.Decision.ID, e.TraceID, e.SpanID, sp.SpanContext())
			}
			isChild := sp.Parent().IsValid() && sp.Parent().TraceID().String() == parentTrace && sp.Parent().SpanID().String() == parentSpan
			if isChild != tc.child || (tc.child && sp.SpanContext().TraceID().String() != parentTrace) {
				t.Errorf("%s/%d: parent %v, want child %v", name, tr, sp.Parent(), tc.child)
			}
			var gotID string
			for _, a := range sp.Attributes() {
				if a.Key == "gatehouse.decision_id" {
					gotID = a.Value.AsString()
				}
			}
			if gotID != id || sp.Name() != "gatehouse.Check" {
				t.Errorf("%s/%d: span %s decision_id %q, want %q", name, tr, sp.Name(), gotID, id)
			}
		}
	}
}

// TestDryRunCannotDecide: in dry run, "cannot decide" (here: no policy
// yet) is answered allow over both transports, and the observer sees the
// error.
func TestDryRunCannotDecide(t *testing.T) {
	t.Parallel()
	obs := &entries{}
	sc := testutil.StartSidecar(t, testutil.Options{NoPolicy: true, Server: envoy.Config{Observer: obs, DryRun: true}})
	resp, err := sc.Check(t.Context(), testutil.Request{Path: "/x"})
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("gRPC: %v, %v; want an allow", resp, err)
	}
	if e := obs.last(); e.Err == nil || e.Decision != nil || !e.DryRun {
		t.Errorf("entry %+v: want the error", e)
	}
	if r := sc.CheckHTTP(t, t.Context(), testutil.Request{Path: "/x"}); r.Status != 200 || r.Header.Get("x-gatehouse-decision-id") == "" {
		t.Errorf("HTTP: %d %v; want 200 with a decision id", r.Status, r.Header)
	}
	if e := obs.last(); e.Err == nil || !e.DryRun {
		t.Errorf("entry %+v: want the error", e)
	}
}
