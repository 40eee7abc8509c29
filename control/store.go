package control

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// writeResult is a committed write.
type writeResult struct {
	revision uint64
	changes  []tenancy.Change
}

// write applies ops as one revision for p, and records the result in the
// metrics.
func (s *Server) write(p principal, ops []tenancy.Op) (writeResult, error) {
	start := time.Now()
	res, err := s.commit(p, ops)
	var (
		ae *apiError
		te *tenancy.Error
	)
	switch {
	case err == nil:
		s.metrics.writes.WithLabelValues(resultOK).Inc()
		s.metrics.writeDuration.Observe(time.Since(start).Seconds())
		s.logger.Debug("tenancy write committed", "revision", res.revision, "changes", len(res.changes), "user", p.user)
	case errors.As(err, &ae) && ae.status == http.StatusForbidden:
		s.metrics.writes.WithLabelValues(resultForbidden).Inc()
	case errors.As(err, &ae), errors.As(err, &te) && te.Status < 500:
		s.metrics.writes.WithLabelValues(resultRefused).Inc()
	default:
		s.metrics.writes.WithLabelValues(resultError).Inc()
	}
	return res, err
}

// The commit path (group commit). Writes wait in a queue; one of the
// writers, the leader, takes the queued writes (at most maxGroup, a
// delegated administrator's write only first, see applyDelegated) and
// applies them in order in one write transaction: each is validated on the
// state including the writes before it, and gets the next revision, its
// own history entry and hash. A write that is refused (or fails) is taken
// out: the transaction is rolled back and the others are applied again
// without it, so it never affects them. The store then commits the
// transaction (one fsync for the group) and every write of the group is
// acknowledged with its own revision. The leader then hands the lead to
// the first write still queued.

// maxGroup bounds the writes committed together.
const maxGroup = 128

// pending is a write in the commit queue. The leader owns it until it
// wakes it with done set.
type pending struct {
	p    principal
	ops  []tenancy.Op
	wake chan struct{} // buffered: the write is done, or it leads next
	done bool
	res  writeResult
	err  error
	// tries are the revisions an etcd store proposed for the write, with
	// their hashes: one of them may have committed although its
	// proposal's answer was lost.
	tries []proposal
}

// commitQueue is the queue of writes and its leadership.
type commitQueue struct {
	mu      sync.Mutex
	queue   []*pending
	leading bool
	// arrived is signalled when a write joins the queue while a leader
	// runs; last is the size of the last group and took its commit time.
	arrived chan struct{}
	last    int
	took    time.Duration
}

// maxGather bounds how long a leader waits for the writers of the last
// group to come back before it commits a smaller group.
const maxGather = 2 * time.Millisecond

// commit applies ops as one revision for p, in a group commit with the
// writes queued meanwhile, and returns once that revision committed (or
// the write was refused). Streams are woken after the commit.
func (s *Server) commit(p principal, ops []tenancy.Op) (writeResult, error) {
	w := &pending{p: p, ops: ops, wake: make(chan struct{}, 1)}
	q := &s.commits
	q.mu.Lock()
	q.queue = append(q.queue, w)
	lead := !q.leading
	q.leading = true
	if q.arrived == nil {
		q.arrived = make(chan struct{}, 1)
	}
	arrived := q.arrived
	q.mu.Unlock()
	if !lead {
		select {
		case arrived <- struct{}{}:
		default:
		}
	}
	if !lead {
		<-w.wake
	}
	if !w.done {
		s.lead()
	}
	return w.res, w.err
}

// lead commits one group from the head of the queue, then hands the lead
// to the next queued write (or gives it up when none is).
func (s *Server) lead() {
	q := &s.commits
	q.mu.Lock()
	q.gather()
	n := 1
	for n < len(q.queue) && n < maxGroup && q.queue[n].p.role != roleUser {
		n++
	}
	group := make([]*pending, n)
	copy(group, q.queue)
	q.queue = append(q.queue[:0:0], q.queue[n:]...)
	q.mu.Unlock()
	defer func() {
		v := recover()
		for _, w := range group {
			if !w.done && w.err == nil && w.res.revision == 0 {
				w.err = fmt.Errorf("commit: internal error: %v", v)
			}
			w.done = true
			w.wake <- struct{}{}
		}
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.leading = false
		} else {
			q.queue[0].wake <- struct{}{}
		}
		q.mu.Unlock()
		if v != nil {
			panic(v)
		}
	}()
	start := time.Now()
	s.store.commitGroup(group)
	took := time.Since(start)
	q.mu.Lock()
	q.last, q.took = n, took
	q.mu.Unlock()
}

