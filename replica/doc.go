// Package replica is the sidecar's copy of the tenancy data: the bbolt
// cache file in the format package tenancy owns, served to OPA as a
// storage.Store (Store: data.tenancy by keyed reads), kept current by the
// sync client (Syncer, Applier: snapshot, then the change stream), and
// read by Gatehouse's Rego built-ins (Builtins).
//
// # Cache file
//
// The cache is a bbolt file (<data dir>/tenancy.db) in the layout of package
// tenancy: every stored value carries a CRC-32C, verified on every read. A
// snapshot is written into a new file and swapped in atomically once
// complete; the revisions of the change feed (a revision may arrive in
// several parts) are applied in one bbolt transaction together with the
// revision number and its history hash, so a crash or a cut stream never
// leaves a half-applied revision. Every revision's history hash is
// recomputed and checked: the cache never splices two histories (a
// control endpoint restored from a backup makes it re-snapshot).
//
// A file is checked against its meta pages before bbolt maps it. A file
// that does not open, is truncated, has the wrong schema, fails the
// background consistency check or a value's checksum is damaged: the store
// stops serving it (not ready; checks answer UNAVAILABLE) until a snapshot
// replaced it, and it is set aside (renamed *.corrupt-<time>). Every file
// opened gets a new generation, part of what a cached decision is
// validated against: a decision made on one file is never served from
// another, whatever their revisions.
//
// # Built-in functions
//
// Builtins are Gatehouse's Rego built-ins (SPEC §12, gatehouse.tenancy.*):
// tenancy.Decide and friends run in the evaluation's own read transaction
// (authz.TenancyTxn), through the same tenancy.Reader as Read, so their
// keyed reads are recorded for the decision cache with the same stamps.
// Damage they find marks the file damaged and halts the evaluation (the
// engine cannot decide). ObserveReads lets explanations list their reads.
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
package replica
