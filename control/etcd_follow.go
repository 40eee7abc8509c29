package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// The follower side of the etcd store (store_etcd.go is the writer side):
// each replica keeps its applied revision on a lease (maintain), compacts
// the log below the slowest replica (compact), and follows the log (run,
// follow): it assembles each revision from its parts (assembler) and
// applies it to its bbolt file (apply), the same way whether the revision
// was proposed by this replica or another.

// etcdLeaseTTL is the lease of a replica's key: a replica gone for longer
// no longer holds back compaction.
const etcdLeaseTTL = 10

// etcdMaintainEvery is the period of a replica's key updates; the log is
// compacted every ten. A variable for tests.
var etcdMaintainEvery = time.Second

// maintain keeps this replica's key (its applied revision) on a lease,
// every second, and compacts the log every ten.
func (e *etcdStore) maintain() {
	var lease clientv3.LeaseID
	var put uint64
	tick := time.NewTicker(etcdMaintainEvery)
	defer tick.Stop()
	for n := 0; ; n++ {
		ctx, cancel := context.WithTimeout(e.ctx, etcdOpTimeout)
		if lease != 0 {
			if _, err := e.cli.KeepAliveOnce(ctx, lease); err != nil {
				lease = 0
			}
		}
		if lease == 0 {
			if g, err := e.cli.Grant(ctx, etcdLeaseTTL); err == nil {
				lease, put = g.ID, 0
			}
		}
		if rev := e.s.Revision(); lease != 0 && (rev != put || put == 0) {
			if _, err := e.cli.Put(ctx, e.replicaKey(), e.advertise(rev), clientv3.WithLease(lease)); err == nil {
				put = rev
			}
		}
		if n%10 == 9 {
			if err := e.compact(ctx); err != nil {
				e.s.logger.Warn("etcd log compaction failed", "err", err)
			}
		}
		cancel()
		select {
		case <-e.ctx.Done():
			if lease != 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, _ = e.cli.Revoke(ctx, lease)
				cancel()
			}
			return
		case <-tick.C:
		}
	}
}

// compact deletes the log's revisions that every live replica applied and
// that are older than the retention (at most 10,000 revisions a time).
func (e *etcdStore) compact(ctx context.Context) error {
	resp, err := e.cli.Get(ctx, e.prefix+"replicas/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) == 0 {
		return err
	}
	slowest := uint64(1<<63 - 1)
	for _, kv := range resp.Kvs {
		var info replicaInfo
		if err := json.Unmarshal(kv.Value, &info); err != nil {
			return fmt.Errorf("replica key %s: %w", kv.Key, err)
		}
		slowest = min(slowest, info.Revision)
	}
	head, err := e.head(ctx)
	if err != nil || head <= e.retention {
		return err
	}
	cut := min(slowest, head-e.retention, e.compacted+10000)
	if cut <= e.compacted {
		return nil
	}
	if _, err := e.cli.Delete(ctx, e.prefix+"log/", clientv3.WithRange(e.logKey(cut+1, 0))); err != nil {
		return err
	}
	if err := e.compactStaged(ctx, cut); err != nil {
		return err
	}
	e.compacted = cut
	e.s.logger.Debug("etcd log compacted", "up_to", cut, "slowest_replica", slowest, "head", head)
	return nil
}

