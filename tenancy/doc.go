// Package tenancy is Gatehouse's multi-tenant authorization model: tenants
// (with service-provider parents), users, projects with roles, project
// grants, user grants and memberships (SPEC §5); its invariants; and its
// layout in a bbolt file, shared by the control endpoint (the state of
// record) and every sidecar's cache.
//
// # Layout
//
// Entities live in one bucket per collection ("e/<collection>": id → JSON,
// prefixed by the 8-byte revision that last wrote the value and a CRC-32C,
// see OpenValue). Secondary indexes ("x/...": composite keys joined by NUL,
// whose value is the key's CRC-32C) make every invariant check and cascade
// a prefix scan. Policy indexes ("i/...": the documents under
// data.tenancy.index) are maintained on every write, so policies never scan
// a collection. The "meta" bucket holds the schema, the revision, the
// history epoch and the history hash of the revision (see RevisionHash).
//
// The package owns both sides of this format: nothing outside it knows a
// bucket name, the key separator, a meta key or the value encoding. Writer
// writes it; Reader reads it inside one bbolt transaction: keyed reads of
// the documents of data.tenancy (Docs) verified against their checksum and
// returned with their Stamp (revision and checksum: what a cached decision
// is validated against), typed reads of users, tenants, projects and the
// policy indexes decoded straight from the stored bytes, and scans. A
// Recorder given to a Reader receives every keyed read, whoever reads: the
// sidecar's OPA storage adapter and its built-in functions alike.
//
// Decide answers the tenancy questions of SPEC §6 (steps 2 to 6) from a
// Reader, reading stored values in place; PathTenant reads the tenant a raw
// request path names. The sidecar exposes both as Gatehouse built-ins.
//
// Writer applies raw changes and keeps every index in step; Apply adds the
// invariants and cascades of the control API on top, checking a batch as
// one change from the state before it to the state after it. Both work
// inside one bbolt write transaction: a failed batch is rolled back whole.
// Decode reads the API's JSON strictly (CheckKeys: exact field names, no
// duplicates). Validate checks a whole file from scratch (tests, offline
// checks).
//
// # Errors
//
// Apply and Decode return *Error, whose Status is the HTTP status the
// control API answers with (400 malformed, 404 unknown id, 409 invariant or
// reference violated, 422 invalid entity). Validate's error wraps
// ErrInconsistent.
package tenancy
