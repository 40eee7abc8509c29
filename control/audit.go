package control

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// The audit trail (SPEC §9): every admin write leaves one audit record per
// entity it changed, written by commit in the write's own bbolt
// transaction (so there is never a write without its records, nor records
// without their write). The record is derived from the revision record the
// history stores (revision, time, actor, request) plus the entity's value
// before and after.
//
// Buckets: "audit" maps ts ‖ revision ‖ change number (8+8+4 bytes, big
// endian; ts in Unix nanoseconds) to the JSON AuditRecord; "audit_tenants"
// indexes it by each tenant the change touches: tenant ‖ 0 ‖ the audit key
// → empty. A tenant's query walks its index only. Records older than
// audit.retention are trimmed by later writes (at most auditTrimBatch per
// transaction).
var (
	bucketAudit        = []byte("audit")
	bucketAuditTenants = []byte("audit_tenants")
)

const (
	// DefaultAuditRetention is AuditConfig.Retention's default: 90 days.
	DefaultAuditRetention = 90 * 24 * time.Hour
	// auditTrimBatch bounds the expired audit records one write removes.
	auditTrimBatch = 10000
	// auditKeyLen is the length of an audit key.
	auditKeyLen = 20
	// scanBudget bounds the entries one page of audit or decisions
	// examines; a page that reaches it ends early, with a next cursor.
	scanBudget = 10000
)

// AuditConfig configures the audit trail (`audit:` in the control config).
type AuditConfig struct {
	// Retention is how long audit records are kept (and the decisions'
	// usage counters); default 90 days (2160h). Expired records are
	// removed by later writes.
	Retention time.Duration `yaml:"retention"`
}

// Actor kinds.
const (
	ActorAdmin = "admin" // the admin token
	ActorUser  = "user"  // a delegated administrator: users[sub] of an issuer's token
)

// Actor is who made a write.
type Actor struct {
	Kind   string `json:"kind"`
	ID     string `json:"id"`
	Issuer string `json:"issuer,omitempty"`
}

func actorOf(p principal) Actor {
	if p.role == roleUser {
		return Actor{Kind: ActorUser, ID: p.user, Issuer: p.issuer}
	}
	return Actor{Kind: ActorAdmin, ID: ActorAdmin}
}

// Request kinds of a revision (its history record's "op"; an audit
// record's "request").
const (
	requestPut    = tenancy.OpPut
	requestDelete = tenancy.OpDelete
	requestBatch  = "batch"
)

// requestOf names the write a list of ops is: a single put or delete, or a
// batch.
func requestOf(ops []tenancy.Op) string {
	if len(ops) == 1 && (ops[0].Op == tenancy.OpPut || ops[0].Op == tenancy.OpDelete) {
		return ops[0].Op
	}
	return requestBatch
}

// AuditRecord is one entity change of an admin write.
type AuditRecord struct {
	Revision uint64    `json:"revision"`
	Time     time.Time `json:"time"`
	Actor    Actor     `json:"actor"`
	// Request is the write: put, delete (one entity, with its cascade) or
	// batch. Op is what happened to this entity: put or delete.
	Request    string `json:"request"`
	Op         string `json:"op"`
	Collection string `json:"collection"`
	ID         string `json:"id"`
	// Tenants are the tenants the change touches (see touchedTenants).
	Tenants []string `json:"tenants"`
	// Before and After are the entity's values (null: absent).
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
}

func auditKey(ts time.Time, rev uint64, n uint32) []byte {
	k := make([]byte, 0, auditKeyLen)
	k = append(k, tsKey(ts)...)
	k = binary.BigEndian.AppendUint64(k, rev)
	return binary.BigEndian.AppendUint32(k, n)
}

// tsKey is the 8-byte key prefix of a time (Unix nanoseconds; times
// before 1970 sort first).
func tsKey(t time.Time) []byte {
	return u64(uint64(max(t.UnixNano(), 0)))
}

