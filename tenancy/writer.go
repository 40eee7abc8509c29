package tenancy

import (
	"encoding/json"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Change is one entity change of a revision, as the change feed carries it.
type Change struct {
	// Op is "put" or "delete".
	Op         string          `json:"op"`
	Collection string          `json:"collection"`
	ID         string          `json:"id"`
	Value      json.RawMessage `json:"value,omitempty"`
}

// Change ops.
const (
	OpPut    = "put"
	OpDelete = "delete"
)

// Writer applies raw entity changes inside one bbolt write transaction and
// keeps every secondary and policy index in step. It checks no invariant:
// that is Apply's job. It records the changes it made.
type Writer struct {
	tx      *bolt.Tx
	rev     uint64
	strict  bool // every value read must carry a valid checksum (schema 2)
	changes []Change
	buckets map[string]*bolt.Bucket
	// before, when keepBefore, holds the previous document of each change
	// (nil: the entity did not exist), index by index with changes.
	keepBefore bool
	before     []json.RawMessage
}

// NewWriter returns a writer of revision rev in tx (initialized by Init).
// Values it writes carry checksums; values it reads are verified (a
// damaged one is an error wrapping ErrDamaged).
func NewWriter(tx *bolt.Tx, rev uint64) (*Writer, error) {
	if err := Check(tx); err != nil {
		return nil, err
	}
	return &Writer{tx: tx, rev: rev, strict: Schema(tx) == SchemaVersion, buckets: map[string]*bolt.Bucket{}}, nil
}

// Revision is the revision being written.
func (w *Writer) Revision() uint64 { return w.rev }

// Changes returns the changes made so far, in order.
func (w *Writer) Changes() []Change { return w.changes }

// KeepBefore makes the writer record, from now on, the previous value of
// every entity it changes (for an audit trail; see Before).
func (w *Writer) KeepBefore() { w.keepBefore = true }

// Before returns, after KeepBefore, the previous document of each change,
// index by index with Changes (nil where the entity did not exist).
func (w *Writer) Before() []json.RawMessage { return w.before }

// recordBefore notes prev as the previous value of the change about to be
// appended.
func (w *Writer) recordBefore(prev Entity) error {
	if !w.keepBefore {
		return nil
	}
	var doc json.RawMessage
	if prev != nil {
		var err error
		if doc, err = json.Marshal(prev); err != nil {
			return err
		}
	}
	w.before = append(w.before, doc)
	return nil
}

// Finish records the revision in the file.
func (w *Writer) Finish() error { return SetRevision(w.tx, w.rev) }

func (w *Writer) bucket(name string) *bolt.Bucket {
	b, ok := w.buckets[name]
	if !ok {
		b = w.tx.Bucket([]byte(name))
		w.buckets[name] = b
	}
	return b
}

// Get returns the entity, or nil when it does not exist.
func (w *Writer) Get(collection, id string) (Entity, error) {
	return get(w.bucket("e/"+collection), collection, id, w.strict)
}

// Get reads one entity from a transaction, nil when it does not exist.
func Get(tx *bolt.Tx, collection, id string) (Entity, error) {
	b := tx.Bucket(entityBucket(collection))
	if b == nil {
		return nil, ErrNotInitialized
	}
	return get(b, collection, id, Schema(tx) == SchemaVersion)
}

func get(b *bolt.Bucket, collection, id string, strict bool) (Entity, error) {
	v := b.Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	doc, err := decodeValue([]byte(id), v, strict)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", collection, id, err)
	}
	return DecodeStored(collection, doc)
}

// DecodeStored parses an entity written by this package or carried by the
// change feed: unknown fields are ignored (a newer control endpoint may add
// some), the entity must still be valid.
func DecodeStored(collection string, doc []byte) (Entity, error) {
	e := New(collection)
	if e == nil {
		return nil, notFound("unknown collection %q", collection)
	}
	if err := json.Unmarshal(doc, e); err != nil {
		return nil, malformed("%s: stored value: %v", collection, err)
	}
	normalize(e)
	if err := e.validate(); err != nil {
		return nil, fmt.Errorf("%s: stored value: %w", collection, err)
	}
	return e, nil
}

// Put writes e, replacing any entity with its id.
func (w *Writer) Put(e Entity) error {
	prev, err := w.Get(e.Collection(), e.Key())
	if err != nil {
		return err
	}
	doc, err := json.Marshal(e)
	if err != nil {
		return err
	}
	k := []byte(e.Key())
	if err := w.bucket("e/"+e.Collection()).Put(k, encodeValue(k, w.rev, doc)); err != nil {
		return err
	}
	if err := w.reindex(prev, e); err != nil {
		return err
	}
	if err := w.recordBefore(prev); err != nil {
		return err
	}
	w.changes = append(w.changes, Change{Op: OpPut, Collection: e.Collection(), ID: e.Key(), Value: doc})
	return nil
}

