// Package loadgen measures an ext_authz v3 gRPC server the way Envoy uses it:
// many CheckRequests over one (or a few) HTTP/2 connections, with the answers
// checked against what a scenario expects.
//
// It owns four things:
//   - the scenario format ([Scenario], [ParseScenario]) and its preparation
//     into ready-to-send requests ([NewPlan]): every CheckRequest is built,
//     every JWT minted and every request encoded once, before the run;
//   - the client ([Run]): a closed loop (N workers sending back to back) or an
//     open loop (a fixed rate, latency measured from the scheduled send time so
//     that coordinated omission does not hide queueing), each response
//     classified as allow, deny or error and compared with the expectation;
//   - the floor ([NewNoopServer]): a tuned grpc-go ext_authz server that
//     allows everything, the fastest any real server can be on this machine;
//   - reporting ([Result], [BenchFile]): one line or one JSON object per run,
//     and the comparison table of bench/bench.sh.
//
// # Concurrency
//
// A [Plan] is immutable once built and is shared by all workers. Each worker
// records into its own histogram and counters; they are merged after the run,
// so the hot loop takes no locks and allocates nothing of its own (grpc-go
// still allocates per call).
//
// # Errors
//
// Invalid scenarios and configurations are reported before any request is
// sent, wrapping the sentinels in errors.go. A run whose answers do not match
// the scenario, or that saw gRPC errors, still returns its [Result];
// [Result.Check] turns that into [ErrMismatch] or [ErrRPC] so that a broken
// server cannot produce a good-looking benchmark.
package loadgen
