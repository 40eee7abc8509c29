package tenancy

import (
	"bytes"
	"encoding/binary"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket names.
const (
	bucketMeta = "meta"

	// secondary indexes: composite keys, empty values
	xTenantChildren    = "x/tenant_children"     // parent, child
	xTenantUsers       = "x/tenant_users"        // tenant, user
	xTenantProjects    = "x/tenant_projects"     // owner, project
	xTenantGrants      = "x/tenant_grants"       // tenant, project, grant
	xProjectGrants     = "x/project_grants"      // project, tenant, grant
	xUserGrants        = "x/user_grants"         // user, project, tenant, user grant
	xProjectUserGrants = "x/project_user_grants" // project, tenant, user grant
	xTenantUserGrants  = "x/tenant_user_grants"  // tenant, user grant
	xUserMemberships   = "x/user_memberships"    // user, membership
	xScopeMemberships  = "x/scope_memberships"   // scope type, scope id, membership

	// policy indexes: JSON values
	iTenantChain = "i/tenant_chain" // tenant → [tenant, parent, ..., root]
	iTenantRoles = "i/tenant_roles" // project, tenant → roles the tenant holds on the project
	iUserRoles   = "i/user_roles"   // user, project, tenant → roles of the user's grants
)

// Meta keys.
var (
	metaRevision = []byte("revision")
	metaEpoch    = []byte("epoch")
	metaSchema   = []byte("schema")
	metaHash     = []byte("hash")
	metaSyncedAt = []byte("synced_at") // a sidecar's cache: when its data was last known current
)

// SchemaVersion is the layout version written by Init on a new file: every
// stored value carries a checksum (see OpenValue). A file of another
// version is refused (and, for a cache, rebuilt).
const SchemaVersion = "gatehouse-tenancy-2"

// LegacySchema is the previous layout (values without checksums). A control
// endpoint keeps serving a file of this schema (values it writes gain
// checksums); a sidecar's cache of this schema is rebuilt.
const LegacySchema = "gatehouse-tenancy-1"

// knownSchema reports whether Init and Check accept a file of schema v.
func knownSchema(v []byte) bool {
	return string(v) == SchemaVersion || string(v) == LegacySchema
}

func entityBucket(collection string) []byte { return []byte("e/" + collection) }

var secondaryBuckets = []string{
	xTenantChildren, xTenantUsers, xTenantProjects, xTenantGrants, xProjectGrants,
	xUserGrants, xProjectUserGrants, xTenantUserGrants, xUserMemberships, xScopeMemberships,
}

var policyBuckets = []string{iTenantChain, iTenantRoles, iUserRoles}

// sep joins the parts of a composite key; ids never contain it.
const sep = 0

func key(parts ...string) []byte {
	n := len(parts) - 1
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for i, p := range parts {
		if i > 0 {
			b = append(b, sep)
		}
		b = append(b, p...)
	}
	return b
}

// prefix is key(parts...) followed by the separator: every key below it.
func prefix(parts ...string) []byte { return append(key(parts...), sep) }

// splitKey splits a composite key into its parts.
func splitKey(k []byte) []string { return strings.Split(string(k), "\x00") }

// Init creates the buckets and schema marker of an empty file, or checks
// those of an existing one.
func Init(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists([]byte(bucketMeta))
	if err != nil {
		return err
	}
	if v := meta.Get(metaSchema); v == nil {
		if err := meta.Put(metaSchema, []byte(SchemaVersion)); err != nil {
			return err
		}
	} else if !knownSchema(v) {
		return &Error{Status: 500, Code: "schema", Msg: "tenancy file schema " + string(v) + ", want " + SchemaVersion}
	}
	for _, c := range Collections {
		if _, err := tx.CreateBucketIfNotExists(entityBucket(c)); err != nil {
			return err
		}
	}
	for _, b := range append(append([]string{}, secondaryBuckets...), policyBuckets...) {
		if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
			return err
		}
	}
	return nil
}

// Check verifies that tx holds an initialized tenancy file of this schema.
func Check(tx *bolt.Tx) error {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		return ErrNotInitialized
	}
	if v := meta.Get(metaSchema); !knownSchema(v) {
		return &Error{Status: 500, Code: "schema", Msg: "tenancy file schema " + string(v) + ", want " + SchemaVersion}
	}
	for _, c := range Collections {
		if tx.Bucket(entityBucket(c)) == nil {
			return ErrNotInitialized
		}
	}
	for _, b := range append(append([]string{}, secondaryBuckets...), policyBuckets...) {
		if tx.Bucket([]byte(b)) == nil {
			return ErrNotInitialized
		}
	}
	return nil
}

// Revision returns the revision recorded in tx (0 for a new file).
func Revision(tx *bolt.Tx) uint64 {
	if meta := tx.Bucket([]byte(bucketMeta)); meta != nil {
		if v := meta.Get(metaRevision); len(v) == 8 {
			return binary.BigEndian.Uint64(v)
		}
	}
	return 0
}

// SetRevision records rev in tx.
func SetRevision(tx *bolt.Tx, rev uint64) error {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		return ErrNotInitialized
	}
	return meta.Put(metaRevision, u64(rev))
}

