package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The etcd store (SPEC §11). etcd is the ordered, durable log of
// revisions; every replica materializes the same bbolt file from it and
// serves reads, the sync feed and bundles from that file. Keys, under
// Config.Etcd.Prefix:
//
//	meta/identity                 the history's epoch, created once
//	head                          the last revision (decimal)
//	log/<rev, 20 digits>/<part, 6 digits>
//	                              a revision's history parts, exactly as
//	                              the history bucket stores them (appendLog)
//	bundles/<name>                a bundle (sha256, then the tarball)
//
// A write is validated on the replica's file at its revision R (the
// transaction is rolled back), then proposed as revisions R+1... in one
// etcd transaction that compares head with R: a stale view loses the
// compare, catches up and is validated again, so it is never committed
// stale and never refused for being stale. The replica acknowledges a
// write once it applied the revision from the log. A group of writes
// (group commit) is proposed in as few transactions as etcd's request
// limits allow.
//
// This file is the writer side; the follower side (lease, compaction,
// following and applying the log) is etcd_follow.go.

const (
	// maxEtcdTxnBytes bounds the keys and values of one etcd transaction
	// (etcd refuses requests above 1.5 MiB by default).
	maxEtcdTxnBytes = 1400 << 10
	// maxEtcdTxnOps bounds the operations of one etcd transaction (etcd's
	// default --max-txn-ops is 128): parts of revisions plus the head.
	maxEtcdTxnOps = 127
	// maxEtcdPartBytes bounds feed_part_bytes with the etcd store.
	maxEtcdPartBytes = 1 << 20
	// etcdOpTimeout bounds one request to etcd.
	etcdOpTimeout = 5 * time.Second
	// etcdWriteTimeout bounds a write's whole commit (retries and the wait
	// for the local apply included).
	etcdWriteTimeout = 30 * time.Second
	// etcdCatchUpTimeout bounds the catch-up with the log when a replica
	// starts.
	etcdCatchUpTimeout = 2 * time.Minute
	// etcdListPage is the number of log keys listed per request.
	etcdListPage = 64
)

// etcdStore commits revisions to etcd and follows the log into the local
// file.
type etcdStore struct {
	s      *Server
	cli    *clientv3.Client
	prefix string
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the follower stops
	// seen is the etcd revision the follower has applied everything up to.
	seen atomic.Int64
	// confirmed is when this replica's view was last known to be etcd's
	// whole log (Unix nanoseconds, 0: never): the time a listing began or a
	// progress request was sent whose notification came back. Heartbeats
	// carry it, so that a replica cut off from etcd does not tell its
	// sidecars that old data is current (their max_staleness).
	confirmed atomic.Int64
	// id names this replica's key under replicas/ (random per start):
	// its applied revision, kept on a lease, that compaction waits for.
	id        string
	url       string // etcd.advertise_url
	epoch     string
	retention uint64
	compacted uint64 // the log holds no revision up to this one
	// applying is set while the follower applies revisions.
	applying atomic.Bool
	// beforeApply, when set (tests), runs before the follower applies
	// revisions.
	beforeApply atomic.Pointer[func()]
}

// dialEtcd connects to the cluster of cfg.
func dialEtcd(cfg EtcdConfig) (*clientv3.Client, error) {
	c := clientv3.Config{
		Endpoints:          cfg.Endpoints,
		DialTimeout:        cfg.DialTimeout,
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: 2 << 20,
	}
	if cfg.CAFile != "" || cfg.CertFile != "" {
		t := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%w: etcd.ca_file: %w", ErrConfig, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: etcd.ca_file: %q holds no PEM certificate", ErrConfig, cfg.CAFile)
			}
			t.RootCAs = pool
		}
		if cfg.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("%w: etcd.cert_file/key_file: %w", ErrConfig, err)
			}
			t.Certificates = []tls.Certificate{cert}
		}
		c.TLS = t
	}
	cli, err := clientv3.New(c)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

// etcdIdentity returns the history's epoch, creating it when the prefix
// holds none: every replica gets the same.
func etcdIdentity(ctx context.Context, cli *clientv3.Client, prefix string) (string, error) {
	key := prefix + "meta/identity"
	var b [16]byte
	_, _ = rand.Read(b[:])
	ctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, hex.EncodeToString(b[:]))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return "", fmt.Errorf("read the history identity from etcd: %w", err)
	}
	if resp.Succeeded {
		return hex.EncodeToString(b[:]), nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) != 1 || len(kvs[0].Value) == 0 {
		return "", fmt.Errorf("etcd key %q: no history identity", key)
	}
	return string(kvs[0].Value), nil
}

