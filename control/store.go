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

// commit runs one bbolt write transaction: the next revision, the ops with
// tenancy's invariants and cascades, for a delegated administrator the
// check of the resulting change set, the history entry and its trimming.
// Any error rolls everything back. Streams are woken after the commit.
func (s *Server) commit(p principal, ops []tenancy.Op) (writeResult, error) {
	tx, err := s.db.Begin(true)
	if err != nil {
		return writeResult{}, fmt.Errorf("begin write: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	rev := tenancy.Revision(tx) + 1
	w, err := tenancy.NewWriter(tx, rev)
	if err != nil {
		return writeResult{}, err
	}
	if p.role == roleUser {
		err = s.applyDelegated(w, p, ops)
	} else {
		err = tenancy.Apply(w, ops)
	}
	if err != nil {
		return writeResult{}, err
	}
	if err := w.Finish(); err != nil {
		return writeResult{}, err
	}
	changes := w.Changes()
	if err := appendLog(tx, tenancy.LogEntry{Revision: rev, Time: s.now().UTC(), Changes: changes}, uint64(s.cfg.History)); err != nil {
		return writeResult{}, err
	}
	if err := tx.Commit(); err != nil {
		return writeResult{}, fmt.Errorf("commit revision %d: %w", rev, err)
	}
	s.setRevision(rev)
	s.feed.publish(rev)
	return writeResult{revision: rev, changes: changes}, nil
}

// applyDelegated applies ops for a delegated administrator: rights and the
// previous values come from a read transaction of the state the write
// starts from. Write transactions are serialized, so a read transaction
// begun while w's transaction is open sees exactly that state. It is closed
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

// appendLog records entry in the change history and drops the revisions
// beyond the last history ones.
func appendLog(tx *bolt.Tx, entry tenancy.LogEntry, history uint64) error {
	b := tx.Bucket(bucketLog)
	doc, err := json.Marshal(entry)
	if err != nil {
		return fmt.Errorf("encode revision %d: %w", entry.Revision, err)
	}
	if err := b.Put(u64(entry.Revision), doc); err != nil {
		return err
	}
	if entry.Revision <= history {
		return nil
	}
	keep := entry.Revision - history + 1 // the oldest revision retained
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

// readLog returns the history entries after revision `after`, in order, at
// most max of them and about maxBytes, copied out of the transaction.
func (s *Server) readLog(after uint64, max, maxBytes int) ([]tenancy.LogEntry, error) {
	var out []tenancy.LogEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLog).Cursor()
		size := 0
		for k, v := c.Seek(u64(after + 1)); k != nil && len(out) < max && size < maxBytes; k, v = c.Next() {
			var e tenancy.LogEntry
			if err := json.Unmarshal(v, &e); err != nil { // copies v
				return fmt.Errorf("decode history revision %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, e)
			size += len(v)
		}
		return nil
	})
	return out, err
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
