package control

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A revision too large for one etcd transaction (a cascade over many
// entities) is staged: its parts are written first under
// stage/<id>/<part>, in as many transactions as etcd's limits need, then
// the commit transaction (the compare on head) puts a reference as the
// revision's log record, log/<rev>/000000 = {"revision","staged","parts"},
// and staged/<id> = rev. A follower reads the staged parts when it meets
// the reference, and stores and streams the parts themselves. Staged
// parts are deleted with their revision by compaction; those of a
// proposal that lost are deleted at once, and those of a proposal whose
// outcome was never learnt after stagedOrphanAge.

// stagedRef is the log record of a staged revision.
type stagedRef struct {
	Revision uint64 `json:"revision"`
	Staged   string `json:"staged"`
	Parts    int    `json:"parts"`
}

// stagedOrphanAge is the age after which staged parts that no revision
// refers to are deleted.
const stagedOrphanAge = 10 * time.Minute

func (e *etcdStore) stageKey(id string, part int) string {
	return fmt.Sprintf("%sstage/%s/%06d", e.prefix, id, part)
}

func (e *etcdStore) stagedKey(id string) string { return e.prefix + "staged/" + id }

// stageParts writes the parts of revision rev under a new stage id and
// returns the id and the reference record.
func (e *etcdStore) stageParts(ctx context.Context, rev uint64, docs [][]byte) (string, []byte, error) {
	id := fmt.Sprintf("%016x-%s", time.Now().UnixNano(), e.id)
	for i := 0; i < len(docs); {
		var ops []clientv3.Op
		size := 0
		for ; i < len(docs); i++ {
			n := len(e.stageKey(id, i)) + len(docs[i])
			if len(ops) > 0 && (len(ops) >= maxEtcdTxnOps || size+n > maxEtcdTxnBytes) {
				break
			}
			ops = append(ops, clientv3.OpPut(e.stageKey(id, i), string(docs[i])))
			size += n
		}
		tctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
		_, err := e.cli.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return "", nil, fmt.Errorf("stage revision %d in etcd: %w", rev, err)
		}
	}
	ref, err := json.Marshal(stagedRef{Revision: rev, Staged: id, Parts: len(docs)})
	return id, ref, err
}

// dropStage deletes staged parts (best effort).
func (e *etcdStore) dropStage(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	_, _ = e.cli.Delete(ctx, e.prefix+"stage/"+id+"/", clientv3.WithPrefix())
	_, _ = e.cli.Delete(ctx, e.stagedKey(id))
}

// fetchStaged reads the n parts staged under id.
func (e *etcdStore) fetchStaged(ctx context.Context, id string, n int) ([][]byte, error) {
	out := make([][]byte, 0, n)
	from, end := e.stageKey(id, 0), e.prefix+"stage/"+id+"0" // "0" follows "/"
	for len(out) < n {
		gctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
		resp, err := e.cli.Get(gctx, from, clientv3.WithRange(end), clientv3.WithLimit(16))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("read staged revision %s: %w", id, err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		for _, kv := range resp.Kvs {
			out = append(out, kv.Value)
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if len(out) != n {
		return nil, fmt.Errorf("staged revision %s: %d parts of %d in etcd", id, len(out), n)
	}
	return out, nil
}

// compactStaged deletes the staged parts of revisions up to cut, and
// orphans older than stagedOrphanAge.
func (e *etcdStore) compactStaged(ctx context.Context, cut uint64) error {
	resp, err := e.cli.Get(ctx, e.prefix+"staged/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, kv := range resp.Kvs {
		id := string(kv.Key[len(e.prefix)+len("staged/"):])
		rev, err := strconv.ParseUint(string(kv.Value), 10, 64)
		if err == nil && rev <= cut {
			e.dropStage(ctx, id)
			continue
		}
		live[id] = true
	}
	keys, err := e.cli.Get(ctx, e.prefix+"stage/", clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1000))
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, kv := range keys.Kvs {
		rest := string(kv.Key[len(e.prefix)+len("stage/"):])
		id, _, _ := strings.Cut(rest, "/")
		if seen[id] || live[id] {
			continue
		}
		seen[id] = true
		ts, _, _ := strings.Cut(id, "-")
		nanos, err := strconv.ParseInt(ts, 16, 64)
		if err == nil && time.Since(time.Unix(0, nanos)) > stagedOrphanAge {
			e.dropStage(ctx, id)
		}
	}
	return nil
}
