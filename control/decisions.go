package control

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// The decision store (SPEC §9): sidecars upload their decision logs with
// OPA's decision-log protocol (POST /v1/logs, a JSON array, gzip'd or
// not); each record is kept as received, bounded in bytes.
//
// Buckets: "decisions" maps ts ‖ seq (8+8 bytes; ts the record's timestamp
// in Unix nanoseconds, seq a counter) to the record's JSON;
// "decisions_tenants" indexes it by gatehouse.tenant (tenant ‖ 0 ‖ key →
// empty); "decisions_ids" maps decision_id → key, so that a batch the
// sidecar sends again (its upload was cut after the commit) stores nothing
// twice; "decisions_meta" holds the counter and the bytes stored; "usage"
// counts decisions per tenant and hour (tenant ‖ 0 ‖ hour → allowed ‖
// denied, 8 bytes each). When the store exceeds decisions.max_mb, the
// oldest records go first (counted in
// gatehouse_control_decisions_dropped_total{reason="evicted"}); usage
// counters stay (they are kept for audit.retention).
var (
	bucketDecisions        = []byte("decisions")
	bucketDecisionsTenants = []byte("decisions_tenants")
	bucketDecisionsIDs     = []byte("decisions_ids")
	bucketDecisionsMeta    = []byte("decisions_meta")
	bucketUsage            = []byte("usage")

	metaDecisionBytes = []byte("bytes")
	metaDecisionSeq   = []byte("seq")
)

const (
	// DefaultDecisionsMaxMB is DecisionsConfig.MaxMB's default.
	DefaultDecisionsMaxMB = 256
	// decisionKeyLen is the length of a decision key.
	decisionKeyLen = 16
	// maxDecisionIDBytes bounds a decision_id.
	maxDecisionIDBytes = 256
	// maxUsageItems bounds one usage answer.
	maxUsageItems = 10000
	// usageTrimEvery is how often intake removes expired usage counters.
	usageTrimEvery = time.Hour
	// maxClockSkew is how far ahead of the control endpoint's clock a
	// record's timestamp may be; a later one is filed at the receipt time.
	maxClockSkew = 5 * time.Minute
)

// Why records are dropped: the label of
// gatehouse_control_decisions_dropped_total.
const (
	dropEvicted  = "evicted"   // the oldest, for decisions.max_mb
	dropInvalid  = "invalid"   // not an object, no decision_id, a field of the wrong type
	dropTooLarge = "too_large" // one record over max_entity_bytes
)

// DecisionsConfig configures the decision store (`decisions:` in the
// control config).
type DecisionsConfig struct {
	// MaxMB bounds the decision records kept, in MiB (records, keys and
	// indexes); beyond it the oldest are removed. Default 256.
	MaxMB int `yaml:"max_mb"`
}

// decisionMeta is what the store reads of a record.
type decisionMeta struct {
	DecisionID string `json:"decision_id"`
	Timestamp  string `json:"timestamp"`
	Gatehouse  struct {
		Tenant  string `json:"tenant"`
		Subject string `json:"subject"`
		Allowed *bool  `json:"allowed"`
	} `json:"gatehouse"`
}

// tenant is the record's tenant when it is a valid id ("" otherwise: the
// record is seen by the admin token only).
func (m *decisionMeta) tenant() string {
	if tenancy.ValidID(m.Gatehouse.Tenant) {
		return m.Gatehouse.Tenant
	}
	return ""
}

// allowed reports the outcome; a record without one counts as denied.
func (m *decisionMeta) allowed() bool { return m.Gatehouse.Allowed != nil && *m.Gatehouse.Allowed }

// entrySize is what a record costs the store: its JSON, its key and the
// index entries.
func entrySize(doc []byte, m *decisionMeta) uint64 {
	return uint64(len(doc) + 3*decisionKeyLen + len(m.tenant()) + 1 + len(m.DecisionID))
}

// intakeAnswer is the answer of POST /v1/logs.
type intakeAnswer struct {
	// Stored records are new; Duplicates were stored before (same
	// decision_id); Dropped were invalid or too large; Evicted are older
	// records removed to make room.
	Stored     int `json:"stored"`
	Duplicates int `json:"duplicates"`
	Dropped    int `json:"dropped"`
	Evicted    int `json:"evicted"`
}

