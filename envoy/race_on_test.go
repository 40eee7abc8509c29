//go:build race

package envoy_test

// raceEnabled: the race detector multiplies memory use.
const raceEnabled = true
