// Command benchworld prepares and probes the data-plane benchmarks: it
// writes a control endpoint's data file for a synthetic world of a given
// size directly (bypassing the API, so that 10 million grants load in
// minutes), with a load generator scenario whose answers are known; and it
// measures the time from a write at the control endpoint to a changed
// decision at a sidecar.
package main
