//go:build race

package bundle_test

// raceEnabled: the race detector slows the largest tests beyond reason.
const raceEnabled = true
