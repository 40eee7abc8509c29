// Package control is Gatehouse's control endpoint (`gatehouse control`,
// SPEC §7): the state of record for tenancy data, its admin API, the
// revisioned change feed sidecars sync from, and policy bundle hosting.
//
// The data lives in one bbolt file (<data_dir>/control.db) laid out by
// package tenancy, plus two buckets of this package: "log" (the change
// history: each revision in parts of about feed_part_bytes, keyed by the
// 8-byte big-endian revision and a 4-byte part number → JSON
// tenancy.LogEntry, trimmed to the last `history` revisions) and "bundles"
// (name → sha256 ‖ tarball); the audit trail (audit.go: every admin write
// with its audit records, in the write's transaction), the decision store
// (decisions.go: uploaded decision logs bounded by decisions.max_mb, usage
// counters) and, in memory, the fleet view (fleet.go: sidecars' status
// reports).
//
// Every write is its own revision: the entity changes with the invariants
// and cascades of tenancy.Apply, the revision's history hash (chained from
// the previous revision's, see tenancy.RevisionHash), the history entry and
// its trimming. Concurrent writes share one bbolt transaction (group
// commit, store.go): each applied on the state including the ones before
// it; a refused write rolls back whole, leaves the others unaffected and
// takes no revision. The store (store_bolt.go, the default) commits the
// group to the file; with store etcd (store_etcd.go, SPEC §11) the group is
// proposed to an etcd cluster that orders the revisions of every replica,
// and each replica applies etcd's log to its own file. Each answer carries the revision it
// produced or read, so a client can wait for its write in decisions
// (x-gatehouse-min-revision).
//
// Auth: the admin token may do anything; the optional sync token reads the
// feed and bundles; a JWT of a configured issuer acts as users[sub] with the
// rights of that user's admin memberships (tenant admins: the tenant's users,
// the user grants living in the tenant, and its child tenants; project-grant
// admins: the user grants under the grant). Delegated rights are checked on
// the change set a write produces, cascades included, against both the
// previous and the new value of every changed entity.
//
// Request bodies: a write is authenticated, and refused when its caller can
// make no write of its kind, before its body is read. Bodies are bounded
// per endpoint (max_entity_bytes, max_body_bytes) and, across the server,
// by body_budget_bytes: a body reserves its size before it is read and
// returns it when its request ends.
//
// # Concurrency
//
// A Server is safe for concurrent use. Writes queue for the commit path:
// one writer at a time leads a group (see lead); bbolt serializes write
// transactions (the group's, and with store etcd the log follower's);
// reads run in parallel with them. After a commit, the server closes a
// channel that every change stream waits on (and replaces it), so followers
// wake at once without polling; streams never hold a read transaction while
// waiting or writing, and read the history in bounded chunks (a revision of
// any size is streamed part by part). A snapshot reads the entities in
// pages, each in a short read transaction, then replays the revisions
// committed meanwhile from the history: a slow reader never pins old pages
// of the file. Each write to a client is bounded by stream_write_timeout,
// and at most max_streams sync streams are open at once (more answer 503).
// Serve's end, or Close, ends every open stream.
//
// # Errors
//
// API errors answer {"error": "...", "code": "..."}: 400 malformed, 401
// unauthorized (no or unaccepted token), 403 forbidden, 404 not_found, 409
// conflict (an invariant) or ahead (since beyond the current revision), 410
// gone (since older than the retained history, or another epoch or history
// hash), 413
// too_large, 422 invalid (a valid JSON document that is not a valid entity),
// 500 internal (logged), 503 busy (body_budget_bytes stayed in use by other
// requests' bodies for body_budget_wait, or max_streams sync streams are
// open; with Retry-After), 503 unavailable (store etcd: etcd cannot be
// reached, or a write's outcome is not known yet). New returns errors wrapping ErrConfig for bad
// configuration (including unreadable or empty token files) and ErrInUse
// when another process holds the data file.
package control