// tenantKey is an index key: tenant ‖ 0 ‖ main key.
func tenantKey(tenant string, main []byte) []byte {
	k := make([]byte, 0, len(tenant)+1+len(main))
	k = append(k, tenant...)
	k = append(k, 0)
	return append(k, main...)
}

// appendAudit writes the audit records of revision r, whose changes had
// the previous values before (index by index), and trims the records older
// than the retention. It runs in the write's transaction. It returns the
// number of records written and trimmed.
func appendAudit(tx *bolt.Tx, r revisionRecord, before []json.RawMessage, retention time.Duration) (written, trimmed int, err error) {
	if len(before) != len(r.changes) {
		return 0, 0, fmt.Errorf("audit revision %d: %d previous values for %d changes", r.rev, len(before), len(r.changes))
	}
	b, idx := tx.Bucket(bucketAudit), tx.Bucket(bucketAuditTenants)
	look := newLookup(tx, r.changes, before)
	for i, c := range r.changes {
		rec := AuditRecord{
			Revision: r.rev, Time: r.time, Actor: r.actor, Request: r.request,
			Op: c.Op, Collection: c.Collection, ID: c.ID, Before: before[i],
		}
		if c.Op == tenancy.OpPut {
			rec.After = c.Value
		}
		if rec.Tenants, err = look.touchedTenants(c.Collection, rec.Before, rec.After); err != nil {
			return 0, 0, fmt.Errorf("audit revision %d: %w", r.rev, err)
		}
		doc, err := json.Marshal(rec)
		if err != nil {
			return 0, 0, fmt.Errorf("audit revision %d: %w", r.rev, err)
		}
		k := auditKey(r.time, r.rev, uint32(i))
		if err := b.Put(k, doc); err != nil {
			return 0, 0, err
		}
		for _, t := range rec.Tenants {
			if err := idx.Put(tenantKey(t, k), nil); err != nil {
				return 0, 0, err
			}
		}
	}
	trimmed, err = trimAudit(tx, r.time.Add(-retention))
	return len(r.changes), trimmed, err
}

// appendRecord writes one audit record made outside a tenancy revision (a
// bundle upload: its revision is the current one, numbered from the top
// of the change numbers so that it never meets a revision's records) and
// trims the expired records.
func appendRecord(tx *bolt.Tx, rec AuditRecord, retention time.Duration) (trimmed int, err error) {
	doc, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	b := tx.Bucket(bucketAudit)
	n := uint32(1<<32 - 1)
	k := auditKey(rec.Time, rec.Revision, n)
	for b.Get(k) != nil && n > 1<<31 { // two uploads at one clock reading
		n--
		k = auditKey(rec.Time, rec.Revision, n)
	}
	if err := b.Put(k, doc); err != nil {
		return 0, err
	}
	return trimAudit(tx, rec.Time.Add(-retention))
}

