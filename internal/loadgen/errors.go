package loadgen

import "errors"

var (
	// ErrScenario is returned (wrapped, with the offending field) when a
	// scenario file is not valid JSON of the expected shape or breaks a rule
	// of the format.
	ErrScenario = errors.New("invalid scenario")

	// ErrNoSigningKey is returned by NewPlan when a request asks for a
	// "valid" or "expired" token and no signing key was given.
	ErrNoSigningKey = errors.New("scenario needs a signing key")

	// ErrConfig is returned (wrapped) by Config.Validate and Run for a
	// setting that is out of range.
	ErrConfig = errors.New("invalid load generator configuration")

	// ErrMismatch is returned by Result.Check when at least one response
	// was an allow where the scenario expected a deny, or the reverse.
	ErrMismatch = errors.New("responses did not match the scenario")

	// ErrRPC is returned by Result.Check when at least one Check call
	// failed with a gRPC error instead of returning a CheckResponse.
	ErrRPC = errors.New("check calls failed")

	// ErrProc is returned (wrapped) when /proc/PID cannot be read or parsed.
	ErrProc = errors.New("cannot sample server process")
)
