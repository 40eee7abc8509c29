// Command soak runs Gatehouse for minutes under steady load and watches for
// what short tests miss: leaks, slow drift, errors that come with time.
//
// It starts `gatehouse control` (a synthetic world of ~35,000 entities
// written through the admin API) and `gatehouse serve` (the shipped
// policies, synced from the control endpoint, GOMAXPROCS=1), measures the
// sidecar's peak throughput, then for SOAK_DURATION (default 5m) keeps an
// open-loop load at 70% of that peak (internal/loadgen, every answer
// checked against its known decision) while
//
//   - every second a control write grants or revokes a user grant, and a
//     check carrying x-gatehouse-min-revision verifies the sidecar decides
//     on it (read your writes);
//   - every 10 seconds a policy file is edited (a comment), and the new
//     policy revision must be served within 3 seconds.
//
// Every window (10 s) it reports throughput, p99, errors, wrong decisions,
// and the sidecar's RSS and goroutine count (from its /metrics). It fails
// (exit 1) on any error or wrong decision, on a policy edit not picked up,
// or when RSS or goroutines end above the bounds set from the first window.
// `make soak` runs it; it is not part of CI.
package main
