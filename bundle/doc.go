// Package bundle owns policy sources and OPA bundles, as OPA users mean the
// word: where the engine's policy set comes from and how it is kept
// current.
//
// # Policy sources
//
// PolicyConfig is the `policies:` section of the serve configuration: a
// directory or a signed bundle URL, the decision rule and the Rego version.
// DirSource keeps an engine in step with a directory (fsnotify events plus
// a poll; an edit that does not compile is reported and ignored).
// PolicySource polls a bundle URL with ETags, applies a verified bundle
// that compiles, keeps the last good policy serving otherwise, and keeps a
// verified copy in the data directory for restarts.
//
// # Bundles
//
// Signed OPA-format policy bundles: Build writes them (compiling first, so a
// bundle that does not compile is never produced), OpenBundle verifies the
// signature and every file digest against the signed list. Keys are parsed
// and checked by package token (one owner for every key rule).
//
// # Concurrency
//
// DirSource and PolicySource are run by one goroutine each (Run); the
// engine swaps policy sets atomically.
//
// # Errors
//
// Errors of OpenBundle, Build and PolicySource wrap one of the sentinels of
// policy_errors.go (ErrUnsigned, ErrSignature, ErrTampered,
// ErrBundleFormat, ErrKey), so callers can classify a refusal with
// errors.Is.
package bundle
