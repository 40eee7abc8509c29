package tenancy

import (
	"bytes"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Indexes of Docs, for readers that address a document by number (the
// decision cache records reads by it).
const (
	DocTenants = iota
	DocUsers
	DocProjects
	DocProjectGrants
	DocUserGrants
	DocMemberships
	DocTenantChain
	DocTenantRoles
	DocUserRoles
	DocUserGrantIDs
	DocProjectGrantIDs
	DocTenantGrantIDs
	DocTenantChildren
	DocTenantUsers
	DocTenantProjects
	DocUserMemberships
	numDocs
)

// Stamp identifies what a stored value holds: the revision that wrote it
// and its checksum. The zero Stamp is "no value". Within one file, two reads
// of a key with the same stamp return the same document (see Stamp).
type Stamp struct {
	Rev uint64
	Sum uint32
}

// Recorder receives every keyed read a Reader makes (Get, and the typed
// reads built on it): the document (an index of Docs), the full key, and
// the stamp of what was found (zero when nothing was). The key is only
// valid during the call.
type Recorder interface {
	KeyedRead(doc int, key []byte, st Stamp)
}

// Reader reads the documents of data.tenancy (Docs) inside one bbolt
// transaction: keyed reads of stored values, verified against their
// checksum and returned with their stamp, typed reads of the values the
// policy questions need (decoded straight from the stored bytes), and
// scans of id sets and partial keys. It owns the key encoding: callers name
// a document and its key parts, never bytes.
//
// A Reader is not safe for concurrent use; it lives as long as its
// transaction. Byte slices it returns alias the transaction's memory.
//
// Damage: a value that fails its checksum, or is not what its bucket holds,
// is an error wrapping ErrDamaged. bbolt itself may panic on a damaged
// page; callers that read files they do not trust recover (see
// runtime/debug.SetPanicOnFault).
type Reader struct {
	tx      *bolt.Tx
	rec     Recorder
	buckets [numDocs]*bolt.Bucket
	cursors [numDocs]*bolt.Cursor // keyed reads seek with one cursor per bucket: no allocation per read
	key     []byte                // scratch
	sum     [8]byte               // scratch of the checksum
}

// NewReader returns a reader over tx; rec (may be nil) receives every keyed
// read. A reader over a nil transaction reads an empty file: no document
// exists.
func NewReader(tx *bolt.Tx, rec Recorder) *Reader {
	r := &Reader{}
	r.Reset(tx, rec)
	return r
}

// Reset points r at another transaction and recorder, keeping its buffers.
func (r *Reader) Reset(tx *bolt.Tx, rec Recorder) {
	r.tx, r.rec = tx, rec
	clear(r.buckets[:])
	clear(r.cursors[:])
}

// SetRecorder changes the recorder of keyed reads (nil: none).
func (r *Reader) SetRecorder(rec Recorder) { r.rec = rec }

// Tx returns the transaction r reads.
func (r *Reader) Tx() *bolt.Tx { return r.tx }

// Revision returns the revision recorded in r's transaction (0 without one).
func (r *Reader) Revision() uint64 {
	if r.tx == nil {
		return 0
	}
	return Revision(r.tx)
}

// bucket returns the bucket of doc; nil (no error) for a reader without a
// transaction.
func (r *Reader) bucket(doc int) (*bolt.Bucket, error) {
	if b := r.buckets[doc]; b != nil {
		return b, nil
	}
	if r.tx == nil {
		return nil, nil
	}
	b := r.tx.Bucket([]byte(Docs[doc].Bucket))
	if b == nil {
		return nil, fmt.Errorf("%w: bucket %s missing", ErrDamaged, Docs[doc].Bucket)
	}
	r.buckets[doc] = b
	return b, nil
}

// ValidKeyPart reports whether s can be part of a key: ids never hold the
// separator, so a part that does addresses nothing.
func ValidKeyPart(s string) bool { return strings.IndexByte(s, sep) < 0 }

// KeyParts splits a key a Recorder receives into its parts.
func KeyParts(key []byte) []string { return splitKey(key) }

// appendKey appends the key of parts to b.
func appendKey(b []byte, parts ...string) []byte {
	for i, p := range parts {
		if i > 0 {
			b = append(b, sep)
		}
		b = append(b, p...)
	}
	return b
}

// Get returns the verified JSON document stored at the full key of doc
// (len(keys) == Docs[doc].Depth, not an id set) and its stamp; nil when
// there is none. The read is recorded. A key part holding the separator
// addresses nothing (nil, not recorded).
func (r *Reader) Get(doc int, keys ...string) ([]byte, Stamp, error) {
	d := Docs[doc]
	if d.IDSet || len(keys) != d.Depth {
		return nil, Stamp{}, fmt.Errorf("tenancy: Get %s with %d key parts", strings.Join(d.Path, "."), len(keys))
	}
	for _, k := range keys {
		if !ValidKeyPart(k) {
			return nil, Stamp{}, nil
		}
	}
	r.key = appendKey(r.key[:0], keys...)
	return r.getKey(doc, r.key)
}

// getKey is Get with the key's bytes (no part holding the separator).
func (r *Reader) getKey(doc int, key []byte) ([]byte, Stamp, error) {
	raw, err := r.lookup(doc, key)
	if err != nil {
		return nil, Stamp{}, err
	}
	if raw == nil {
		if r.rec != nil {
			r.rec.KeyedRead(doc, key, Stamp{})
		}
		return nil, Stamp{}, nil
	}
	rev, sum, val, err := openValue(key, raw, &r.sum)
	if r.rec != nil {
		// the stamp as stored: a damaged value is never validated anyway
		r.rec.KeyedRead(doc, key, ValueStamp(raw))
	}
	if err != nil {
		return nil, Stamp{}, err
	}
	return val, Stamp{Rev: rev, Sum: sum}, nil
}

// lookup returns the value stored under key in doc's bucket, nil when
// none, seeking with the reader's cursor of that bucket (bbolt's Get
// allocates a cursor per call).
func (r *Reader) lookup(doc int, key []byte) ([]byte, error) {
	c := r.cursors[doc]
	if c == nil {
		b, err := r.bucket(doc)
		if err != nil || b == nil {
			return nil, err
		}
		c = b.Cursor()
		r.cursors[doc] = c
	}
	k, v := c.Seek(key)
	if !bytes.Equal(k, key) {
		return nil, nil
	}
	return v, nil
}

// StampAt returns the stamp of the value stored at a full key of doc (zero
// when none), without verifying or recording it: what a cached decision's
// recorded reads are checked against.
func (r *Reader) StampAt(doc int, key string) (Stamp, error) {
	r.key = append(r.key[:0], key...)
	raw, err := r.lookup(doc, r.key)
	return ValueStamp(raw), err
}

// IDs calls fn with the ids stored below the full key of an id-set doc, in
// key order, until fn returns false. Each index key is verified. IDs is a
// scan: it is not recorded.
func (r *Reader) IDs(doc int, keys []string, fn func(id []byte) bool) error {
	d := Docs[doc]
	if !d.IDSet || len(keys) != d.Depth {
		return fmt.Errorf("tenancy: IDs of %s with %d key parts", strings.Join(d.Path, "."), len(keys))
	}
	for _, k := range keys {
		if !ValidKeyPart(k) {
			return nil
		}
	}
	b, err := r.bucket(doc)
	if err != nil || b == nil {
		return err
	}
	pre := append(appendKey(nil, keys...), sep)
	c := b.Cursor()
	for k, v := c.Seek(pre); k != nil && bytes.HasPrefix(k, pre); k, v = c.Next() {
		if err := CheckIndexKey(k, v); err != nil {
			return err
		}
		id := k[len(pre):]
		if i := bytes.IndexByte(id, sep); i >= 0 {
			id = id[:i]
		}
		if !fn(id) {
			return nil
		}
	}
	return nil
}

// Entry is one stored entry found by Scan.
type Entry struct {
	// Parts are the key parts below the scanned prefix: Depth-len(keys)
	// parts addressing a leaf, then (id sets) the id.
	Parts []string
	// Doc is the verified JSON document (nil for an id set).
	Doc []byte
	// Stamp is the document's stamp (zero for an id set).
	Stamp Stamp
}

// Scan calls fn with every entry of doc below a partial key (fewer parts
// than Depth; none: the whole document), in key order, until fn returns
// false or an error. Values are verified (documents by checksum, id sets by
// their key's checksum). Scan is not recorded.
func (r *Reader) Scan(doc int, keys []string, fn func(e Entry) (bool, error)) error {
	d := Docs[doc]
	if len(keys) >= d.Depth {
		return fmt.Errorf("tenancy: Scan %s with %d key parts", strings.Join(d.Path, "."), len(keys))
	}
	for _, k := range keys {
		if !ValidKeyPart(k) {
			return nil
		}
	}
	b, err := r.bucket(doc)
	if err != nil || b == nil {
		return err
	}
	var pre []byte
	if len(keys) > 0 {
		pre = append(appendKey(nil, keys...), sep)
	}
	levels := d.Depth - len(keys)
	c := b.Cursor()
	var k, v []byte
	if pre == nil {
		k, v = c.First()
	} else {
		k, v = c.Seek(pre)
	}
	for ; k != nil && bytes.HasPrefix(k, pre); k, v = c.Next() {
		parts := splitKey(k[len(pre):])
		if len(parts) < levels || (d.IDSet && len(parts) < levels+1) {
			continue
		}
		e := Entry{Parts: parts}
		if d.IDSet {
			if err := CheckIndexKey(k, v); err != nil {
				return err
			}
		} else {
			rev, sum, doc, err := OpenValue(k, v)
			if err != nil {
				return err
			}
			e.Doc, e.Stamp = doc, Stamp{Rev: rev, Sum: sum}
		}
		more, err := fn(e)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// --- typed reads: what the policy questions of SPEC §6 need ---

// User returns users[id], nil when absent. The read is recorded.
func (r *Reader) User(id string) (*User, error) {
	return readEntity(r, DocUsers, id, decodeUser)
}

// Tenant returns tenants[id], nil when absent. The read is recorded.
func (r *Reader) Tenant(id string) (*Tenant, error) {
	return readEntity(r, DocTenants, id, decodeTenant)
}

// Project returns projects[id], nil when absent. The read is recorded.
func (r *Reader) Project(id string) (*Project, error) {
	return readEntity(r, DocProjects, id, decodeProject)
}

// readEntity reads the entity id of collection doc with r (recorded) and
// decodes it with decode; nil when absent.
func readEntity[T any](r *Reader, doc int, id string, decode func([]byte, *T) error) (*T, error) {
	b, _, err := r.Get(doc, id)
	if err != nil || b == nil {
		return nil, err
	}
	e := new(T)
	if err := decode(b, e); err != nil {
		return nil, r.undecodable(doc, err, id)
	}
	return e, nil
}

// TenantChain returns index.tenant_chain[t] (t and its ancestors, see
// ChainCut), nil when t does not exist. The read is recorded.
func (r *Reader) TenantChain(t string) ([]string, error) {
	return r.stringList(DocTenantChain, t)
}

// TenantRoles returns index.tenant_roles[p][x], the roles tenant x holds on
// project p; ok is false when x neither owns p nor holds an active grant on
// it. The read is recorded.
func (r *Reader) TenantRoles(p, x string) (roles []string, ok bool, err error) {
	roles, err = r.stringList(DocTenantRoles, p, x)
	if err != nil || roles == nil {
		return nil, false, err
	}
	return roles, true, nil
}

// UserRoles returns index.user_roles[u][p][x], the union of the roles of
// u's grants on p in x (empty when none). The read is recorded.
func (r *Reader) UserRoles(u, p, x string) ([]string, error) {
	return r.stringList(DocUserRoles, u, p, x)
}

// stringList reads a document holding a list of strings: nil when absent,
// non-nil (maybe empty) when present.
func (r *Reader) stringList(doc int, keys ...string) ([]string, error) {
	val, _, err := r.Get(doc, keys...)
	if err != nil || val == nil {
		return nil, err
	}
	out, err := decodeStrings(val)
	if err != nil {
		return nil, r.undecodable(doc, err, keys...)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// undecodable reports a value whose checksum holds but whose document is
// not what its bucket holds: damage all the same (it was never written so).
func (r *Reader) undecodable(doc int, err error, keys ...string) error {
	return fmt.Errorf("%w: %s[%s]: %v", ErrDamaged, strings.Join(Docs[doc].Path, "."), strings.Join(keys, "]["), err)
}
