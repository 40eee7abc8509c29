// Command loadgen measures an ext_authz v3 gRPC server: it sends a scenario's
// CheckRequests in a closed or open loop, checks every answer and reports
// throughput, latency percentiles and the server's CPU and memory. It also
// serves the no-op floor and writes the bench's signing keys.
//
// Exit codes: 0 success; 1 a run got wrong answers or gRPC errors (or, for
// report --check, the bench is invalid); 2 usage, configuration or
// connection error.
package main
