package replica_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// snapshotProxy is a reverse proxy in front of a control endpoint that
// records the media type of every snapshot it passes, and can edit
// snapshot requests and responses.
type snapshotProxy struct {
	url   string
	mu    sync.Mutex
	types []string
	// dropAccept removes the Accept header of snapshot requests (a
	// control endpoint that knows only NDJSON answers the same).
	dropAccept atomic.Bool
	// damage flips a byte inside the first value of the next bulk
	// snapshots (while > 0).
	damage atomic.Int32
}

func newSnapshotProxy(t *testing.T, target string) *snapshotProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	sp := &snapshotProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != "/v1/sync/snapshot" {
			return nil
		}
		ct := resp.Header.Get("Content-Type")
		sp.mu.Lock()
		sp.types = append(sp.types, ct)
		sp.mu.Unlock()
		if ct == tenancy.BulkMediaType && sp.damage.Add(-1) >= 0 {
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			resp.Body.Close()
			// the first entity value: a tenant's JSON document
			i := bytes.Index(b, []byte(`{"id":`))
			if i < 0 {
				return fmt.Errorf("no value to damage")
			}
			b[i+2] ^= 0x20 // "id" → "Id": still framed, the checksum fails
			resp.Body = io.NopCloser(bytes.NewReader(b))
			resp.ContentLength = int64(len(b))
			resp.Header.Del("Content-Length")
		}
		return nil
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/sync/snapshot" && sp.dropAccept.Load() {
			r.Header.Del("Accept")
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	sp.url = ts.URL
	return sp
}

func (sp *snapshotProxy) seen() []string {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return append([]string(nil), sp.types...)
}

// filePairs lists every pair of the data buckets of a closed tenancy file,
// and the revision, epoch and history hash it records.
func filePairs(t *testing.T, path string) map[string]string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string]string{}
	err = db.View(func(tx *bolt.Tx) error {
		for _, name := range tenancy.DataBuckets() {
			err := tx.Bucket([]byte(name)).ForEach(func(k, v []byte) error {
				out[name+"/"+string(k)] = string(v)
				return nil
			})
			if err != nil {
				return err
			}
		}
		out["meta/revision"] = fmt.Sprint(tenancy.Revision(tx))
		out["meta/epoch"] = tenancy.Epoch(tx)
		out["meta/hash"] = tenancy.HeadHash(tx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func samePairs(t *testing.T, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%q: the cache holds %.80q, the control endpoint %.80q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Fatalf("%q: in the cache, not at the control endpoint", k)
		}
	}
}

// A new sidecar bootstraps from a bulk snapshot (the control endpoint's
// buckets, key-ordered, loaded into full pages) while writes go on at the
// control endpoint, then follows the change stream: its buckets end equal
// to the control endpoint's, pair for pair (entities, secondary and policy
// indexes, with their revisions), at the same revision, epoch and history
// hash (NDJSON: the policy indexes hold the same documents). A sidecar whose Accept names only NDJSON (an older sidecar), or a
// control endpoint that answers NDJSON, gets the same data the old way.
func TestBulkBootstrapDuringWrites(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"bulk", "ndjson"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			p := startPlane(t, nil)
			p.batch(world)
			for i := range 6 { // 3,000 users with a grant each
				var ops []string
				for j := range 500 {
					id := fmt.Sprintf("w%d-%03d", i, j)
					ops = append(ops, fmt.Sprintf(`{"op":"put","collection":"users","value":{"id":%q,"tenant":"beta"}}`, id),
						fmt.Sprintf(`{"op":"put","collection":"user_grants","value":{"id":"ug-%s","user":%q,"project":"tk","tenant":"beta","roles":["developer"]}}`, id, id))
				}
				p.batch("[" + strings.Join(ops, ",") + "]")
			}
			sp := newSnapshotProxy(t, p.url)
			sp.dropAccept.Store(mode == "ndjson")

			stop := make(chan struct{})
			var writes sync.WaitGroup
			writes.Add(1)
			var last atomic.Uint64
			go func() { // writes during the snapshot, revocations among them
				defer writes.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if i%3 == 0 {
						last.Store(p.do("DELETE", fmt.Sprintf("/v1/user_grants/ug-w0-%03d", i/3), ""))
					} else {
						last.Store(p.filler(i))
					}
				}
			}()
			dir := t.TempDir()
			r := startReplica(t, p, dir, func(c *replica.SyncConfig) { c.ControlURL = sp.url })
			testutil.Eventually(t, 20*time.Second, func() (bool, string) {
				return r.store.State().Present, "no snapshot yet"
			})
			time.Sleep(50 * time.Millisecond)
			close(stop)
			writes.Wait()
			rev := last.Load()
			r.expect(rev, map[string]bool{"bob": true, "w0-000": false, "w5-499": true})
			media := tenancy.BulkMediaType
			if mode == "ndjson" {
				media = "application/x-ndjson"
			}
			if got := sp.seen(); len(got) != 1 || got[0] != media {
				t.Fatalf("snapshots answered as %q, want one %q", got, media)
			}
			r.stop()
			p.down()
			got, want := filePairs(t, filepath.Join(dir, replica.CacheFile)), filePairs(t, p.file())
			if mode == "ndjson" {
				// an NDJSON snapshot rebuilds the policy indexes: the same
				// documents, stamped with the revisions the sidecar wrote them at
				for _, m := range []map[string]string{got, want} {
					for k, v := range m {
						if strings.HasPrefix(k, "i/") {
							_, doc := tenancy.ModRevision([]byte(v))
							m[k] = string(doc)
						}
					}
				}
			}
			samePairs(t, got, want)
		})
	}
}

// A bulk snapshot whose values fail their checksums is discarded whole (the
// cache stays as it was); the next snapshot is taken as NDJSON, and later
// ones in bulk again.
func TestBulkSnapshotDamagedFallsBackToNDJSON(t *testing.T) {
	t.Parallel()
	p := startPlane(t, nil)
	rev := p.batch(world)
	sp := newSnapshotProxy(t, p.url)
	sp.damage.Store(1)
	dir := t.TempDir()
	r := startReplica(t, p, dir, func(c *replica.SyncConfig) { c.ControlURL = sp.url })
	r.expect(rev, map[string]bool{"bob": true})
	if got := sp.seen(); len(got) != 2 || got[0] != tenancy.BulkMediaType || got[1] != "application/x-ndjson" {
		t.Fatalf("snapshots answered as %q, want a (damaged) bulk one then NDJSON", got)
	}
	if got := testutil.MetricValue(t, r.reg, "gatehouse_sync_snapshots_total", map[string]string{"result": "error"}); got != 1 {
		t.Fatalf("%v failed snapshots, want 1", got)
	}
	r.stop()

	// a later bootstrap (the cache removed) is in bulk again
	r2 := startReplica(t, p, t.TempDir(), func(c *replica.SyncConfig) { c.ControlURL = sp.url })
	r2.expect(rev, map[string]bool{"bob": true})
	if got := sp.seen(); len(got) != 3 || got[2] != tenancy.BulkMediaType {
		t.Fatalf("snapshots answered as %q, want bulk last", got)
	}
}