// Delete removes an entity; it reports whether it existed.
func (w *Writer) Delete(collection, id string) (bool, error) {
	prev, err := w.Get(collection, id)
	if err != nil || prev == nil {
		return false, err
	}
	if err := w.bucket("e/" + collection).Delete([]byte(id)); err != nil {
		return false, err
	}
	if err := w.reindex(prev, nil); err != nil {
		return false, err
	}
	if err := w.recordBefore(prev); err != nil {
		return false, err
	}
	w.changes = append(w.changes, Change{Op: OpDelete, Collection: collection, ID: id})
	return true, nil
}

// ApplyChange applies one change of the feed.
func (w *Writer) ApplyChange(c Change) error {
	switch c.Op {
	case OpPut:
		e, err := DecodeStored(c.Collection, c.Value)
		if err != nil {
			return err
		}
		if e.Key() != c.ID {
			return malformed("change put %s/%s carries id %q", c.Collection, c.ID, e.Key())
		}
		return w.Put(e)
	case OpDelete:
		if !IsCollection(c.Collection) {
			return malformed("change delete: unknown collection %q", c.Collection)
		}
		_, err := w.Delete(c.Collection, c.ID)
		return err
	}
	return malformed("change: unknown op %q", c.Op)
}

// secondaryKeys lists the secondary index entries of an entity.
func secondaryKeys(e Entity) map[string][]byte {
	switch e := e.(type) {
	case *Tenant:
		if e.Parent == "" {
			return nil
		}
		return map[string][]byte{xTenantChildren: key(e.Parent, e.ID)}
	case *User:
		return map[string][]byte{xTenantUsers: key(e.Tenant, e.ID)}
	case *Project:
		return map[string][]byte{xTenantProjects: key(e.Owner, e.ID)}
	case *ProjectGrant:
		return map[string][]byte{
			xTenantGrants:  key(e.Tenant, e.Project, e.ID),
			xProjectGrants: key(e.Project, e.Tenant, e.ID),
		}
	case *UserGrant:
		return map[string][]byte{
			xUserGrants:        key(e.User, e.Project, e.Tenant, e.ID),
			xProjectUserGrants: key(e.Project, e.Tenant, e.ID),
			xTenantUserGrants:  key(e.Tenant, e.ID),
		}
	case *Membership:
		return map[string][]byte{
			xUserMemberships:  key(e.User, e.ID),
			xScopeMemberships: key(e.Scope.Type, e.Scope.ID, e.ID),
		}
	}
	return nil
}

