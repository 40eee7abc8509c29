package authz

import (
	"errors"
	"fmt"
)

// Sentinel errors. Each is wrapped into a *DecideError by Decide.
var (
	// ErrNotReady is returned by Decide before a policy set has compiled, or
	// when tenancy data is required but not present at any revision.
	ErrNotReady = errors.New("not ready")

	// ErrStale is returned by Decide when tenancy data is older than the
	// configured max_staleness.
	ErrStale = errors.New("tenancy data is stale")

	// ErrRevisionNotReached is returned by Decide and AwaitRevision when a
	// request asks for a minimum tenancy revision that does not arrive
	// within the wait bound. The revision is client input: transports
	// answer it with a deny (429 stale), not as "cannot decide".
	ErrRevisionNotReached = errors.New("tenancy revision not reached")

	// ErrBadDecision is returned by Decide when the decision rule produced a
	// value of the wrong shape (an object without a boolean "allowed", a field
	// of the wrong type, an http_status outside 200-599).
	ErrBadDecision = errors.New("invalid decision")

	// ErrEvaluation is returned by Decide when policy evaluation failed
	// (e.g. a conflict error, a cancelled query, a storage error).
	ErrEvaluation = errors.New("policy evaluation failed")

	// ErrInput is returned by Decide when Request.Build could not build the
	// input document.
	ErrInput = errors.New("build input")

	// ErrNoDecisionRule is returned by Compile when no rule or data defines
	// the configured decision path.
	ErrNoDecisionRule = errors.New("decision rule not defined")

	// ErrReservedData is returned by Compile when static data claims the
	// data.tenancy namespace, which belongs to the tenancy store.
	ErrReservedData = errors.New("static data uses the reserved tenancy namespace")
)

// Code classifies why a decision could not be made. It becomes the gRPC
// status code (and HTTP 5xx) returned to Envoy and a metric label.
type Code string

// Codes of DecideError.
const (
	// CodeUnavailable: not ready, stale, or min revision not reached.
	CodeUnavailable Code = "unavailable"
	// CodeInternal: evaluation error or a decision of the wrong shape.
	CodeInternal Code = "internal"
)

// DecideError is the error Decide returns when it cannot decide.
type DecideError struct {
	Code Code
	Err  error
}

func (e *DecideError) Error() string { return fmt.Sprintf("cannot decide: %v", e.Err) }

// Unwrap returns the underlying error.
func (e *DecideError) Unwrap() error { return e.Err }

func unavailable(err error) error { return &DecideError{Code: CodeUnavailable, Err: err} }
func internal(err error) error    { return &DecideError{Code: CodeInternal, Err: err} }

// FieldError is a problem of one Config field, returned by Config.Validate.
// It names the Go field, not a configuration file's key: the loader of a
// file maps Field to its key.
type FieldError struct {
	// Field is the Config field, e.g. "MaxStaleness".
	Field string
	// Err is the problem with its value.
	Err error
}

// Error returns "Field: problem".
func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }
