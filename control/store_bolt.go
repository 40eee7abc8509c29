package control

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// store is where revisions become durable: the local bbolt file (the
// default), or an etcd cluster that orders them for several replicas
// (store_etcd.go), each materializing the same file.
type store interface {
	// commitGroup commits the writes of group, each as its own revision
	// in order (see stage), and sets each one's result or error.
	commitGroup(group []*pending)
	// putBundle stores a bundle's value (its sha256 then its bytes);
	// audit records the upload, given the value it replaces, in a write
	// transaction of the local file (the same as the put's when local).
	putBundle(name string, v []byte, audit func(tx *bolt.Tx, old []byte) error) error
	// close stops the store's work (the data file is closed by the
	// server afterwards).
	close() error
}

var (
	_ store = boltStore{}
	_ store = (*etcdStore)(nil)
)

// boltStore commits to the local bbolt file: one transaction, and one
// fsync, per group.
type boltStore struct{ s *Server }

func (b boltStore) commitGroup(group []*pending) {
	s := b.s
	tx, live, recs := s.stage(group)
	if tx == nil {
		return
	}
	s.metrics.commits.Inc()
	if err := tx.Commit(); err != nil {
		for i, w := range live {
			w.err = fmt.Errorf("commit revision %d: %w", recs[i].rev, err)
		}
		return
	}
	s.acknowledge(live, recs)
}

func (b boltStore) putBundle(name string, v []byte, audit func(tx *bolt.Tx, old []byte) error) error {
	return b.s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBundles)
		old := bytes.Clone(bk.Get([]byte(name)))
		if err := bk.Put([]byte(name), v); err != nil {
			return err
		}
		return audit(tx, old)
	})
}

func (boltStore) close() error { return nil }
