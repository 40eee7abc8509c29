//go:build race

package worldgen_test

// raceEnabled: the race detector slows generating a large world ~10×.
const raceEnabled = true
