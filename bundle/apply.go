package bundle

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

var (
	// ErrGap is returned when a revision does not follow the cache's
	// revision, or a revision's parts are interrupted by another revision.
	ErrGap = errors.New("revision gap")
	// ErrDiverged is returned when the history hash a revision (or a
	// snapshot) declares is not the one computed from the cache's history
	// and the changes received: the feed is another history than the one
	// the cache holds (a control endpoint restored from a backup, or
	// replaced). The cache must be rebuilt from a snapshot.
	ErrDiverged = errors.New("history diverged")
)

// Applier applies revisions of the change feed to the cache, all in one
// bbolt write transaction, as their parts arrive: nothing is visible until
// Commit, which records the last revision and its history hash; Abort (or
// a revision left incomplete) leaves the cache as it was. Each revision's
// history hash is computed over the changes applied and checked against
// the one the feed declares. An Applier holds the store's writer lock
// until Commit or Abort; it is not safe for concurrent use.
type Applier struct {
	s    *Store
	file *cacheFile
	tx   *bolt.Tx
	rev  uint64 // the last revision applied whole
	hash string // its history hash
	n    int    // revisions applied whole

	open    *tenancy.RevisionHash // the revision being applied; nil between revisions
	openRev uint64
}

// BeginApply starts applying revisions on top of the cache.
func (s *Store) BeginApply() (*Applier, error) {
	s.mu.Lock()
	f := s.file.Load()
	tx, err := f.db.Begin(true)
	if err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("begin apply: %w", err)
	}
	return &Applier{s: s, file: f, tx: tx, rev: tenancy.Revision(tx), hash: tenancy.HeadHash(tx)}, nil
}

// Revision is the last revision applied whole (the cache's revision when
// none was).
func (a *Applier) Revision() uint64 { return a.rev }

// Applied is the number of revisions applied whole.
func (a *Applier) Applied() int { return a.n }

// Partial reports whether a revision has parts applied and more to come.
func (a *Applier) Partial() bool { return a.open != nil }

// Add applies one revision line (a revision, or one part of it) and
// reports whether it completed its revision. A line that carries a hash is
// checked against the computed one (ErrDiverged). Damage found in the
// cache while applying marks it corrupt. After an error the Applier must
// be aborted.
func (a *Applier) Add(l tenancy.FeedLine) (complete bool, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil { // bbolt panics on damaged pages
			err = fmt.Errorf("%w: applying revision %d: %v", tenancy.ErrDamaged, l.Revision, r)
		}
		if errors.Is(err, tenancy.ErrDamaged) {
			a.s.markCorrupt(a.file, err)
		}
	}()
	if a.open == nil {
		if err := follows(a.rev, l.Revision); err != nil {
			return false, err
		}
		a.open, a.openRev = tenancy.NewRevisionHash(a.hash, l.Revision), l.Revision
	} else if l.Revision != a.openRev {
		return false, fmt.Errorf("%w: revision %d was cut: revision %d follows its parts", ErrGap, a.openRev, l.Revision)
	}
	if err := applyChanges(a.tx, l, a.open); err != nil {
		return false, err
	}
	if l.More {
		return false, nil
	}
	sum := a.open.Sum()
	if l.Hash != "" && l.Hash != sum {
		return false, fmt.Errorf("%w: revision %d declares history hash %.12s, its changes on top of the cache's history give %.12s", ErrDiverged, l.Revision, l.Hash, sum)
	}
	a.rev, a.hash, a.open = l.Revision, sum, nil
	a.n++
	return true, nil
}

// follows checks that revision next follows cur: cur+1, without wrapping
// around after the largest revision (a revision never goes back).
func follows(cur, next uint64) error {
	if cur == math.MaxUint64 || next != cur+1 {
		return fmt.Errorf("%w: at revision %d, received revision %d", ErrGap, cur, next)
	}
	return nil
}

