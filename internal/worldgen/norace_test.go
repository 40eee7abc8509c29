//go:build !race

package worldgen_test

const raceEnabled = false
