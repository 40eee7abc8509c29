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
	// InputJSON, when set, writes the same input document as JSON without
	// building it (faster; Input is still what mask and shadow policies
	// read).
	InputJSON InputWriter
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
	// Path is the rule decided when it is not the configured path (an
	// AuthZEN answer: its rule, e.g. authzen/allow).
	Path string
	// Result, when set, is the record's result instead of the Decision's
	// shape: an ast.Value or a JSON-like value (json.RawMessage allowed).
	Result any
	// ID is the decision id of a "cannot decide" (Decision nil) that its
	// answer names ("": a fresh one; the answer named none).
	ID string
	// BatchID is the decision id of the AuthZEN batch an evaluation is
	// an item of (gatehouse.batch_id).
	BatchID string
	// Size is about how many bytes the entry holds on to (the request
	// Input reads), for the observers' queue bounds.
	Size int64
}

// InputWriter writes an input document as JSON: each member of the
// document (w.Key, then its value unless Key returned false), into the
// object the caller opened. An error (the request cannot be turned into
// an input) leaves the record without input.
type InputWriter interface {
	WriteInput(w JSONWriter) error
}

// JSONWriter is the JSON writer an InputWriter writes to (decision logs
// implement it; Key returns false for a member left out, e.g. a
// credential header, whose value must then not be written).
type JSONWriter interface {
	BeginObject()
	EndObject()
	Key(k string) bool
	String(s string)
	Uint(n uint64)
	Bool(v bool)
	Value(v ast.Value)
}

// ShadowResult is a shadow policy's answer for the same input.
type ShadowResult struct {
	Decision *Decision
	Err      error
	// Agree: same allowed and status as the active policy.
	Agree bool
}
