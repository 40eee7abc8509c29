package envoy

import (
	"context"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Observer receives every answer once it is made: decision logs, shadow
// policies (decisionlog.Logger, decisionlog.Shadow implement it; envoy
// does not import them). Observe must not block: the Check waits for it.
type Observer interface {
	Observe(authz.Answer)
}

// observe is the one place an answer passes before it is sent, for both
// transports: it hands the answer to the observer (decision logs, shadow
// policies) and, in dry run, turns it into an allow. req is the request
// as decided (nil when there is none), prep the same validated (nil when
// it was not); the input of the record is built or written from them
// later, off the Check's path, so req must not be reused after.
func (s *Server) observe(ctx context.Context, t transport, req *authv3.CheckRequest, prep *Prepared, d *authz.Decision, err error, start time.Time) (*authz.Decision, error) {
	if s.cfg.Observer == nil && !s.cfg.DryRun && s.cfg.Tracer == nil {
		return d, err
	}
	e := authz.Answer{Decision: d, Err: err, Transport: t.String(), Start: start, Duration: time.Since(start)}
	var headers map[string]string
	switch {
	case prep != nil: // validated when decided: its input is written as it is
		headers = prep.Headers()
		e.Input = func(need *authz.Need) (ast.Object, error) { return prep.Input(need), nil }
		e.InputJSON = prep // the record's input, written without building it
		e.Authorization = headers["authorization"]
		e.Size = approxSize(prep.http, headers)
	case req != nil && req.GetAttributes().GetRequest().GetHttp() != nil:
		headers = RequestHeaders(req.GetAttributes().GetRequest().GetHttp())
		e.Input = logInput(req)
		e.InputJSON = InputJSON(req)
		e.Authorization = headers["authorization"]
		e.Size = approxSize(req.GetAttributes().GetRequest().GetHttp(), headers)
	}
	if s.cfg.Tracer != nil {
		sc := span(ctx, s.cfg.Tracer, t, headers, d, err, start)
		if sc.IsValid() {
			e.TraceID, e.SpanID = sc.TraceID().String(), sc.SpanID().String()
		}
	}
	if s.cfg.DryRun {
		e.DryRun = true
		d, err = dryRun(s.engine, d), nil
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.Observe(e)
	}
	return d, err
}

// propagator reads W3C traceparent and tracestate.
var propagator = propagation.TraceContext{}

// span records the Check as a server span from start to now, child of the
// request's traceparent (a malformed one starts a new trace), with the
// decision's id, outcome and revisions; "cannot decide" is an error span.
func span(ctx context.Context, tracer trace.Tracer, t transport, headers map[string]string, d *authz.Decision, err error, start time.Time) trace.SpanContext {
	pctx := propagator.Extract(ctx, propagation.MapCarrier(headers))
	_, sp := tracer.Start(pctx, "gatehouse.Check", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start),
		trace.WithAttributes(attribute.String("gatehouse.transport", t.String())))
	if err != nil {
		sp.RecordError(err)
		sp.SetStatus(codes.Error, "cannot decide")
	} else {
		sp.SetAttributes(
			attribute.String("gatehouse.decision_id", d.ID),
			attribute.Bool("gatehouse.allowed", d.Allowed),
			attribute.Int("http.response.status_code", d.Status()),
			attribute.String("gatehouse.reason", d.Reason),
			attribute.String("gatehouse.policy_revision", d.PolicyRevision),
			attribute.Int64("gatehouse.tenancy_revision", int64(d.TenancyRevision)),
			attribute.String("gatehouse.cache", d.Cache),
		)
	}
	sp.End()
	return sp.SpanContext()
}

// approxSize is about the bytes a queued entry keeps alive: the request's
// body, path and headers (cheap: no encoding).
func approxSize(h *authv3.AttributeContext_HttpRequest, headers map[string]string) int64 {
	n := 512 + len(h.GetBody()) + len(h.GetRawBody()) + len(h.GetPath())
	for k, v := range headers {
		n += len(k) + len(v) + 32
	}
	return int64(n)
}

// logInput builds the input of req again, whole, for a record or a shadow
// policy (off the Check's path).
func logInput(req *authv3.CheckRequest) func(need *authz.Need) (ast.Object, error) {
	return func(need *authz.Need) (ast.Object, error) {
		p, err := Prepare(req)
		if err != nil {
			return nil, err
		}
		return p.Input(need), nil
	}
}

// dryRun is the answer in dry run (opa-envoy-plugin's dry-run): an allow
// stays as it is; anything else — a deny, "cannot decide" — becomes a
// plain allow with the same decision id and revisions (the record logs
// what was decided).
func dryRun(engine *authz.Engine, d *authz.Decision) *authz.Decision {
	if d != nil && d.Allowed {
		return d
	}
	out := &authz.Decision{Allowed: true, Defined: true}
	if d != nil {
		out.ID, out.PolicyRevision, out.TenancyRevision = d.ID, d.PolicyRevision, d.TenancyRevision
		out.Subject, out.TokenError, out.Token, out.Cache, out.Duration = d.Subject, d.TokenError, d.Token, d.Cache, d.Duration
		return out
	}
	out.ID = authz.NewDecisionID()
	if ps := engine.Policy(); ps != nil {
		out.PolicyRevision = ps.Revision()
	}
	out.TenancyRevision = engine.Tenancy().State().Revision
	return out
}
