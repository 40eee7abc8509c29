// Package worldgen generates deterministic synthetic tenancy worlds of any
// size, with requests whose expected decisions are known: the data behind
// benchmarks and scale runs.
package worldgen