// run follows the log until the store closes, reconnecting after errors.
func (e *etcdStore) run() {
	defer close(e.done)
	var wg sync.WaitGroup
	defer wg.Wait() // before done closes
	wg.Go(e.maintain)
	backoff := 50 * time.Millisecond
	for e.ctx.Err() == nil {
		err := e.follow()
		if e.ctx.Err() != nil {
			return
		}
		e.s.logger.Warn("etcd log follower restarts", "err", err, "revision", e.s.Revision())
		select {
		case <-e.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// follow lists the log after the local revision and the bundles at one
// etcd revision, applies them, then watches for more.
func (e *etcdStore) follow() error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(e.ctx))
	defer cancel()
	listed := time.Now() // the listing below reads the log as of after this
	var at int64
	asm := &assembler{fetch: func(id string, n int) ([][]byte, error) { return e.fetchStaged(ctx, id, n) }}
	from := e.logKey(e.s.Revision()+1, 0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(e.logEnd()), clientv3.WithLimit(etcdListPage)}
		if at != 0 {
			opts = append(opts, clientv3.WithRev(at))
		}
		gctx, gcancel := context.WithTimeout(ctx, etcdOpTimeout)
		resp, err := e.cli.Get(gctx, from, opts...)
		gcancel()
		if err != nil {
			return fmt.Errorf("list the log: %w", err)
		}
		if at == 0 {
			at = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := asm.add(kv.Value); err != nil {
				return err
			}
		}
		if err := e.apply(asm.take()); err != nil {
			return err
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	gctx, gcancel := context.WithTimeout(ctx, etcdOpTimeout)
	resp, err := e.cli.Get(gctx, e.prefix+"bundles/", clientv3.WithPrefix(), clientv3.WithRev(at))
	gcancel()
	if err != nil {
		return fmt.Errorf("list the bundles: %w", err)
	}
	if err := e.putBundles(resp.Kvs); err != nil {
		return err
	}
	e.seen.Store(at)
	e.confirm(listed)

	wch := e.cli.Watch(ctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(at+1))
	var asked atomic.Int64 // when the outstanding progress request was sent (0: none)
	go e.askProgress(ctx, &asked)
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch the log: %w", err)
		}
		if wr.IsProgressNotify() {
			// every event up to the header's revision was delivered: the
			// view was whole when the request was sent
			if t := asked.Swap(0); t != 0 {
				e.confirm(time.Unix(0, t))
			}
			continue
		}
		var bundles []*mvccpb.KeyValue
		for _, ev := range wr.Events {
			k := string(ev.Kv.Key)
			switch {
			case ev.Type != mvccpb.PUT:
			case len(k) > len(e.prefix)+4 && k[len(e.prefix):len(e.prefix)+4] == "log/":
				if err := asm.add(ev.Kv.Value); err != nil {
					return err
				}
			case len(k) > len(e.prefix)+8 && k[len(e.prefix):len(e.prefix)+8] == "bundles/":
				bundles = append(bundles, ev.Kv)
			}
		}
		if err := e.apply(asm.take()); err != nil {
			return err
		}
		if err := e.putBundles(bundles); err != nil {
			return err
		}
		if wr.Header.Revision > 0 {
			e.seen.Store(max(e.seen.Load(), wr.Header.Revision))
		}
	}
	return errors.New("the watch ended")
}

// progressEvery is how often a follower asks etcd to confirm its view
// (RequestProgress): the heartbeats' stamps lag real time by about this.
const progressEvery = 200 * time.Millisecond

// askProgress requests a progress notification every progressEvery, until
// ctx ends. asked holds the send time of the oldest request not yet
// answered: a notification (which names no request) then confirms the
// oldest time it can stand for, never a later one. A request unanswered
// for 4×progressEvery is sent again, keeping that older time.
func (e *etcdStore) askProgress(ctx context.Context, asked *atomic.Int64) {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if !asked.CompareAndSwap(0, now.UnixNano()) && now.Sub(time.Unix(0, asked.Load())) < 4*progressEvery {
			continue // one is outstanding
		}
		rctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
		_ = e.cli.RequestProgress(rctx) // unanswered: the stamp stops advancing
		cancel()
	}
}

// confirm records that the view was whole at t (never moving back).
func (e *etcdStore) confirm(t time.Time) {
	n := t.UnixNano()
	for {
		old := e.confirmed.Load()
		if old >= n || e.confirmed.CompareAndSwap(old, n) {
			return
		}
	}
}

// currentAsOf is when this replica's data was last known to be etcd's
// (zero before the first listing).
func (e *etcdStore) currentAsOf() time.Time {
	if n := e.confirmed.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// putBundles stores bundles read from etcd in the local file.
func (e *etcdStore) putBundles(kvs []*mvccpb.KeyValue) error {
	if len(kvs) == 0 {
		return nil
	}
	return e.s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBundles)
		for _, kv := range kvs {
			name := string(kv.Key[len(e.prefix)+len("bundles/"):])
			if !bundleName.MatchString(name) || len(kv.Value) < 32 {
				continue
			}
			if err := b.Put([]byte(name), kv.Value); err != nil {
				return err
			}
		}
		return nil
	})
}

// logRecord is a whole revision read from the log: its parts as stored
// and decoded.
type logRecord struct {
	docs    [][]byte
	rev     uint64
	prev    string
	hash    string
	changes []tenancy.Change
	// time, actor and request come with the first part (audit records)
	time    time.Time
	actor   Actor
	request string
}