func (e *etcdStore) headKey() string { return e.prefix + "head" }

func (e *etcdStore) logKey(rev uint64, part int) string {
	return fmt.Sprintf("%slog/%020d/%06d", e.prefix, rev, part)
}

func (e *etcdStore) logEnd() string { return e.prefix + "log0" } // just after "log/"

func (e *etcdStore) bundleKey(name string) string { return e.prefix + "bundles/" + name }

func (e *etcdStore) replicaKey() string { return e.prefix + "replicas/" + e.id }

// start follows the log in the background after catching up with the
// head as it is now.
func (e *etcdStore) start() error {
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.done = make(chan struct{})
	ctx, cancel := context.WithTimeout(e.ctx, etcdCatchUpTimeout)
	defer cancel()
	head, err := e.head(ctx)
	if err != nil {
		e.cancel()
		close(e.done)
		return err
	}
	first, err := e.logStart(ctx)
	if err == nil && head < e.s.Revision() {
		err = fmt.Errorf("etcd's log ends at revision %d, this replica's file is at revision %d of the same history: was etcd restored from a backup? Move the file away to rebuild it from etcd", head, e.s.Revision())
	}
	if err == nil && head > e.s.Revision() && first > e.s.Revision()+1 {
		err = fmt.Errorf("the etcd log starts at revision %d (compacted) and this replica's file is at revision %d: "+
			"move it away to build it from a peer's snapshot (etcd.advertise_url on the peers), start it from a copy of another replica's %s (taken while that replica is stopped), or raise etcd.log_retention", first, e.s.Revision(), DBFile)
	}
	if err != nil {
		e.cancel()
		close(e.done)
		return err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	e.id = hex.EncodeToString(b[:])
	go e.run()
	if err := e.s.waitApplied(ctx, head); err != nil {
		e.cancel()
		<-e.done
		return fmt.Errorf("catch up with the etcd log to revision %d: %w", head, err)
	}
	return nil
}

func (e *etcdStore) close() error {
	if e.cancel == nil {
		return e.cli.Close()
	}
	e.cancel()
	<-e.done
	return e.cli.Close()
}

// logStart returns the first revision the log holds (0 when empty).
func (e *etcdStore) logStart(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.prefix+"log/", clientv3.WithRange(e.logEnd()), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("read the etcd log: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	k := string(resp.Kvs[0].Key)[len(e.prefix)+len("log/"):]
	if i := strings.IndexByte(k, '/'); i > 0 {
		k = k[:i]
	}
	return strconv.ParseUint(k, 10, 64)
}

// head reads the last revision of the log (a linearizable read).
func (e *etcdStore) head(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.headKey())
	if err != nil {
		return 0, fmt.Errorf("read the etcd head: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64)
}

// waitApplied waits until the local file holds revision rev.
func (s *Server) waitApplied(ctx context.Context, rev uint64) error {
	for {
		published, wake := s.feed.state()
		if published >= rev {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// commitGroup validates the group on the local file, proposes its
// revisions to etcd and acknowledges each write once its revision is
// applied locally. Writes that lost a race with another replica are
// validated again on the state they lost to.
func (e *etcdStore) commitGroup(group []*pending) {
	for attempt := 0; ; attempt++ {
		if e.attempt(group, attempt) {
			return
		}
	}
}

// maxEtcdAttempts bounds the validations of a group that keeps losing
// races for its revisions to other replicas.
const maxEtcdAttempts = 100

// attempt validates and proposes the writes of group still open, and
// reports whether the group is done.
func (e *etcdStore) attempt(group []*pending, attempt int) bool {
	s := e.s
	ctx, cancel := context.WithTimeout(e.ctx, etcdWriteTimeout)
	defer cancel()
	open := make([]*pending, 0, len(group))
	for _, w := range group {
		if w.err == nil && w.res.revision == 0 {
			open = append(open, w)
		}
	}
	validatedAt := s.Revision()
	tx, live, recs := s.stage(group)
	if tx != nil {
		_ = tx.Rollback() // the revisions are committed by applying the log
	}
	if e.refusedStale(ctx, open, validatedAt) {
		return false // validate them again on the state they were refused on
	}
	if tx == nil {
		return true
	}
	docs := make([][][]byte, len(recs))
	staged := make([]string, len(recs))
	tooBig := false
	for i, r := range recs {
		d, err := encodeLog(r, s.cfg.FeedPartBytes)
		if err == nil && !fitsTxn(e, r.rev, d) {
			for _, part := range d {
				if len(part)+len(e.stageKey("x", 0))+64 > maxEtcdTxnBytes {
					err = errorf(http.StatusRequestEntityTooLarge, CodeTooLarge,
						"revision %d holds a change larger than one etcd request (%d bytes): split the entity", r.rev, maxEtcdTxnBytes)
				}
			}
			if err == nil {
				var ref []byte
				staged[i], ref, err = e.stageParts(ctx, r.rev, d)
				d = [][]byte{ref}
				if err != nil {
					err = errorf(http.StatusServiceUnavailable, CodeUnavailable, "%v", err)
				}
			}
		}
		if err != nil {
			live[i].err, tooBig = err, true
		}
		docs[i] = d
	}
	if tooBig {
		for _, id := range staged {
			if id != "" {
				e.dropStage(ctx, id)
			}
		}
		return false // validate again without the refused writes
	}
	committed, lost, err := e.propose(ctx, live, recs, docs, staged)
	if err == nil {
		for i, id := range staged {
			if id != "" && recs[i].rev > committed {
				e.dropStage(ctx, id) // lost: never referred to
			}
		}
	}
	target := max(committed, lost)
	if err != nil {
		// the outcome of the last transaction is unknown: learn it
		// from the log
		head, herr := e.head(ctx)
		for herr != nil && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond) // etcd elects a leader
			head, herr = e.head(ctx)
		}
		if herr != nil {
			for _, w := range live {
				w.err = errorf(http.StatusServiceUnavailable, CodeUnavailable, "etcd: %v; then %v (the write may have been committed)", err, herr)
			}
			return true
		}
		target = max(target, head)
	}
	if err := e.waitCommitted(target); err != nil {
		for _, w := range live {
			w.err = errorf(http.StatusServiceUnavailable, CodeUnavailable, "waiting for revision %d from etcd: %v (the write may have been committed)", target, err)
		}
		return true
	}
	if e.settle(live, recs) {
		return true
	}
	if attempt+1 >= maxEtcdAttempts {
		for _, w := range live {
			if w.res.revision == 0 && w.err == nil {
				w.err = errorf(http.StatusServiceUnavailable, CodeUnavailable, "the write lost the race for a revision to other replicas %d times: retry", maxEtcdAttempts)
			}
		}
		return true
	}
	return false
}

// waitCommitted waits until the local file holds revision rev, as long as
// the follower makes progress (or is applying a revision: a large one
// takes its time); it gives up after etcdWriteTimeout without either, or
// when the store closes.
func (e *etcdStore) waitCommitted(rev uint64) error {
	stall := time.NewTimer(etcdWriteTimeout)
	defer stall.Stop()
	for {
		published, wake := e.s.feed.state()
		if published >= rev {
			return nil
		}
		select {
		case <-wake:
			stall.Reset(etcdWriteTimeout)
		case <-stall.C:
			if !e.applying.Load() {
				return fmt.Errorf("the replica applied nothing for %v", etcdWriteTimeout)
			}
			stall.Reset(etcdWriteTimeout)
		case <-e.ctx.Done():
			return e.ctx.Err()
		}
	}
}

// refusedStale reports whether writes of open were refused on a view older
// than etcd's head: then it waits until the head is applied locally and
// clears their refusals, so that they are validated again (a valid write
// is never refused for a stale view).
func (e *etcdStore) refusedStale(ctx context.Context, open []*pending, validatedAt uint64) bool {
	var refused []*pending
	for _, w := range open {
		if w.err != nil {
			refused = append(refused, w)
		}
	}
	if len(refused) == 0 {
		return false
	}
	head, err := e.head(ctx)
	if err == nil && head > validatedAt {
		err = e.s.waitApplied(ctx, head)
	}
	if err != nil {
		for _, w := range refused { // maybe refused on a stale view: not a refusal
			w.err = errorf(http.StatusServiceUnavailable, CodeUnavailable, "etcd: %v: cannot tell whether the write is valid on the current state (retry)", err)
		}
		return false
	}
	if head <= validatedAt {
		return false // refused on the current state
	}
	for _, w := range refused {
		w.err = nil
	}
	return true
}

// fitsTxn reports whether one revision's parts fit one etcd transaction.
func fitsTxn(e *etcdStore, rev uint64, docs [][]byte) bool {
	n := 0
	for i, d := range docs {
		n += len(e.logKey(rev, i)) + len(d)
	}
	return len(docs) <= maxEtcdTxnOps-1 && n+len(e.headKey())+20 <= maxEtcdTxnBytes
}

// propose sends the revisions in transactions, in order, each comparing
// head with the revision before its first. It records each write's
// proposal and returns the last revision committed, the head when a
// compare failed (0 otherwise), and an error when a transaction's outcome
// is unknown.
func (e *etcdStore) propose(ctx context.Context, live []*pending, recs []revisionRecord, docs [][][]byte, staged []string) (committed, lost uint64, err error) {
	for i := 0; i < len(recs); {
		var ops []clientv3.Op
		size := len(e.headKey()) + 20
		j := i
		for ; j < len(recs); j++ {
			n, k := 0, len(docs[j])
			for p, d := range docs[j] {
				n += len(e.logKey(recs[j].rev, p)) + len(d)
			}
			if staged[j] != "" {
				k++
			}
			if j > i && (len(ops)+k+1 > maxEtcdTxnOps || size+n > maxEtcdTxnBytes) {
				break
			}
			for p, d := range docs[j] {
				ops = append(ops, clientv3.OpPut(e.logKey(recs[j].rev, p), string(d)))
			}
			if staged[j] != "" {
				ops = append(ops, clientv3.OpPut(e.stagedKey(staged[j]), strconv.FormatUint(recs[j].rev, 10)))
				n += 64
			}
			size += n
		}
		last := recs[j-1].rev
		ops = append(ops, clientv3.OpPut(e.headKey(), strconv.FormatUint(last, 10)))
		var cmp clientv3.Cmp
		if first := recs[i].rev; first == 1 {
			cmp = clientv3.Compare(clientv3.CreateRevision(e.headKey()), "=", 0)
		} else {
			cmp = clientv3.Compare(clientv3.Value(e.headKey()), "=", strconv.FormatUint(first-1, 10))
		}
		for k := i; k < j; k++ {
			live[k].tries = append(live[k].tries, proposal{rev: recs[k].rev, hash: recs[k].hash})
		}
		tctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
		resp, err := e.cli.Txn(tctx).If(cmp).Then(ops...).Else(clientv3.OpGet(e.headKey())).Commit()
		cancel()
		if err != nil {
			return committed, 0, err
		}
		e.s.metrics.commits.Inc()
		if !resp.Succeeded {
			kvs := resp.Responses[0].GetResponseRange().GetKvs()
			if len(kvs) == 0 {
				return committed, 0, fmt.Errorf("etcd holds no head while this replica is at revision %d: is it the cluster and prefix this data_dir was built from?", recs[i].rev-1)
			}
			head, err := strconv.ParseUint(string(kvs[0].Value), 10, 64)
			if err != nil {
				return committed, 0, fmt.Errorf("etcd head %q: %w", kvs[0].Value, err)
			}
			return committed, head, nil
		}
		committed = last
		i = j
	}
	return committed, 0, nil
}

// settle acknowledges the writes one of whose proposals is in the local
// history (the same revision with the same hash: the same changes on the
// same history), and reports whether none is left.
func (e *etcdStore) settle(live []*pending, recs []revisionRecord) bool {
	left := false
	_ = e.s.db.View(func(tx *bolt.Tx) error {
		for i, w := range live {
			for _, t := range w.tries {
				if h, ok := hashAt(tx, t.rev); ok && h == t.hash {
					w.res = writeResult{revision: t.rev, changes: recs[i].changes}
					break
				}
			}
			if w.res.revision == 0 {
				left = true
			}
		}
		return nil
	})
	return !left
}

// putBundle writes the bundle to etcd and waits until the local file has
// it.
func (e *etcdStore) putBundle(name string, v []byte, audit func(tx *bolt.Tx, old []byte) error) error {
	var old []byte
	_ = e.s.db.View(func(tx *bolt.Tx) error {
		old = bytes.Clone(tx.Bucket(bucketBundles).Get([]byte(name)))
		return nil
	})
	if err := e.putBundleEtcd(name, v); err != nil {
		return err
	}
	// the audit record is this replica's: the upload's actor is known here
	return e.s.db.Update(func(tx *bolt.Tx) error { return audit(tx, old) })
}

func (e *etcdStore) putBundleEtcd(name string, v []byte) error {
	if len(v)+len(e.bundleKey(name)) > maxEtcdTxnBytes {
		return errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "bundle %q: %d bytes, at most %d with store etcd (one etcd request)", name, len(v)-32, maxEtcdTxnBytes-len(e.bundleKey(name))-32)
	}
	ctx, cancel := context.WithTimeout(e.ctx, etcdWriteTimeout)
	defer cancel()
	pctx, pcancel := context.WithTimeout(ctx, etcdOpTimeout)
	resp, err := e.cli.Put(pctx, e.bundleKey(name), string(v))
	pcancel()
	if err != nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "etcd: %v (the bundle may have been stored)", err)
	}
	for e.seen.Load() < resp.Header.Revision {
		select {
		case <-ctx.Done():
			return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the bundle is stored in etcd but not yet here: %v", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
