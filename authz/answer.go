package authz

import (
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Answer is one answer as a server sent it (the ext_authz server today),
// handed to whoever observes answers: decision logs and shadow policies
// (package decisionlog, whose Entry it is). It is declared here, in the
// vocabulary both sides share, so that the server (envoy) declares the
// Observer it calls without importing decisionlog.
type Answer struct {
	// Decision is the answer (nil when Err is set).
	Decision *Decision
	// Err is "cannot decide" (the gRPC error or HTTP 5xx sent).
	Err error
	// Input builds the input document the policy saw (without token and
	// tenancy_revision, which come from Decision); nil when the request
	// could not be read. It is called off the Check's path.
	Input func(need *Need) (ast.Object, error)
	// Authorization is the request's Authorization header: never logged,
	// it is what records are scrubbed of.
	Authorization string
	// Transport is "grpc" or "http".
	Transport string
	// Start is when the Check started; Duration how long it took to answer.
	Start    time.Time
	Duration time.Duration
	// TraceID and SpanID are the Check's span (hex; "" without tracing).
	TraceID, SpanID string
	// DryRun: the answer sent was "allow"; Decision is what the policy
	// decided.
	DryRun bool
	// Shadow is the shadow policy's answer, when one was evaluated.
	Shadow *ShadowResult
	// Size is about how many bytes the entry holds on to (the request
	// Input reads), for the observers' queue bounds.
	Size int64
}

// ShadowResult is a shadow policy's answer for the same input.
type ShadowResult struct {
	Decision *Decision
	Err      error
	// Agree: same allowed and status as the active policy.
	Agree bool
}