// gather waits, with q.mu held, for the queue to hold as many writes as
// the last group did: the writers of the last group send their next write
// right after it committed, and without waiting one of them would commit
// alone while the others queue behind it. It waits at most half the last
// commit's time (and maxGather), so a single writer never waits.
func (q *commitQueue) gather() {
	if q.last < 2 || len(q.queue) >= q.last {
		return
	}
	timer := time.NewTimer(min(q.took/2, maxGather))
	defer timer.Stop()
	for len(q.queue) < q.last {
		q.mu.Unlock()
		select {
		case <-q.arrived:
			q.mu.Lock()
		case <-timer.C:
			q.mu.Lock()
			return
		}
	}
}

// stage applies the writes of group that have no result yet, in order, in
// one write transaction, and returns it open with the writes that passed
// and their records (nil when none did). A refused or failing write gets
// its error and the transaction is rolled back and the others applied
// again without it.
func (s *Server) stage(group []*pending) (*bolt.Tx, []*pending, []revisionRecord) {
	live := make([]*pending, 0, len(group))
	for _, w := range group {
		if w.err == nil && w.res.revision == 0 {
			live = append(live, w)
		}
	}
	for len(live) > 0 {
		tx, err := s.db.Begin(true)
		if err != nil {
			for _, w := range live {
				w.err = fmt.Errorf("begin write: %w", err)
			}
			return nil, nil, nil
		}
		recs := make([]revisionRecord, 0, len(live))
		failed := -1
		for i, w := range live {
			rec, err := s.applyWrite(tx, w.p, w.ops)
			if err != nil {
				w.err, failed = err, i
				break
			}
			recs = append(recs, rec)
		}
		if failed < 0 {
			return tx, live, recs
		}
		_ = tx.Rollback()
		live = append(live[:failed], live[failed+1:]...)
	}
	return nil, nil, nil
}

// applyWrite applies ops for p as the next revision in tx: tenancy's
// invariants and cascades, for a delegated administrator the check of the
// resulting change set, the history entry and its trimming. On error, tx
// holds part of the write: the caller rolls it back.
func (s *Server) applyWrite(tx *bolt.Tx, p principal, ops []tenancy.Op) (revisionRecord, error) {
	rev := tenancy.Revision(tx) + 1
	w, err := tenancy.NewWriter(tx, rev)
	if err != nil {
		return revisionRecord{}, err
	}
	w.KeepBefore() // for the audit records
	if p.role == roleUser {
		err = s.applyDelegated(w, p, ops)
	} else {
		err = tenancy.Apply(w, ops)
	}
	if err != nil {
		return revisionRecord{}, err
	}
	prev := tenancy.HeadHash(tx) // the history hash of rev-1
	if err := w.Finish(); err != nil {
		return revisionRecord{}, err
	}
	changes := w.Changes()
	hash := tenancy.HashRevision(prev, rev, changes)
	if err := tenancy.SetChainHash(tx, hash); err != nil {
		return revisionRecord{}, err
	}
	rec := revisionRecord{rev: rev, time: s.now().UTC(), changes: changes, prev: prev, hash: hash, actor: actorOf(p), request: requestOf(ops)}
	if err := appendLog(tx, rec, uint64(s.cfg.History), s.cfg.FeedPartBytes); err != nil {
		return revisionRecord{}, err
	}
	if rec.audited, rec.trimmed, err = appendAudit(tx, rec, w.Before(), s.cfg.Audit.Retention); err != nil {
		return revisionRecord{}, err
	}
	return rec, nil
}