// handleLogs is POST /v1/logs (sync or admin token): a JSON array of
// decision-log records, gzip'd (Content-Encoding: gzip, or a gzip body) or
// plain, of at most max_body_bytes either way. Records are stored in one
// transaction; records that cannot be stored are counted, never silently
// lost.
func (s *Server) handleLogs(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err == nil {
		err = requireReader(p, "uploading decision logs")
	}
	body, release, err := s.readBody(err, w, r, s.bodyLimit())
	defer release()
	if err == nil {
		body, err = s.gunzip(r, body)
	}
	var records []json.RawMessage
	if err == nil {
		if err = json.Unmarshal(body, &records); err != nil || records == nil {
			err = badRequest("logs: the body is not a JSON array of decision-log records")
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ans, err := s.storeDecisions(records)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

// gunzip decompresses a gzip'd body (Content-Encoding: gzip, or the gzip
// magic), at most max_body_bytes.
func (s *Server) gunzip(r *http.Request, body []byte) ([]byte, error) {
	if r.Header.Get("Content-Encoding") != "gzip" && !bytes.HasPrefix(body, gzipMagic) {
		return body, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, badRequest("logs: the body is not gzip: %v", err)
	}
	out, err := io.ReadAll(io.LimitReader(zr, s.cfg.MaxBodyBytes+1))
	if err != nil {
		return nil, badRequest("logs: gunzip: %v", err)
	}
	if int64(len(out)) > s.cfg.MaxBodyBytes {
		return nil, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "logs: the decompressed body exceeds max_body_bytes (%d)", s.cfg.MaxBodyBytes)
	}
	return out, nil
}

// storeDecisions stores records in one transaction, evicting the oldest
// beyond decisions.max_mb, and counts what happened.
func (s *Server) storeDecisions(records []json.RawMessage) (intakeAnswer, error) {
	var ans intakeAnswer
	now := s.now()
	limit := uint64(s.cfg.Decisions.MaxMB) << 20
	trimUsageNow := false
	if last := s.usageTrimmed.Load(); now.Sub(time.Unix(0, last)) >= usageTrimEvery {
		trimUsageNow = s.usageTrimmed.CompareAndSwap(last, now.UnixNano())
	}
	// parsed before the write transaction, which other writes wait for
	type parsed struct {
		doc []byte
		m   decisionMeta
		ts  time.Time
	}
	reasons := map[string]int{}
	valid := make([]parsed, 0, len(records))
	for _, raw := range records {
		var p parsed
		doc, reason := s.parseDecision(raw, &p.m)
		if reason != "" {
			reasons[reason]++
			ans.Dropped++
			continue
		}
		p.doc, p.ts = doc, now
		if t, err := time.Parse(time.RFC3339Nano, p.m.Timestamp); err == nil && !t.After(now.Add(maxClockSkew)) {
			p.ts = t // else filed at the receipt time: a clock far ahead would keep its records from ever being the oldest
		}
		valid = append(valid, p)
	}
	dropped := ans.Dropped
	var stored uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		ans = intakeAnswer{Dropped: dropped}
		main, idx, ids := tx.Bucket(bucketDecisions), tx.Bucket(bucketDecisionsTenants), tx.Bucket(bucketDecisionsIDs)
		meta, usage := tx.Bucket(bucketDecisionsMeta), tx.Bucket(bucketUsage)
		size, seq := getU64(meta, metaDecisionBytes), getU64(meta, metaDecisionSeq)
		for i := range valid {
			doc, m, ts := valid[i].doc, &valid[i].m, valid[i].ts
			if ids.Get([]byte(m.DecisionID)) != nil {
				ans.Duplicates++
				continue
			}
			seq++
			k := binary.BigEndian.AppendUint64(tsKey(ts), seq)
			if err := main.Put(k, doc); err != nil {
				return err
			}
			if err := ids.Put([]byte(m.DecisionID), k); err != nil {
				return err
			}
			if t := m.tenant(); t != "" {
				if err := idx.Put(tenantKey(t, k), nil); err != nil {
					return err
				}
			}
			if err := countUsage(usage, m.tenant(), ts, m.allowed()); err != nil {
				return err
			}
			size += entrySize(doc, m)
			ans.Stored++
		}
		evicted, size, err := evictDecisions(tx, size, limit)
		if err != nil {
			return err
		}
		ans.Evicted = evicted
		if trimUsageNow {
			if err := trimUsage(usage, now.Add(-s.cfg.Audit.Retention)); err != nil {
				return err
			}
		}
		stored = size
		if err := meta.Put(metaDecisionBytes, u64(size)); err != nil {
			return err
		}
		return meta.Put(metaDecisionSeq, u64(seq))
	})
	if err != nil {
		return intakeAnswer{}, fmt.Errorf("store decisions: %w", err)
	}
	s.metrics.decisionBytes.Set(float64(stored))
	s.metrics.decisionsReceived.WithLabelValues("stored").Add(float64(ans.Stored))
	s.metrics.decisionsReceived.WithLabelValues("duplicate").Add(float64(ans.Duplicates))
	s.metrics.decisionsDropped.WithLabelValues(dropEvicted).Add(float64(ans.Evicted))
	for reason, n := range reasons {
		s.metrics.decisionsDropped.WithLabelValues(reason).Add(float64(n))
	}
	if ans.Dropped > 0 {
		s.logger.Warn("decision records dropped at intake", "dropped", ans.Dropped, "reasons", fmt.Sprint(reasons))
	}
	return ans, nil
}