// applyChanges applies the changes of a revision line in tx, adding them
// to the revision's hash.
func applyChanges(tx *bolt.Tx, l tenancy.FeedLine, h *tenancy.RevisionHash) error {
	w, err := tenancy.NewWriter(tx, l.Revision) // one per line: it records a line's changes only
	if err != nil {
		return err
	}
	for i, c := range l.Changes {
		if err := w.ApplyChange(c); err != nil {
			return fmt.Errorf("revision %d change %d (%s %s/%s): %w", l.Revision, i, c.Op, c.Collection, c.ID, err)
		}
		h.Add(c)
	}
	return nil
}

// Commit makes the revisions applied whole durable and visible, with the
// last one's revision, history hash and the sync time. A revision left
// incomplete fails the commit (and nothing is applied).
func (a *Applier) Commit(syncedAt time.Time) error {
	if a.tx == nil {
		return errors.New("apply: already committed or aborted")
	}
	if a.open != nil {
		rev := a.openRev
		a.Abort()
		return fmt.Errorf("%w: revision %d incomplete (more parts were announced)", ErrGap, rev)
	}
	if a.n == 0 {
		a.Abort()
		return nil
	}
	err := tenancy.SetRevision(a.tx, a.rev)
	if err == nil {
		err = tenancy.SetChainHash(a.tx, a.hash)
	}
	if err == nil {
		err = tenancy.SetSyncedAt(a.tx, syncedAt)
	}
	if err != nil {
		a.Abort()
		return err
	}
	err = a.tx.Commit()
	a.tx = nil
	a.s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("commit revision %d: %w", a.rev, err)
	}
	a.s.publish(authz.TenancyState{Present: true, Revision: a.rev, SyncedAt: syncedAt})
	return nil
}

// Abort discards everything applied; it is a no-op after Commit.
func (a *Applier) Abort() {
	if a.tx == nil {
		return
	}
	_ = a.tx.Rollback()
	a.tx = nil
	a.s.mu.Unlock()
}

// ApplyRevisions applies consecutive revisions of the change feed (whole
// revisions, or all the parts of each) in one bbolt transaction, with the
// revision: all of them or none. Lines carrying a history hash are checked
// against it.
func (s *Store) ApplyRevisions(lines []tenancy.FeedLine, syncedAt time.Time) error {
	if len(lines) == 0 {
		return nil
	}
	a, err := s.BeginApply()
	if err != nil {
		return err
	}
	for _, l := range lines {
		if _, err := a.Add(l); err != nil {
			a.Abort()
			return err
		}
	}
	return a.Commit(syncedAt)
}

// persistSyncedAt records the last time the data was known current, so a
// restarted sidecar judges staleness from it.
func (s *Store) persistSyncedAt(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db().Update(func(tx *bolt.Tx) error {
		return tenancy.SetSyncedAt(tx, t)
	})
}

// snapshotChunk is how many entities or changes go into one transaction
// while a snapshot file is built: bounded memory (a transaction holds its
// dirty pages) whatever the data size.
const snapshotChunk = 2000

// snapshotResidentBudget: above this much resident file-backed memory, the
// snapshot file's mapped pages are dropped after a transaction.
const snapshotResidentBudget = 64 << 20

// SnapshotBuilder writes a snapshot into a new file: its entities, then
// the revisions committed while they were read, each checked against the
// history hash chain from the snapshot's start. Nothing is visible until
// Commit swaps the file in; Abort discards it.
type SnapshotBuilder struct {
	s     *Store
	path  string
	db    *bolt.DB
	tx    *bolt.Tx
	w     *tenancy.Writer
	rev   uint64 // the snapshot's revision so far: its start, then the last revision replayed whole
	hash  string // the history hash at rev
	epoch string
	n     uint64 // entities
	ops   int    // entities and changes in the open transaction

	open     *tenancy.RevisionHash // a revision being replayed
	openRev  uint64
	replayed bool // revisions came: no more entities
}