// assembler gathers the parts of revisions, in key order; fetch reads the
// parts of a staged revision.
type assembler struct {
	cur   *logRecord
	done  []logRecord
	fetch func(id string, n int) ([][]byte, error)
}

func (a *assembler) add(doc []byte) error {
	var ref stagedRef
	if err := json.Unmarshal(doc, &ref); err == nil && ref.Staged != "" {
		if a.cur != nil {
			return fmt.Errorf("etcd log: staged revision %d follows an incomplete revision %d", ref.Revision, a.cur.rev)
		}
		docs, err := a.fetch(ref.Staged, ref.Parts)
		if err != nil {
			return err
		}
		for _, d := range docs {
			if err := a.add(d); err != nil {
				return err
			}
		}
		if a.cur != nil || len(a.done) == 0 || a.done[len(a.done)-1].rev != ref.Revision {
			return fmt.Errorf("etcd log: staged revision %d is incomplete", ref.Revision)
		}
		return nil
	}
	var e historyEntry
	if err := json.Unmarshal(doc, &e); err != nil {
		return fmt.Errorf("decode an etcd log record: %w", err)
	}
	if a.cur == nil {
		a.cur = &logRecord{rev: e.Revision, prev: e.Prev, time: e.Time, request: e.Op}
		if e.Actor != nil {
			a.cur.actor = *e.Actor
		}
	} else if e.Revision != a.cur.rev {
		return fmt.Errorf("etcd log: revision %d part %d follows an incomplete revision %d", e.Revision, len(a.cur.docs), a.cur.rev)
	}
	a.cur.docs = append(a.cur.docs, doc)
	a.cur.changes = append(a.cur.changes, e.Changes...)
	if !e.More {
		a.cur.hash = e.Hash
		a.done = append(a.done, *a.cur)
		a.cur = nil
	}
	return nil
}

// take returns the complete revisions gathered so far.
func (a *assembler) take() []logRecord {
	out := a.done
	a.done = nil
	return out
}

// apply applies whole revisions from the log to the local file in one
// transaction: each must follow the file's revision and history hash, and
// hash as it says; revisions already applied are skipped.
func (e *etcdStore) apply(recs []logRecord) error {
	if len(recs) == 0 {
		return nil
	}
	if f := e.beforeApply.Load(); f != nil {
		(*f)()
	}
	e.applying.Store(true)
	defer e.applying.Store(false)
	s := e.s
	var last uint64
	var audited, trimmed int
	err := s.db.Update(func(tx *bolt.Tx) error {
		audited, trimmed = 0, 0
		for _, r := range recs {
			cur := tenancy.Revision(tx)
			if r.rev <= cur {
				continue
			}
			if r.rev != cur+1 {
				return fmt.Errorf("etcd log: revision %d follows the local revision %d: a gap", r.rev, cur)
			}
			prev := tenancy.HeadHash(tx)
			if r.prev != prev {
				return fmt.Errorf("etcd log: revision %d follows history hash %q, the local file is at %q: another history", r.rev, r.prev, prev)
			}
			if h := tenancy.HashRevision(prev, r.rev, r.changes); h != r.hash {
				return fmt.Errorf("etcd log: revision %d hashes to %q, it says %q", r.rev, h, r.hash)
			}
			w, err := tenancy.NewWriter(tx, r.rev)
			if err != nil {
				return err
			}
			w.KeepBefore()
			for _, c := range r.changes {
				if err := w.ApplyChange(c); err != nil {
					return fmt.Errorf("etcd log: revision %d: %w", r.rev, err)
				}
			}
			if r.actor.Kind != "" { // every replica keeps the audit trail
				rec := revisionRecord{rev: r.rev, time: r.time, changes: r.changes, prev: r.prev, hash: r.hash, actor: r.actor, request: r.request}
				a, t, err := appendAudit(tx, rec, w.Before(), s.cfg.Audit.Retention)
				if err != nil {
					return err
				}
				audited, trimmed = audited+a, trimmed+t
			}
			if err := w.Finish(); err != nil {
				return err
			}
			if err := tenancy.SetChainHash(tx, r.hash); err != nil {
				return err
			}
			if err := putLog(tx, r.rev, r.docs, uint64(s.cfg.History)); err != nil {
				return err
			}
			last = r.rev
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.metrics.auditRecords.Add(float64(audited))
	s.metrics.auditTrimmed.Add(float64(trimmed))
	if last > 0 {
		s.setRevision(last)
		s.feed.publish(last)
	}
	return nil
}
