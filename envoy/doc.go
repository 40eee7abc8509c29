// Package envoy is Gatehouse's ext_authz front end: the gRPC
// Authorization/Check service and Envoy's HTTP service mode. It turns a
// CheckRequest (or a forwarded HTTP request) into the policy input, asks the
// authz engine to decide, and turns the Decision into a CheckResponse (or an
// HTTP answer). It knows Envoy, not Rego.
//
// One Check: admission (Config.MaxInflightBytes), decoding (a request over
// Config.MaxRequestBytes is not decoded), Prepare (path, query, body,
// UTF-8), the minimum revision, the bearer token, then authz.Engine.Decide
// on one of Config.MaxInflight long-lived worker goroutines, then Response.
//
// # Concurrency
//
// A Server is safe for concurrent use; Serve starts the evaluation workers
// and stops them after the listeners have drained.
//
// # Errors
//
// What a client controls is always answered with a deny, never with an
// error status (SPEC §2; an error status is what Envoy's failure_mode_allow
// turns into an allow): 400 bad_request (a request that does not decode,
// parse or is not UTF-8, a malformed minimum revision), 413
// request_too_large, 429 stale (minimum revision not reached), 429
// overloaded (no room in flight within the check's deadline, at most 1s).
// Only the sidecar's own failures — not ready, data older than
// max_staleness, an evaluation error, a decision of the wrong shape — are
// "cannot decide": gRPC UNAVAILABLE / INTERNAL, HTTP 503 / 500.
package envoy