// parseDecision checks one record and returns it compacted, or why it is
// dropped.
func (s *Server) parseDecision(raw json.RawMessage, m *decisionMeta) ([]byte, string) {
	if int64(len(raw)) > s.cfg.MaxEntityBytes {
		return nil, dropTooLarge
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, dropInvalid
	}
	if err := json.Unmarshal(raw, m); err != nil {
		return nil, dropInvalid
	}
	if m.DecisionID == "" || len(m.DecisionID) > maxDecisionIDBytes {
		return nil, dropInvalid
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, dropInvalid
	}
	return buf.Bytes(), ""
}

// evictDecisions removes the oldest records while the store holds more
// than limit bytes; it returns how many and the new size.
func evictDecisions(tx *bolt.Tx, size, limit uint64) (int, uint64, error) {
	if size <= limit {
		return 0, size, nil
	}
	main, idx, ids := tx.Bucket(bucketDecisions), tx.Bucket(bucketDecisionsTenants), tx.Bucket(bucketDecisionsIDs)
	var drop [][]byte
	c := main.Cursor()
	for k, v := c.First(); k != nil && size > limit; k, v = c.Next() {
		var m decisionMeta
		_ = json.Unmarshal(v, &m) // stored records parsed at intake
		if m.DecisionID != "" {
			if err := ids.Delete([]byte(m.DecisionID)); err != nil {
				return 0, 0, err
			}
		}
		if t := m.tenant(); t != "" {
			if err := idx.Delete(tenantKey(t, k)); err != nil {
				return 0, 0, err
			}
		}
		size -= min(size, entrySize(v, &m))
		drop = append(drop, append([]byte(nil), k...))
	}
	for _, k := range drop {
		if err := main.Delete(k); err != nil {
			return 0, 0, err
		}
	}
	if main.Stats().KeyN == len(drop) { // empty: no rounding left behind
		size = 0
	}
	return len(drop), size, nil
}

func getU64(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// usageKey is tenant ‖ 0 ‖ the hour's Unix seconds.
func usageKey(tenant string, hour time.Time) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(tenant), 0), uint64(max(hour.Unix(), 0)))
}

// countUsage adds one decision to its tenant's hour.
func countUsage(b *bolt.Bucket, tenant string, ts time.Time, allowed bool) error {
	k := usageKey(tenant, ts.Truncate(time.Hour))
	var n [16]byte
	copy(n[:], b.Get(k))
	i := 8
	if allowed {
		i = 0
	}
	binary.BigEndian.PutUint64(n[i:], binary.BigEndian.Uint64(n[i:])+1)
	return b.Put(k, n[:])
}