// Epoch returns the identity of the history the file belongs to: random,
// chosen by the control endpoint when its file is created. A sidecar whose
// cache has another epoch than its control endpoint re-snapshots.
func Epoch(tx *bolt.Tx) string {
	if meta := tx.Bucket([]byte(bucketMeta)); meta != nil {
		return string(meta.Get(metaEpoch))
	}
	return ""
}

// SetEpoch records the epoch in tx.
func SetEpoch(tx *bolt.Tx, epoch string) error {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		return ErrNotInitialized
	}
	return meta.Put(metaEpoch, []byte(epoch))
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// Initialized reports whether tx holds a tenancy file at all (its meta
// bucket), whatever its schema: Init creates one, Check verifies one.
func Initialized(tx *bolt.Tx) bool { return tx.Bucket([]byte(bucketMeta)) != nil }

// SyncedAt returns when a sidecar's cache was last known current (the
// zero time when never recorded or unreadable).
func SyncedAt(tx *bolt.Tx) time.Time {
	if meta := tx.Bucket([]byte(bucketMeta)); meta != nil {
		if v := meta.Get(metaSyncedAt); v != nil {
			if t, err := time.Parse(time.RFC3339Nano, string(v)); err == nil {
				return t
			}
		}
	}
	return time.Time{}
}

// SetSyncedAt records when a sidecar's cache was last known current.
func SetSyncedAt(tx *bolt.Tx, t time.Time) error {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		return ErrNotInitialized
	}
	return meta.Put(metaSyncedAt, []byte(t.UTC().Format(time.RFC3339Nano)))
}

// Schema returns the layout version recorded in tx ("" when none).
func Schema(tx *bolt.Tx) string {
	if meta := tx.Bucket([]byte(bucketMeta)); meta != nil {
		return string(meta.Get(metaSchema))
	}
	return ""
}

// ChainHash returns the history hash of the revision recorded in tx, ""
// when the file has none (a file written before hashing began). See
// GenesisHash and HeadHash.
func ChainHash(tx *bolt.Tx) string {
	if meta := tx.Bucket([]byte(bucketMeta)); meta != nil {
		return string(meta.Get(metaHash))
	}
	return ""
}

// SetChainHash records the history hash of the file's revision.
func SetChainHash(tx *bolt.Tx, h string) error {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		return ErrNotInitialized
	}
	return meta.Put(metaHash, []byte(h))
}

// HeadHash returns the history hash of the revision recorded in tx: the
// recorded one, or for a file without one the genesis of its epoch at its
// revision (where its chain starts).
func HeadHash(tx *bolt.Tx) string {
	if h := ChainHash(tx); h != "" {
		return h
	}
	return GenesisHash(Epoch(tx), Revision(tx))
}

// scanPrefix calls fn with the key parts after pre for every key starting
// with pre, in key order, until fn returns false.
func scanPrefix(b *bolt.Bucket, pre []byte, fn func(rest []string) bool) {
	c := b.Cursor()
	for k, _ := c.Seek(pre); k != nil && bytes.HasPrefix(k, pre); k, _ = c.Next() {
		if !fn(splitKey(k[len(pre):])) {
			return
		}
	}
}

// Doc describes a document under data.tenancy that is stored in a bucket:
// Path below data.tenancy, the bucket, how many key parts address a leaf,
// and whether a leaf is a stored JSON document or the list of ids that
// follow the leaf's key parts (an id set).
type Doc struct {
	Path   []string
	Bucket string
	Depth  int
	IDSet  bool
}

// Docs lists every document of data.tenancy. Entities sit at
// data.tenancy.<collection>[id]; indexes at data.tenancy.index.<name>.
var Docs = []Doc{
	{Path: []string{Tenants}, Bucket: "e/" + Tenants, Depth: 1},
	{Path: []string{Users}, Bucket: "e/" + Users, Depth: 1},
	{Path: []string{Projects}, Bucket: "e/" + Projects, Depth: 1},
	{Path: []string{ProjectGrants}, Bucket: "e/" + ProjectGrants, Depth: 1},
	{Path: []string{UserGrants}, Bucket: "e/" + UserGrants, Depth: 1},
	{Path: []string{Memberships}, Bucket: "e/" + Memberships, Depth: 1},
	{Path: []string{"index", "tenant_chain"}, Bucket: iTenantChain, Depth: 1},
	{Path: []string{"index", "tenant_roles"}, Bucket: iTenantRoles, Depth: 2},
	{Path: []string{"index", "user_roles"}, Bucket: iUserRoles, Depth: 3},
	{Path: []string{"index", "user_grants"}, Bucket: xUserGrants, Depth: 3, IDSet: true},
	{Path: []string{"index", "project_grants"}, Bucket: xProjectGrants, Depth: 2, IDSet: true},
	{Path: []string{"index", "tenant_grants"}, Bucket: xTenantGrants, Depth: 2, IDSet: true},
	{Path: []string{"index", "tenant_children"}, Bucket: xTenantChildren, Depth: 1, IDSet: true},
	{Path: []string{"index", "tenant_users"}, Bucket: xTenantUsers, Depth: 1, IDSet: true},
	{Path: []string{"index", "tenant_projects"}, Bucket: xTenantProjects, Depth: 1, IDSet: true},
	{Path: []string{"index", "user_memberships"}, Bucket: xUserMemberships, Depth: 1, IDSet: true},
}