// trimAudit removes up to auditTrimBatch records older than cutoff, with
// their index entries.
func trimAudit(tx *bolt.Tx, cutoff time.Time) (int, error) {
	b, idx := tx.Bucket(bucketAudit), tx.Bucket(bucketAuditTenants)
	limit := tsKey(cutoff)
	var drop [][]byte
	c := b.Cursor()
	for k, v := c.First(); k != nil && bytes.Compare(k[:8], limit) < 0 && len(drop) < auditTrimBatch; k, v = c.Next() {
		var rec struct {
			Tenants []string `json:"tenants"`
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return 0, fmt.Errorf("trim audit: decode %x: %w", k, err)
		}
		for _, t := range rec.Tenants {
			if err := idx.Delete(tenantKey(t, k)); err != nil {
				return 0, err
			}
		}
		drop = append(drop, append([]byte(nil), k...))
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(drop), nil
}

// lookup reads entities for touchedTenants: the state after the write,
// else the value the revision removed (a cascade deletes a user and its
// grants together).
type lookup struct {
	tx   *bolt.Tx
	gone map[[2]string]json.RawMessage
}

func newLookup(tx *bolt.Tx, changes []tenancy.Change, before []json.RawMessage) *lookup {
	l := &lookup{tx: tx, gone: map[[2]string]json.RawMessage{}}
	for i, c := range changes {
		if c.Op == tenancy.OpDelete && before[i] != nil {
			l.gone[[2]string{c.Collection, c.ID}] = before[i]
		}
	}
	return l
}

func (l *lookup) get(collection, id string) (tenancy.Entity, error) {
	e, err := tenancy.Get(l.tx, collection, id)
	if err != nil || e != nil {
		return e, err
	}
	if doc, ok := l.gone[[2]string{collection, id}]; ok {
		return tenancy.DecodeStored(collection, doc)
	}
	return nil, nil
}

// entityRefs are the fields of the entities' documents that lead to
// tenants.
type entityRefs struct {
	ID      string `json:"id"`
	Parent  string `json:"parent"`
	Tenant  string `json:"tenant"`
	Owner   string `json:"owner"`
	Project string `json:"project"`
	User    string `json:"user"`
	Scope   struct {
		Type string `json:"type"`
		ID   string `json:"id"`
	} `json:"scope"`
}

// touchedTenants lists, sorted, the tenants a change touches, from the
// entity's values before and after: a tenant itself and its parent; a
// user's home tenant; a project's owner; a project grant's grantee and the
// project's owner; a user grant's tenant and the user's home tenant; a
// membership's user's home tenant and the tenant its scope lies in.
func (l *lookup) touchedTenants(collection string, docs ...json.RawMessage) ([]string, error) {
	set := map[string]bool{}
	add := func(t string) {
		if t != "" {
			set[t] = true
		}
	}
	var err error
	follow := func(collection, id string, f func(tenancy.Entity)) {
		if err != nil || id == "" {
			return
		}
		var e tenancy.Entity
		if e, err = l.get(collection, id); e != nil {
			f(e)
		}
	}
	owner := func(e tenancy.Entity) { add(e.(*tenancy.Project).Owner) }
	home := func(e tenancy.Entity) { add(e.(*tenancy.User).Tenant) }
	for _, doc := range docs {
		if doc == nil {
			continue
		}
		var e entityRefs // the fields naming tenants (the documents were validated when written)
		if derr := json.Unmarshal(doc, &e); derr != nil {
			return nil, fmt.Errorf("%s: %w", collection, derr)
		}
		switch collection {
		case tenancy.Tenants:
			add(e.ID)
			add(e.Parent)
		case tenancy.Users:
			add(e.Tenant)
		case tenancy.Projects:
			add(e.Owner)
		case tenancy.ProjectGrants:
			add(e.Tenant)
			follow(tenancy.Projects, e.Project, owner)
		case tenancy.UserGrants:
			add(e.Tenant)
			follow(tenancy.Users, e.User, home)
		case tenancy.Memberships:
			follow(tenancy.Users, e.User, home)
			switch e.Scope.Type {
			case tenancy.ScopeTenant:
				add(e.Scope.ID)
			case tenancy.ScopeProject:
				follow(tenancy.Projects, e.Scope.ID, owner)
			case tenancy.ScopeProjectGrant:
				follow(tenancy.ProjectGrants, e.Scope.ID, func(g tenancy.Entity) {
					add(g.(*tenancy.ProjectGrant).Tenant)
					follow(tenancy.Projects, g.(*tenancy.ProjectGrant).Project, owner)
				})
			}
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	slices.Sort(out)
	return out, nil
}

// view is what a reader of the audit, decisions and usage may see: every
// tenant (all), or the listed ones.
type view struct {
	all     bool
	tenants map[string]bool
}

// viewOf resolves what p may see: the admin token everything; a delegated
// administrator the tenants it administers and their child tenants (a
// service-provider admin sees its customers); the sync token, and users
// who administer no tenant, nothing (403).
func viewOf(tx *bolt.Tx, p principal) (view, error) {
	switch p.role {
	case roleAdmin:
		return view{all: true}, nil
	case roleUser:
	default:
		return view{}, forbidden("the sync token reads the sync feed and bundles only")
	}
	r, err := loadRights(tx, p)
	if err != nil {
		return view{}, err
	}
	if len(r.tenants) == 0 {
		return view{}, forbidden("user %q administers no tenant (%s): audit, decisions and usage are per tenant", r.user, r.scope())
	}
	v := view{tenants: map[string]bool{}}
	for t := range r.tenants {
		v.tenants[t] = true
		children, err := tenancy.TenantChildren(tx, t)
		if err != nil {
			return view{}, err
		}
		for _, c := range children {
			v.tenants[c] = true
		}
	}
	return v, nil
}

// pick returns the tenants a query reads: nil for every record (the whole
// store, for a view of all tenants without a tenant filter), else the
// filter's tenant or every visible one. A tenant outside the view is 403.
func (v view) pick(tenant string) ([]string, error) {
	if tenant != "" {
		if !v.all && !v.tenants[tenant] {
			return nil, forbidden("tenant %q is outside what the token may see", tenant)
		}
		return []string{tenant}, nil
	}
	if v.all {
		return nil, nil
	}
	out := make([]string, 0, len(v.tenants))
	for t := range v.tenants {
		out = append(out, t)
	}
	slices.Sort(out)
	return out, nil
}

// logQuery is the common part of GET /v1/audit and /v1/decisions.
type logQuery struct {
	tenant       string
	since, until time.Time // zero: unbounded
	limit        int
	after        []byte // exclusive upper bound (a previous page's next)
}

// parseLogQuery reads tenant, since, until, limit and after; keyLen is the
// length of the store's keys (an after cursor is one, hex-encoded).
func parseLogQuery(q url.Values, keyLen int) (logQuery, error) {
	lq := logQuery{tenant: q.Get("tenant"), limit: defaultLimit}
	if lq.tenant != "" && !tenancy.ValidID(lq.tenant) {
		return lq, badRequest("tenant=%q is not a valid tenant id", lq.tenant)
	}
	var err error
	if lq.since, err = queryTime(q, "since"); err != nil {
		return lq, err
	}
	if lq.until, err = queryTime(q, "until"); err != nil {
		return lq, err
	}
	if !lq.since.IsZero() && !lq.until.IsZero() && lq.until.Before(lq.since) {
		return lq, badRequest("until (%s) is before since (%s)", q.Get("until"), q.Get("since"))
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxLimit {
			return lq, badRequest("limit=%q: want a number from 1 to %d", v, maxLimit)
		}
		lq.limit = n
	}
	if v := q.Get("after"); v != "" {
		k, err := hex.DecodeString(v)
		if err != nil || len(k) != keyLen {
			return lq, badRequest("after=%q is not a cursor of this list (use the next of a previous page)", v)
		}
		lq.after = k
	}
	return lq, nil
}

// queryTime reads an optional RFC 3339 time parameter.
func queryTime(q url.Values, name string) (time.Time, error) {
	v := q.Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, badRequest("%s=%q is not an RFC 3339 time", name, v)
	}
	return t, nil
}

// upper is the exclusive upper bound of the keys a page reads: below
// until's next nanosecond and below after.
func (lq logQuery) upper() []byte {
	up := []byte{0xff} // above every key (a time key's first byte is at most 0x7f)
	if !lq.until.IsZero() {
		up = tsKey(lq.until.Add(time.Nanosecond))
	}
	if lq.after != nil && bytes.Compare(lq.after, up) < 0 {
		up = lq.after
	}
	return up
}

// lower is the inclusive lower bound of the keys' time prefix.
func (lq logQuery) lower() []byte {
	if lq.since.IsZero() {
		return nil
	}
	return tsKey(lq.since)
}

// walker walks, newest first, the keys of a main bucket (prefix nil) or
// the main keys an index holds under prefix.
type walker struct {
	c      *bolt.Cursor
	prefix []byte
	main   []byte // the current main key; nil when done
}

// newWalker starts below upper (exclusive).
func newWalker(b *bolt.Bucket, prefix, upper []byte) *walker {
	w := &walker{c: b.Cursor(), prefix: prefix}
	k, _ := w.c.Seek(append(append([]byte(nil), prefix...), upper...))
	if k == nil {
		k, _ = w.c.Last()
	} else {
		k, _ = w.c.Prev()
	}
	w.set(k)
	return w
}

func (w *walker) set(k []byte) {
	w.main = nil
	if k != nil && bytes.HasPrefix(k, w.prefix) {
		w.main = k[len(w.prefix):]
	}
}

func (w *walker) next() {
	k, _ := w.c.Prev()
	w.set(k)
}

// walkers builds the walkers of a query: the main bucket when tenants is
// nil, else one per tenant over the index.
func walkers(main, idx *bolt.Bucket, tenants []string, upper []byte) []*walker {
	if tenants == nil {
		return []*walker{newWalker(main, nil, upper)}
	}
	ws := make([]*walker, 0, len(tenants))
	for _, t := range tenants {
		ws = append(ws, newWalker(idx, tenantKey(t, nil), upper))
	}
	return ws
}

// collect pages through the walkers' merged keys, newest first and each
// once, down to lower (a time prefix, inclusive): visit returns the item of
// a key (nil to skip it). It stops after limit items or scanBudget keys,
// and returns the items and the cursor of the next page ("" when no key
// is left). The items are copied out of the transaction by visit.
func collect(ws []*walker, lower []byte, limit int, visit func(main []byte) (json.RawMessage, error)) ([]json.RawMessage, string, error) {
	return collectBudget(ws, lower, limit, scanBudget, visit)
}

// collectBudget is collect with a scan budget of budget keys.
func collectBudget(ws []*walker, lower []byte, limit, budget int, visit func(main []byte) (json.RawMessage, error)) ([]json.RawMessage, string, error) {
	items := []json.RawMessage{}
	var last []byte
	for scanned := 0; ; scanned++ {
		var best []byte
		for _, w := range ws {
			if w.main != nil && bytes.Compare(w.main[:8], lower) < 0 {
				w.main = nil // older than since: done
			}
			if w.main != nil && (best == nil || bytes.Compare(w.main, best) > 0) {
				best = w.main
			}
		}
		if best == nil {
			return items, "", nil
		}
		if len(items) == limit || scanned == budget {
			return items, hex.EncodeToString(last), nil
		}
		last = append(last[:0:0], best...)
		for _, w := range ws {
			for w.main != nil && bytes.Equal(w.main, last) {
				w.next()
			}
		}
		item, err := visit(last)
		if err != nil {
			return nil, "", err
		}
		if item != nil {
			items = append(items, item)
		}
	}
}

// pageAnswer is the answer of GET /v1/audit and /v1/decisions.
type pageAnswer struct {
	Items []json.RawMessage `json:"items"`
	Next  string            `json:"next"`
}

// handleAudit is GET /v1/audit?tenant=&since=&until=&limit=&after=: the
// audit records the token may see, newest first.
func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	var lq logQuery
	if err == nil {
		lq, err = parseLogQuery(r.URL.Query(), auditKeyLen)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var ans pageAnswer
	err = s.db.View(func(tx *bolt.Tx) error {
		v, err := viewOf(tx, p)
		if err != nil {
			return err
		}
		tenants, err := v.pick(lq.tenant)
		if err != nil {
			return err
		}
		main := tx.Bucket(bucketAudit)
		ws := walkers(main, tx.Bucket(bucketAuditTenants), tenants, lq.upper())
		ans.Items, ans.Next, err = collect(ws, lq.lower(), lq.limit, func(k []byte) (json.RawMessage, error) {
			doc := main.Get(k)
			if doc == nil {
				return nil, nil // an index entry of a record being trimmed: never, as both go in one transaction
			}
			return append(json.RawMessage(nil), doc...), nil
		})
		return err
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ans)
}
