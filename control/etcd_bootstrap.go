package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// A new replica of the etcd store replays the log from revision 1. Once
// the log is compacted, it starts from a peer's snapshot instead: the
// replicas that set etcd.advertise_url publish it with their revision,
// and a replica whose file is missing or empty builds it from the first
// peer that serves GET /v1/sync/snapshot of the same history (with this
// replica's sync token, else its admin token), checking the snapshot's
// count and history hash, then follows the log from there.

// replicaInfo is the value of a replica's key under replicas/.
type replicaInfo struct {
	Revision uint64 `json:"revision"`
	URL      string `json:"url,omitempty"`
}

// bootstrapPageEntities bounds the entities written per transaction.
const bootstrapPageEntities = 10000

// bootstrap builds the data file from a peer's snapshot when it is missing
// or empty and the log no longer starts at revision 1.
func (e *etcdStore) bootstrap(ctx context.Context, cfg Config, token []byte) error {
	path := filepath.Join(cfg.DataDir, DBFile)
	rev, err := fileRevision(path)
	if err != nil || rev > 0 {
		return err // a file with data catches up from the log, or says why not
	}
	first, err := e.logStart(ctx)
	if err != nil || first <= 1 {
		return err
	}
	gctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	resp, err := e.cli.Get(gctx, e.prefix+"replicas/", clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("list the replicas in etcd: %w", err)
	}
	var errs []error
	for _, kv := range resp.Kvs {
		var info replicaInfo
		if json.Unmarshal(kv.Value, &info) != nil || info.URL == "" {
			continue
		}
		err := e.fetchSnapshot(ctx, cfg, info.URL, token, path)
		if err == nil {
			e.s.logger.Info("control replica built from a peer's snapshot", "peer", info.URL, "log_start", first)
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", info.URL, err))
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no live replica advertises its URL (etcd.advertise_url)"))
	}
	return fmt.Errorf("the etcd log starts at revision %d (compacted): this replica needs a peer's snapshot: %w", first, errors.Join(errs...))
}

// fileRevision returns the revision of the data file at path (0 when it
// does not exist or holds none).
func fileRevision(path string) (uint64, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout, ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	var rev uint64
	err = db.View(func(tx *bolt.Tx) error {
		rev = tenancy.Revision(tx)
		return nil
	})
	return rev, err
}

// fetchSnapshot builds path from the peer's snapshot: in a temporary file,
// renamed over path once complete and verified.
func (e *etcdStore) fetchSnapshot(ctx context.Context, cfg Config, peer string, token []byte, path string) error {
	ctx, cancel := context.WithTimeout(ctx, etcdCatchUpTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peer+"/v1/sync/snapshot", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("snapshot: %s: %s", resp.Status, b)
	}
	tmp := path + ".bootstrap"
	_ = os.Remove(tmp)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: openTimeout, NoSync: true})
	if err != nil {
		return err
	}
	err = e.ingest(db, bufio.NewReaderSize(resp.Body, 1<<20))
	if err == nil {
		err = db.Sync()
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// ingest reads a snapshot stream into db.
func (e *etcdStore) ingest(db *bolt.DB, r *bufio.Reader) error {
	var (
		start, rev uint64
		hash       string
		count      uint64
		page       []tenancy.FeedLine
		parts      []tenancy.FeedLine // of the revision being read
	)
	flush := func() error {
		if len(page) == 0 {
			return nil
		}
		err := db.Update(func(tx *bolt.Tx) error {
			w, err := tenancy.NewWriter(tx, start)
			if err != nil {
				return err
			}
			for _, l := range page {
				if err := w.PutStored(l.Collection, l.ID, l.ModRevision, l.Value); err != nil {
					return err
				}
			}
			return nil
		})
		page = page[:0]
		return err
	}
	for {
		b, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("the snapshot ended early (%d entities): %w", count, err)
		}
		var l tenancy.FeedLine
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("snapshot line: %w", err)
		}
		switch l.Type {
		case tenancy.LineHeader:
			if l.Epoch != e.epoch {
				return fmt.Errorf("the peer's history is %s, etcd's %s", l.Epoch, e.epoch)
			}
			start, rev, hash = l.Revision, l.Revision, l.Hash
			err = db.Update(func(tx *bolt.Tx) error {
				if err := tenancy.Init(tx); err != nil {
					return err
				}
				for _, b := range [][]byte{bucketLog, bucketBundles} {
					if _, err := tx.CreateBucketIfNotExists(b); err != nil {
						return err
					}
				}
				return errors.Join(tenancy.SetEpoch(tx, l.Epoch), tenancy.SetRevision(tx, start), tenancy.SetChainHash(tx, hash))
			})
		case tenancy.LineEntity:
			count++
			page = append(page, l)
			if len(page) >= bootstrapPageEntities {
				err = flush()
			}
		case tenancy.LineRevision:
			if err = flush(); err != nil {
				return err
			}
			parts = append(parts, l)
			if l.More {
				continue
			}
			err = db.Update(func(tx *bolt.Tx) error {
				if l.Revision != rev+1 {
					return fmt.Errorf("snapshot revision %d follows %d", l.Revision, rev)
				}
				w, err := tenancy.NewWriter(tx, l.Revision)
				if err != nil {
					return err
				}
				h := tenancy.NewRevisionHash(hash, l.Revision)
				for _, p := range parts {
					for _, c := range p.Changes {
						h.Add(c)
						if err := w.ApplyChange(c); err != nil {
							return err
						}
					}
				}
				if got := h.Sum(); got != l.Hash {
					return fmt.Errorf("snapshot revision %d hashes to %s, it says %s", l.Revision, got, l.Hash)
				}
				rev, hash = l.Revision, l.Hash
				return errors.Join(w.Finish(), tenancy.SetChainHash(tx, hash))
			})
			parts = parts[:0]
		case tenancy.LineEnd:
			if err = flush(); err != nil {
				return err
			}
			if l.Count != count || l.Revision != rev || l.Hash != hash {
				return fmt.Errorf("the snapshot ends at revision %d with %d entities and hash %s; read revision %d, %d entities, hash %s", l.Revision, l.Count, l.Hash, rev, count, hash)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// advertise is the value of this replica's key.
func (e *etcdStore) advertise(rev uint64) string {
	b, _ := json.Marshal(replicaInfo{Revision: rev, URL: e.url})
	return string(b)
}
