// Package ops serves a sidecar's operational endpoints: /healthz (alive),
// /readyz (ready to decide), /metrics (Prometheus) and /v1/status (JSON: the
// policy and tenancy revisions in use and their last errors). A Reporter
// posts the same state to the control endpoint (the fleet view).
//
// # Concurrency
//
// Handlers read the engine's state through its concurrency-safe accessors;
// a Server is safe for concurrent use.
package ops