// reindex moves the index entries of prev (nil: created) to next (nil:
// deleted) and recomputes the policy indexes they feed.
func (w *Writer) reindex(prev, next Entity) error {
	if prev != nil {
		for b, k := range secondaryKeys(prev) {
			if err := w.bucket(b).Delete(k); err != nil {
				return err
			}
		}
	}
	if next != nil {
		for b, k := range secondaryKeys(next) {
			if err := w.bucket(b).Put(k, indexValue(k)); err != nil {
				return err
			}
		}
	}
	for _, e := range []Entity{prev, next} {
		if e == nil {
			continue
		}
		var err error
		switch e := e.(type) {
		case *Tenant:
			err = w.recomputeChains(e.ID)
		case *Project:
			err = w.recomputeTenantRoles(e.ID, e.Owner)
			if err == nil && (prev == nil || next == nil) {
				// a project appearing or going: its grants (written
				// before it in the same revision, or left by a delete)
				// start or stop giving roles
				err = w.recomputeGrantees(e.ID)
			}
		case *ProjectGrant:
			err = w.recomputeTenantRoles(e.Project, e.Tenant)
		case *UserGrant:
			err = w.recomputeUserRoles(e.User, e.Project, e.Tenant)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// putJSON writes a policy index value, or deletes it when v is nil.
func (w *Writer) putJSON(bucket string, k []byte, v any) error {
	b := w.bucket(bucket)
	if v == nil {
		return b.Delete(k)
	}
	doc, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if old := b.Get(k); old != nil {
		if _, _, oldDoc, err := OpenValue(k, old); err == nil && string(oldDoc) == string(doc) {
			return nil // unchanged: keep its revision, and the decoded-value caches keyed by it
		}
	}
	return b.Put(k, encodeValue(k, w.rev, doc))
}

// MaxAncestors bounds tenant chains: a tenant has at most 64 ancestors
// (SPEC §5), which also bounds walks over data written raw (cycles).
const MaxAncestors = 64

const maxDepth = MaxAncestors

// recomputeChains recomputes index.tenant_chain of t and its descendants.
func (w *Writer) recomputeChains(t string) error {
	queue := []string{t}
	seen := map[string]bool{}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if seen[id] {
			continue
		}
		seen[id] = true
		chain, err := w.chain(id)
		if err != nil {
			return err
		}
		if err := w.putJSON(iTenantChain, []byte(id), chain); err != nil {
			return err
		}
		scanPrefix(w.bucket(xTenantChildren), prefix(id), func(rest []string) bool {
			queue = append(queue, rest[0])
			return true
		})
	}
	return nil
}

// ChainCut ends an index.tenant_chain that does not reach a root within
// maxDepth ancestors, or that loops: neither is ever written by the control
// endpoint (Apply refuses both), but a chain read from other data must not
// look complete. It is not a valid id, so no tenant has it, and a policy
// requiring every tenant of the chain to be active fails closed.
const ChainCut = "!cut"

// chain returns [t, parent, ..., root] for an existing tenant, nil for a
// missing one. A missing ancestor ends the chain with its id, and a chain
// longer than t and maxDepth ancestors, or a cycle, ends with ChainCut, so
// that a policy checking every tenant of the chain fails closed.
func (w *Writer) chain(t string) (any, error) {
	var out []string
	for cur := t; cur != ""; {
		if len(out) > maxDepth || slices.Contains(out, cur) {
			return append(out, ChainCut), nil
		}
		e, err := w.Get(Tenants, cur)
		if err != nil {
			return nil, err
		}
		if e == nil {
			if cur == t {
				return nil, nil
			}
			return append(out, cur), nil
		}
		out = append(out, cur)
		cur = e.(*Tenant).Parent
	}
	return out, nil
}

// recomputeTenantRoles recomputes index.tenant_roles[p][x]: every role of
// the project for its owner, the roles of x's active grants otherwise.
func (w *Writer) recomputeTenantRoles(p, x string) error {
	pe, err := w.Get(Projects, p)
	if err != nil {
		return err
	}
	if pe != nil && pe.(*Project).Owner == x {
		return w.putJSON(iTenantRoles, key(p, x), pe.(*Project).Roles)
	}
	var roles []string
	granted := false
	var ids []string
	scanPrefix(w.bucket(xProjectGrants), prefix(p, x), func(rest []string) bool {
		ids = append(ids, rest[0])
		return true
	})
	for _, id := range ids {
		g, err := w.Get(ProjectGrants, id)
		if err != nil {
			return err
		}
		if g != nil && g.(*ProjectGrant).Status == StatusActive {
			granted = true
			roles = append(roles, g.(*ProjectGrant).Roles...)
		}
	}
	if !granted || pe == nil {
		return w.putJSON(iTenantRoles, key(p, x), nil)
	}
	return w.putJSON(iTenantRoles, key(p, x), NormalizeRoles(roles))
}

// recomputeGrantees recomputes index.tenant_roles[p][x] for every tenant x
// holding a grant on p.
func (w *Writer) recomputeGrantees(p string) error {
	var tenants []string
	scanPrefix(w.bucket(xProjectGrants), prefix(p), func(rest []string) bool {
		if len(tenants) == 0 || tenants[len(tenants)-1] != rest[0] {
			tenants = append(tenants, rest[0])
		}
		return true
	})
	for _, x := range tenants {
		if err := w.recomputeTenantRoles(p, x); err != nil {
			return err
		}
	}
	return nil
}

// recomputeUserRoles recomputes index.user_roles[u][p][x]: the union of the
// roles of u's user grants on p in x ([] when grants exist without roles).
func (w *Writer) recomputeUserRoles(u, p, x string) error {
	var ids []string
	scanPrefix(w.bucket(xUserGrants), prefix(u, p, x), func(rest []string) bool {
		ids = append(ids, rest[0])
		return true
	})
	if len(ids) == 0 {
		return w.putJSON(iUserRoles, key(u, p, x), nil)
	}
	var roles []string
	for _, id := range ids {
		g, err := w.Get(UserGrants, id)
		if err != nil {
			return err
		}
		if g != nil {
			roles = append(roles, g.(*UserGrant).Roles...)
		}
	}
	return w.putJSON(iUserRoles, key(u, p, x), NormalizeRoles(roles))
}