// BeginSnapshot starts a new cache file for a snapshot starting at rev of
// the history epoch, whose history hash at rev is hash.
func (s *Store) BeginSnapshot(rev uint64, epoch, hash string) (*SnapshotBuilder, error) {
	path := s.path + ".snapshot"
	_ = os.Remove(path)
	// NoSync while building (Commit syncs once); the freelist IS written, so
	// that opening the file later does not walk every page to rebuild it.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("snapshot file: %w", err)
	}
	b := &SnapshotBuilder{s: s, path: path, db: db, rev: rev, epoch: epoch, hash: hash}
	if err := db.Update(tenancy.Init); err != nil {
		b.Abort()
		return nil, err
	}
	return b, nil
}

func (b *SnapshotBuilder) begin() error {
	if b.tx != nil {
		return nil
	}
	tx, err := b.db.Begin(true)
	if err != nil {
		return err
	}
	w, err := tenancy.NewWriter(tx, b.rev)
	if err != nil {
		_ = tx.Rollback()
		return err
	}
	b.tx, b.w = tx, w
	return nil
}

// Put adds one entity line.
func (b *SnapshotBuilder) Put(l tenancy.FeedLine) error {
	if b.replayed {
		return fmt.Errorf("snapshot entity %s/%s after its revisions", l.Collection, l.ID)
	}
	if err := b.begin(); err != nil {
		return err
	}
	if err := b.w.PutStored(l.Collection, l.ID, l.ModRevision, l.Value); err != nil {
		return fmt.Errorf("snapshot entity %s/%s: %w", l.Collection, l.ID, err)
	}
	b.n++
	return b.spent(1)
}

// Revision replays one revision line committed while the entities were
// read (puts and deletes: idempotent over entities read after it).
func (b *SnapshotBuilder) Revision(l tenancy.FeedLine) error {
	if b.open == nil {
		if err := follows(b.rev, l.Revision); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		b.open, b.openRev = tenancy.NewRevisionHash(b.hash, l.Revision), l.Revision
		b.replayed = true
	} else if l.Revision != b.openRev {
		return fmt.Errorf("%w: revision %d was cut: revision %d follows its parts", ErrGap, b.openRev, l.Revision)
	}
	if err := b.begin(); err != nil {
		return err
	}
	if err := applyChanges(b.tx, l, b.open); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if !l.More {
		sum := b.open.Sum()
		if l.Hash != "" && l.Hash != sum {
			return fmt.Errorf("%w: snapshot revision %d declares history hash %.12s, computed %.12s", ErrDiverged, l.Revision, l.Hash, sum)
		}
		b.rev, b.hash, b.open = l.Revision, sum, nil
	}
	return b.spent(len(l.Changes))
}

// spent counts work in the open transaction and commits it when large.
func (b *SnapshotBuilder) spent(n int) error {
	b.ops += n
	if b.ops >= snapshotChunk {
		return b.flush()
	}
	return nil
}

// Count is the number of entities put so far.
func (b *SnapshotBuilder) Count() uint64 { return b.n }

// End returns the revision the snapshot is at and its history hash: the
// start, or the last revision replayed whole.
func (b *SnapshotBuilder) End() (uint64, string) { return b.rev, b.hash }

func (b *SnapshotBuilder) flush() error {
	b.ops = 0
	if b.tx == nil {
		return nil
	}
	err := b.tx.Commit()
	b.tx, b.w = nil, nil
	if err == nil && residentFileBytes() > snapshotResidentBudget {
		// building reads the new file's pages through its memory map: keep
		// them out of the resident set, whatever the snapshot's size
		err = b.db.View(func(tx *bolt.Tx) error { return dropPages(b.db.Info().Data, tx.Size()) })
	}
	return err
}

// Abort discards the snapshot file.
func (b *SnapshotBuilder) Abort() {
	if b.tx != nil {
		_ = b.tx.Rollback()
		b.tx = nil
	}
	_ = b.db.Close()
	_ = os.Remove(b.path)
}