// trimUsage removes the hours before cutoff, tenant by tenant (seeking
// from one tenant's counters to the next: no scan of the kept ones).
func trimUsage(b *bolt.Bucket, cutoff time.Time) error {
	c := b.Cursor()
	var drop [][]byte
	for k, _ := c.First(); k != nil; {
		if len(k) < 9 { // not a usage key
			k, _ = c.Next()
			continue
		}
		tenant := k[:len(k)-9]
		limit := usageKey(string(tenant), cutoff)
		for ; k != nil && bytes.Compare(k, limit) < 0; k, _ = c.Next() {
			drop = append(drop, append([]byte(nil), k...))
		}
		k, _ = c.Seek(append(append([]byte(nil), tenant...), 1)) // the next tenant
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// handleDecisions is GET
// /v1/decisions?tenant=&since=&until=&allowed=&subject=&limit=&after=:
// the stored decision records the token may see, newest first.
func (s *Server) handleDecisions(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	var lq logQuery
	if err == nil {
		lq, err = parseLogQuery(r.URL.Query(), decisionKeyLen)
	}
	var allowed *bool
	q := r.URL.Query()
	if v := q.Get("allowed"); err == nil && v != "" {
		b, perr := strconv.ParseBool(v)
		if perr != nil {
			err = badRequest("allowed=%q is not true or false", v)
		}
		allowed = &b
	}
	subject := q.Get("subject")
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
		main := tx.Bucket(bucketDecisions)
		ws := walkers(main, tx.Bucket(bucketDecisionsTenants), tenants, lq.upper())
		ans.Items, ans.Next, err = collect(ws, lq.lower(), lq.limit, func(k []byte) (json.RawMessage, error) {
			doc := main.Get(k)
			if doc == nil {
				return nil, nil
			}
			if allowed != nil || subject != "" {
				var m decisionMeta
				if err := json.Unmarshal(doc, &m); err != nil {
					return nil, nil
				}
				if allowed != nil && m.allowed() != *allowed || subject != "" && m.Gatehouse.Subject != subject {
					return nil, nil
				}
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

// UsageItem is one tenant's decisions in one hour.
type UsageItem struct {
	Tenant  string    `json:"tenant"`
	Hour    time.Time `json:"hour"`
	Allowed uint64    `json:"allowed"`
	Denied  uint64    `json:"denied"`
}

// usageAnswer is the answer of GET /v1/usage.
type usageAnswer struct {
	From  time.Time   `json:"from"`
	To    time.Time   `json:"to"`
	Items []UsageItem `json:"items"`
	// Truncated is true when more than maxUsageItems matched: narrow the
	// range or name a tenant.
	Truncated bool `json:"truncated"`
}

// handleUsage is GET /v1/usage?tenant=&from=&to=: decisions allowed and
// denied per tenant and hour, for the hours starting in [from, to)
// (default: the last 24 hours), ordered by tenant and hour.
func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	q := r.URL.Query()
	tenant := q.Get("tenant")
	if err == nil && tenant != "" && !tenancy.ValidID(tenant) {
		err = badRequest("tenant=%q is not a valid tenant id", tenant)
	}
	var from, to time.Time
	if err == nil {
		from, err = queryTime(q, "from")
	}
	if err == nil {
		to, err = queryTime(q, "to")
	}
	if err == nil {
		if to.IsZero() {
			to = s.now().UTC()
		}
		if from.IsZero() {
			from = to.Add(-24 * time.Hour)
		}
		from = from.UTC().Truncate(time.Hour)
		if !from.Before(to) {
			err = badRequest("from (%s) must be before to (%s)", from.Format(time.RFC3339), to.Format(time.RFC3339))
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ans := usageAnswer{From: from, To: to.UTC(), Items: []UsageItem{}}
	err = s.db.View(func(tx *bolt.Tx) error {
		v, err := viewOf(tx, p)
		if err != nil {
			return err
		}
		tenants, err := v.pick(tenant)
		if err != nil {
			return err
		}
		c := tx.Bucket(bucketUsage).Cursor()
		read := func(t string) bool { // false when the answer is full
			lo, hi := usageKey(t, from), usageKey(t, to)
			for k, val := c.Seek(lo); k != nil && bytes.Compare(k, hi) < 0; k, val = c.Next() {
				if len(k) != len(t)+9 || len(val) != 16 {
					continue
				}
				if len(ans.Items) == maxUsageItems {
					ans.Truncated = true
					return false
				}
				ans.Items = append(ans.Items, UsageItem{
					Tenant:  t,
					Hour:    time.Unix(int64(binary.BigEndian.Uint64(k[len(t)+1:])), 0).UTC(),
					Allowed: binary.BigEndian.Uint64(val[:8]),
					Denied:  binary.BigEndian.Uint64(val[8:]),
				})
			}
			return true
		}
		if tenants != nil {
			for _, t := range tenants {
				if !read(t) {
					break
				}
			}
			return nil
		}
		// every tenant: seek from one tenant's counters to the next
		for k, _ := c.First(); k != nil; {
			if len(k) < 9 { // not a usage key
				k, _ = c.Next()
				continue
			}
			t := string(k[:len(k)-9])
			if !read(t) {
				break
			}
			k, _ = c.Seek(append([]byte(t), 1))
		}
		return nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	slices.SortStableFunc(ans.Items, func(a, b UsageItem) int {
		if a.Tenant != b.Tenant {
			if a.Tenant < b.Tenant {
				return -1
			}
			return 1
		}
		return a.Hour.Compare(b.Hour)
	})
	writeJSON(w, http.StatusOK, ans)
}