// acknowledge records the committed revisions of group (recs[i] is
// live[i]'s) and wakes the streams.
func (s *Server) acknowledge(live []*pending, recs []revisionRecord) {
	for i, w := range live {
		w.res = writeResult{revision: recs[i].rev, changes: recs[i].changes}
		s.metrics.auditRecords.Add(float64(recs[i].audited))
		s.metrics.auditTrimmed.Add(float64(recs[i].trimmed))
	}
	if len(recs) > 0 {
		last := recs[len(recs)-1].rev
		s.setRevision(last)
		s.feed.publish(last)
	}
}

// applyDelegated applies ops for a delegated administrator: rights and the
// previous values come from a read transaction of the state the write
// starts from. Write transactions are serialized, and a delegated write is
// only ever the first of its group, so a read transaction begun while w's
// transaction is open sees exactly that state. It is closed
// before returning, that is before the commit: bbolt may need to re-map the
// file on commit, which waits for every read transaction.
func (s *Server) applyDelegated(w *tenancy.Writer, p principal, ops []tenancy.Op) error {
	snap, err := s.db.Begin(false)
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer func() { _ = snap.Rollback() }()
	r, err := loadRights(snap, p)
	if err != nil {
		return err
	}
	if err := r.precheck(snap, ops); err != nil {
		return err
	}
	if err := tenancy.Apply(w, ops); err != nil {
		return err
	}
	return r.postcheck(snap, ops, w.Changes())
}

// The change history (bucket "log"): each revision is stored as one or more
// parts of bounded size, keyed by the 8-byte big-endian revision and the
// 4-byte part number, each a JSON tenancy.LogEntry; the last part carries
// the revision's history hash, the first the hash it follows (Prev). A
// revision of any size is thus read, and streamed, one bounded part at a
// time. Files written before parts existed hold entries keyed by the
// revision alone (one whole revision, no hash); they are streamed as they
// are and expire with the history.

// revisionRecord is a committed revision about to be recorded.
type revisionRecord struct {
	rev     uint64
	time    time.Time
	changes []tenancy.Change
	prev    string
	hash    string
	// actor and request say who made the write and what it was (put,
	// delete or batch): with the changes, the revision's audit records.
	actor   Actor
	request string
	// audited and trimmed count the audit records written and dropped.
	audited, trimmed int
}

// historyEntry is a history part as stored: tenancy.LogEntry plus, on the
// first part, the hash the revision follows and who wrote it (the feed
// does not carry the latter to sidecars).
type historyEntry struct {
	tenancy.LogEntry
	Prev  string `json:"prev,omitempty"`
	Actor *Actor `json:"actor,omitempty"`
	Op    string `json:"op,omitempty"`
}

func partKey(rev uint64, part uint32) []byte {
	return binary.BigEndian.AppendUint32(u64(rev), part)
}