// Commit records revision, epoch, history hash and sync time, makes the
// file durable, swaps it in for the current cache and closes the old one
// once its readers are done. A revision left incomplete fails it.
func (b *SnapshotBuilder) Commit(syncedAt time.Time) error {
	if b.open != nil {
		b.Abort()
		return fmt.Errorf("%w: snapshot revision %d incomplete", ErrGap, b.openRev)
	}
	if err := b.flush(); err != nil {
		b.Abort()
		return err
	}
	err := b.db.Update(func(tx *bolt.Tx) error {
		if err := tenancy.SetRevision(tx, b.rev); err != nil {
			return err
		}
		if err := tenancy.SetEpoch(tx, b.epoch); err != nil {
			return err
		}
		if err := tenancy.SetChainHash(tx, b.hash); err != nil {
			return err
		}
		return tenancy.SetSyncedAt(tx, syncedAt)
	})
	if err == nil {
		err = b.db.Sync()
	}
	if cerr := b.db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(b.path)
		return fmt.Errorf("snapshot file: %w", err)
	}
	return b.s.swap(b.path)
}

// swap renames a complete file over the cache and reopens it as a new
// generation: decisions cached from the previous file are never served
// from this one, whatever its revision.
func (s *Store) swap(src string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer debug.FreeOSMemory() // a snapshot is a one-off burst of garbage: hand it back now
	if s.Corrupt() {
		// keep the damaged file for analysis (it stays open for the
		// readers still on it)
		if err := s.setAside(s.path); err != nil {
			return err
		}
	}
	if err := os.Rename(src, s.path); err != nil {
		return fmt.Errorf("swap in snapshot: %w", err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	db, err := s.openFile(s.path)
	if err != nil {
		return err
	}
	old := s.file.Swap(s.newFile(db))
	s.docs.clear()
	s.loadState(db)
	go func() { _ = old.db.Close() }() // waits for the readers still on the old file
	return nil
}

// bulkGCPercent is the garbage collector's target while a bulk snapshot
// loads (unless GOGC is higher already).
const bulkGCPercent = 400

// LoadBulk builds a new cache file from a bulk snapshot (after its header,
// h): its buckets are loaded in key order into full pages of a new file,
// every pair, the order, the counts and the digest verified (see
// tenancy.LoadBulk); the file is synced once and swapped in. On any error
// the new file is discarded and the cache is as it was. It returns the
// number of entities loaded.
func (s *Store) LoadBulk(br *tenancy.BulkReader, h tenancy.BulkHeader, syncedAt time.Time) (uint64, error) {
	// the load's live heap is small and its garbage plentiful (bbolt's
	// nodes, keys): collect less often while it runs (a quarter less CPU at
	// 1M grants, peak RSS 52 -> 90 MiB; the soft memory limit still applies)
	if prev := debug.SetGCPercent(bulkGCPercent); prev < 0 || prev > bulkGCPercent {
		debug.SetGCPercent(prev)
	} else {
		defer debug.SetGCPercent(prev)
	}
	path := s.path + ".snapshot"
	_ = os.Remove(path)
	// NoSync while loading (one sync at the end); the freelist IS written,
	// so that opening the file later does not walk every page.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return 0, fmt.Errorf("snapshot file: %w", err)
	}
	discard := func(err error) (uint64, error) {
		_ = db.Close()
		_ = os.Remove(path)
		return 0, err
	}
	if err := db.Update(tenancy.Init); err != nil {
		return discard(err)
	}
	dropResident := func() error {
		if residentFileBytes() <= snapshotResidentBudget {
			return nil
		}
		// the load reads the new file's last pages through its memory
		// map: keep them out of the resident set, whatever the size
		return db.View(func(tx *bolt.Tx) error { return dropPages(db.Info().Data, tx.Size()) })
	}
	n, err := tenancy.LoadBulk(db, br, h, dropResident)
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error { return tenancy.SetSyncedAt(tx, syncedAt) })
	}
	if err == nil {
		err = db.Sync()
	}
	if err != nil {
		return discard(err)
	}
	if err := db.Close(); err != nil {
		_ = os.Remove(path)
		return 0, fmt.Errorf("snapshot file: %w", err)
	}
	return n, s.swap(path)
}
