package control

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// TestAuditFailureFailsTheWrite: the audit records go in the write's own
// transaction, so a write whose audit cannot be written is not committed
// at all (nothing of it: entity, revision, history, audit). The failure is
// provoked by an undecodable expired record the write has to trim.
func TestAuditFailureFailsTheWrite(t *testing.T) {
	t.Parallel()
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	s, addr := boundsServer(t, func(c *Config) {
		c.Now = func() time.Time { return time.Unix(0, now.Load()) }
		c.Audit.Retention = time.Hour
	})
	boundsDo(t, addr, "PUT", "/v1/tenants/t", `{"id":"t","name":"T"}`)
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAudit).Put(auditKey(time.Unix(0, 1), 0, 0), []byte("not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	rev := s.Revision()
	countAudit := func() (n int) {
		_ = s.db.View(func(tx *bolt.Tx) error {
			n = tx.Bucket(bucketAudit).Stats().KeyN
			return nil
		})
		return n
	}
	records := countAudit()
	req, _ := http.NewRequest("PUT", "http://"+addr+"/v1/users/u1", strings.NewReader(`{"id":"u1","tenant":"t"}`))
	req.Header.Set("Authorization", "Bearer "+boundsToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("write with a failing audit: %d, want 500", resp.StatusCode)
	}
	if s.Revision() != rev || countAudit() != records {
		t.Fatalf("revision %d (want %d), %d audit records (want %d)", s.Revision(), rev, countAudit(), records)
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		if e, _ := tenancy.Get(tx, tenancy.Users, "u1"); e != nil || tenancy.Revision(tx) != rev {
			t.Fatalf("the write left users/u1 (%v) or revision %d", e, tenancy.Revision(tx))
		}
		if k, _ := tx.Bucket(bucketLog).Cursor().Seek(u64(rev + 1)); k != nil {
			t.Fatalf("the write left history %x", k)
		}
		return nil
	})
}

// TestHistoryRecordsActorAndRequest: the revision's history record says
// who wrote it and how, so that the audit is derivable from the log entry
// (the replicated record of a store that replicates its log).
func TestHistoryRecordsActorAndRequest(t *testing.T) {
	t.Parallel()
	s, addr := boundsServer(t, nil)
	boundsDo(t, addr, "POST", "/v1/batch", `{"ops":[{"op":"put","collection":"tenants","value":{"id":"t","name":"T"}},{"op":"put","collection":"users","value":{"id":"u","tenant":"t"}}]}`)
	boundsDo(t, addr, "DELETE", "/v1/users/u", "")
	want := map[uint64]string{1: requestBatch, 2: requestDelete}
	err := s.db.View(func(tx *bolt.Tx) error {
		for rev, op := range want {
			v := tx.Bucket(bucketLog).Get(partKey(rev, 0))
			var e historyEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if e.Actor == nil || *e.Actor != (Actor{Kind: ActorAdmin, ID: ActorAdmin}) || e.Op != op {
				t.Errorf("revision %d: actor %v op %q, want admin %q", rev, e.Actor, e.Op, op)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
