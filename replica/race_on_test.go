//go:build race

package replica_test

// raceEnabled: the race detector slows the largest tests beyond reason.
const raceEnabled = true