// parts splits changes into runs of about maxBytes of JSON (at least one
// change each; a revision without changes is one empty part).
func parts(changes []tenancy.Change, maxBytes int) [][]tenancy.Change {
	var out [][]tenancy.Change
	start, size := 0, 0
	for i, c := range changes {
		n := len(c.Value) + len(c.ID) + len(c.Collection) + 48
		if i > start && size+n > maxBytes {
			out = append(out, changes[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(out, changes[start:])
}

// appendLog records a revision in the change history, in parts of about
// partBytes, and drops the revisions beyond the last history ones.
func appendLog(tx *bolt.Tx, r revisionRecord, history uint64, partBytes int) error {
	docs, err := encodeLog(r, partBytes)
	if err != nil {
		return err
	}
	return putLog(tx, r.rev, docs, history)
}

// encodeLog encodes a revision as its history parts of about partBytes.
func encodeLog(r revisionRecord, partBytes int) ([][]byte, error) {
	ps := parts(r.changes, partBytes)
	docs := make([][]byte, 0, len(ps))
	for i, p := range ps {
		e := historyEntry{LogEntry: tenancy.LogEntry{Revision: r.rev, Time: r.time, Changes: p}}
		if i == 0 {
			e.Prev = r.prev
			if r.actor.Kind != "" {
				e.Actor, e.Op = &r.actor, r.request
			}
		}
		if i < len(ps)-1 {
			e.More = true
		} else {
			e.Hash = r.hash
		}
		doc, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("encode revision %d: %w", r.rev, err)
		}
		docs = append(docs, doc)
	}
	return docs, nil
}

// putLog stores the encoded parts of revision rev in the history and drops
// the revisions beyond the last history ones.
func putLog(tx *bolt.Tx, rev uint64, docs [][]byte, history uint64) error {
	b := tx.Bucket(bucketLog)
	for i, doc := range docs {
		if err := b.Put(partKey(rev, uint32(i)), doc); err != nil {
			return err
		}
	}
	if rev <= history {
		return nil
	}
	keep := rev - history + 1 // the oldest revision retained
	var drop [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) < keep; k, _ = c.Next() {
		drop = append(drop, append([]byte(nil), k...))
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// historyBounds returns, from one read transaction, the current revision
// and the oldest revision the history holds (current+1 when it holds none).
func historyBounds(tx *bolt.Tx) (current, oldest uint64) {
	current = tenancy.Revision(tx)
	if k, _ := tx.Bucket(bucketLog).Cursor().First(); k != nil {
		return current, binary.BigEndian.Uint64(k)
	}
	return current, current + 1
}

// hashAt returns the history hash at revision rev: the file's for the
// current revision, else the hash the first part of rev+1 follows. ok is
// false when the history does not know it (rev+1 expired, or recorded
// before hashing began).
func hashAt(tx *bolt.Tx, rev uint64) (hash string, ok bool) {
	if rev == tenancy.Revision(tx) {
		return tenancy.HeadHash(tx), true
	}
	k, v := tx.Bucket(bucketLog).Cursor().Seek(u64(rev + 1))
	if len(k) != 12 || binary.BigEndian.Uint64(k) != rev+1 || binary.BigEndian.Uint32(k[8:]) != 0 {
		return "", false
	}
	var e struct {
		Prev string `json:"prev"`
	}
	if err := json.Unmarshal(v, &e); err != nil || e.Prev == "" {
		return "", false
	}
	return e.Prev, true
}

// historyPart is one record read from the history.
type historyPart struct {
	part   uint32
	legacy bool // a whole revision recorded before parts existed
	entry  tenancy.LogEntry
}

// readLog returns the history records from key `from` on, in order, about
// maxBytes of them (at least one when any), copied out of the transaction,
// and the key following the last one returned.
func (s *Server) readLog(from []byte, maxBytes int) ([]historyPart, []byte, error) {
	var out []historyPart
	var next []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLog).Cursor()
		size := 0
		k, v := c.Seek(from)
		for ; k != nil && (len(out) == 0 || size+len(v) <= maxBytes); k, v = c.Next() {
			p := historyPart{legacy: len(k) == 8}
			if !p.legacy {
				p.part = binary.BigEndian.Uint32(k[8:])
			}
			if err := json.Unmarshal(v, &p.entry); err != nil { // copies v
				return fmt.Errorf("decode history revision %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, p)
			size += len(v)
		}
		if k != nil {
			next = append([]byte(nil), k...)
		}
		return nil
	})
	return out, next, err
}

// setRevision records a committed revision; commits may get here out of
// order, so it only grows.
func (s *Server) setRevision(rev uint64) {
	for {
		old := s.rev.Load()
		if rev <= old || s.rev.CompareAndSwap(old, rev) {
			return
		}
	}
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// notifier wakes change streams on commit: waiters take the channel, and
// publish closes it and installs a new one.
type notifier struct {
	mu  sync.Mutex
	rev uint64
	ch  chan struct{}
}

func newNotifier(rev uint64) *notifier {
	return &notifier{rev: rev, ch: make(chan struct{})}
}

// state returns the last published revision and a channel closed at the
// next publish.
func (n *notifier) state() (uint64, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rev, n.ch
}

// publish records a committed revision and wakes every waiter. Commits
// may publish out of order (the lock is released inside Commit), so the
// revision only grows.
func (n *notifier) publish(rev uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.rev = max(n.rev, rev)
	close(n.ch)
	n.ch = make(chan struct{})
}

// proposal is a revision an etcd store proposed for a write.
type proposal struct {
	rev  uint64
	hash string
}
