// Package crashtest holds Gatehouse's crash and fault tests with real
// processes: `gatehouse control` and `gatehouse serve` are built once
// (TestMain), started as child processes on 127.0.0.1 ports and killed with
// SIGKILL at random moments — during a sidecar's initial snapshot, while it
// applies a stream of writes, while the control endpoint commits large
// batches — or cut off mid-revision by a TCP proxy. After each fault the
// tests check what SPEC §7 promises: every batch is all-or-nothing, a
// restarted sidecar becomes ready and catches up, and its decisions equal
// those an independent oracle (SPEC §6 steps 2-5) computes from the control
// endpoint's data read through the admin API.
//
// The package has no code besides its tests; `go test -short` shrinks the
// world and the number of faults.
package crashtest
