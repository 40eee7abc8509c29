package bundle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// ErrGap is returned by ApplyRevisions when a revision does not follow the
// cache's revision.
var ErrGap = errors.New("revision gap")

// ApplyRevisions applies consecutive revisions of the change feed in one
// bbolt transaction, with the revision: all of them or none.
func (s *Store) ApplyRevisions(lines []tenancy.FeedLine, syncedAt time.Time) error {
	if len(lines) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	db := s.db.Load()
	var rev uint64
	err := db.Update(func(tx *bolt.Tx) error {
		rev = tenancy.Revision(tx)
		for _, l := range lines {
			if l.Revision != rev+1 {
				return fmt.Errorf("%w: cache at %d, feed sent %d", ErrGap, rev, l.Revision)
			}
			w, err := tenancy.NewWriter(tx, l.Revision)
			if err != nil {
				return err
			}
			for i, c := range l.Changes {
				if err := w.ApplyChange(c); err != nil {
					return fmt.Errorf("revision %d change %d (%s %s/%s): %w", l.Revision, i, c.Op, c.Collection, c.ID, err)
				}
			}
			rev = l.Revision
		}
		if err := tenancy.SetRevision(tx, rev); err != nil {
			return err
		}
		return tx.Bucket([]byte("meta")).Put(metaSyncedAt, []byte(syncedAt.UTC().Format(time.RFC3339Nano)))
	})
	if err != nil {
		return err
	}
	s.publish(authz.TenancyState{Present: true, Revision: rev, SyncedAt: syncedAt})
	return nil
}

// persistSyncedAt records the last time the data was known current, so a
// restarted sidecar judges staleness from it.
func (s *Store) persistSyncedAt(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Load().Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put(metaSyncedAt, []byte(t.UTC().Format(time.RFC3339Nano)))
	})
}

// snapshotChunk is how many entities go into one transaction while a
// snapshot file is built: bounded memory (a transaction holds its dirty
// pages) whatever the data size.
const snapshotChunk = 2000

// snapshotResidentBudget: above this much resident file-backed memory, the
// snapshot file's mapped pages are dropped after a transaction.
const snapshotResidentBudget = 64 << 20

// SnapshotBuilder writes a snapshot into a new file. Nothing is visible
// until Commit swaps the file in; Abort discards it.
type SnapshotBuilder struct {
	s     *Store
	path  string
	db    *bolt.DB
	tx    *bolt.Tx
	w     *tenancy.Writer
	rev   uint64
	epoch string
	n     uint64
}

// BeginSnapshot starts a new cache file for a snapshot at rev.
func (s *Store) BeginSnapshot(rev uint64, epoch string) (*SnapshotBuilder, error) {
	path := s.path + ".snapshot"
	_ = os.Remove(path)
	// NoSync while building (Commit syncs once); the freelist IS written, so
	// that opening the file later does not walk every page to rebuild it.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("snapshot file: %w", err)
	}
	b := &SnapshotBuilder{s: s, path: path, db: db, rev: rev, epoch: epoch}
	if err := db.Update(tenancy.Init); err != nil {
		b.Abort()
		return nil, err
	}
	return b, nil
}

// Put adds one entity line.
func (b *SnapshotBuilder) Put(l tenancy.FeedLine) error {
	if b.tx == nil {
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
	}
	if err := b.w.PutStored(l.Collection, l.ID, l.ModRevision, l.Value); err != nil {
		return fmt.Errorf("snapshot entity %s/%s: %w", l.Collection, l.ID, err)
	}
	b.n++
	if b.n%snapshotChunk == 0 {
		return b.flush()
	}
	return nil
}

// Count is the number of entities put so far.
func (b *SnapshotBuilder) Count() uint64 { return b.n }

func (b *SnapshotBuilder) flush() error {
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

// Commit records revision, epoch and sync time, makes the file durable,
// swaps it in for the current cache and closes the old one once its
// readers are done.
func (b *SnapshotBuilder) Commit(syncedAt time.Time) error {
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
		return tx.Bucket([]byte("meta")).Put(metaSyncedAt, []byte(syncedAt.UTC().Format(time.RFC3339Nano)))
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

// swap renames a complete file over the cache and reopens it.
func (s *Store) swap(src string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer debug.FreeOSMemory() // a snapshot is a one-off burst of garbage: hand it back now
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
	old := s.db.Swap(db)
	s.docs.clear()
	s.corrupt.Store(false)
	s.loadState(db)
	go func() { _ = old.Close() }() // waits for the readers still on the old file
	return nil
}
