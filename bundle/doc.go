// Package bundle holds what a sidecar receives from the control endpoint and
// where it keeps it: the bbolt cache of tenancy data (Store, an OPA
// storage.Store serving data.tenancy by keyed reads), the sync client that
// keeps it current (Syncer), and signed policy bundles.
//
// # Cache file
//
// The cache is a bbolt file (<data dir>/tenancy.db) in the layout of package
// tenancy. A snapshot is written into a new file and swapped in atomically
// once complete; each revision of the change feed is applied in one bbolt
// transaction together with the revision number, so a crash or a cut stream
// never leaves a half-applied revision. A file that does not open, has the
// wrong schema, or fails the background consistency check is set aside
// (renamed *.corrupt-<time>) and rebuilt from a snapshot.
//
// # Policy bundles
//
// Signed OPA-format policy bundles (policy.go): Build writes them
// (compiling first, so a bundle that does not compile is never produced),
// OpenBundle verifies the signature and every file digest against the
// signed list, and PolicySource polls a bundle URL with ETags, applies a
// verified bundle that compiles, keeps the last good policy serving
// otherwise, and keeps a verified copy in the data directory for restarts.
//
// # Concurrency
//
// Store is safe for concurrent use: every evaluation reads one bbolt read
// transaction (one revision). The Syncer is the only writer.
//
// # Errors
//
// Reads return *storage.Error (OPA type-asserts it): NotFoundErr for absent
// documents, InternalErr for a damaged file or a read too large to serve.
package bundle
