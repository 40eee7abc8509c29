package envoy

import (
	"context"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
)

// Observer receives every answer once it is made: decision logs, shadow
// policies (decisionlog.Logger, decisionlog.Shadow). Observe must not
// block: the Check waits for it.
type Observer interface {
	Observe(decisionlog.Entry)
}

// observe is the one place an answer passes before it is sent, for both
// transports: it hands the answer to the observer (decision logs, shadow
// policies) and, in dry run, turns it into an allow. req is the request
// as decided (nil when there is none); the input of the record is built
// from it later, off the Check's path, so req must not be reused after.
func (s *Server) observe(ctx context.Context, t transport, req *authv3.CheckRequest, d *authz.Decision, err error, start time.Time) (*authz.Decision, error) {
	if s.cfg.Observer == nil && !s.cfg.DryRun {
		return d, err
	}
	e := decisionlog.Entry{Decision: d, Err: err, Transport: t.String(), Start: start, Duration: time.Since(start)}
	if req != nil && req.GetAttributes().GetRequest().GetHttp() != nil {
		e.Input = logInput(req)
		e.Authorization = RequestHeaders(req.GetAttributes().GetRequest().GetHttp())["authorization"]
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
