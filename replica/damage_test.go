package replica_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
	"github.com/gatehouse-dev/gatehouse/token"
)

// A sidecar whose cache file is damaged never decides from it: it sets the
// file aside and stops deciding (not ready, checks answer UNAVAILABLE)
// until it has rebuilt the data from a snapshot.

// checkCode sends a gRPC Check for bob (developer on tk in beta) to an
// ext_authz server over st and returns its status code (OK for any
// CheckResponse, allow or deny).
func checkCode(t *testing.T, st *replica.Store) codes.Code {
	t.Helper()
	pemFile := filepath.Join(t.TempDir(), "pub.pem")
	key := testutil.RSAKey(t, "replica")
	testutil.WriteFile(t, pemFile, string(testutil.PublicKeyPEM(t, &key.PublicKey)))
	sc := testutil.StartSidecar(t, testutil.Options{
		PolicyDir: policyDir(),
		Tenancy:   st,
		Engine:    authz.Config{Builtins: replica.Builtins()},
		Issuers:   []token.IssuerConfig{{Issuer: rpIssuer, Audiences: []string{"api"}, Algorithms: []string{"RS256"}, PublicKeyFile: pemFile}},
	})
	defer sc.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := sc.Check(ctx, testutil.Request{
		Path:              "/t/beta/items/1",
		Headers:           map[string]string{"authorization": "Bearer " + rpToken(t, "bob")},
		ContextExtensions: map[string]string{"project": "tk", "roles": "developer"},
	})
	return status.Code(err)
}

// cacheWithWorld returns a data directory holding a cache file synced from
// p (at p's current revision), the sidecar stopped.
func cacheWithWorld(t *testing.T, p *plane) string {
	t.Helper()
	dir := t.TempDir()
	r := startReplica(t, p, dir, nil)
	r.expect(p.revision(), map[string]bool{"bob": true})
	r.stop()
	return dir
}

// dataBytes is the size of the pages a bbolt file uses (its high-water mark).
func dataBytes(t *testing.T, file string) int64 {
	t.Helper()
	db, err := bolt.Open(file, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int64
	_ = db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

func setAside(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, replica.CacheFile+".corrupt-*"))
	return m
}

// TestTruncatedCacheIsSetAside: a cache file cut short (a full disk, a
// torn copy) is detected before bbolt maps it (a page beyond the end of
// the file would be a fault that kills the process): the sidecar starts,
// sets the file aside, is not ready while the control endpoint is down
// (checks answer UNAVAILABLE), and becomes ready from a snapshot.
func TestTruncatedCacheIsSetAside(t *testing.T) {
	t.Parallel()
	p := startPlane(t, nil)
	p.batch(world)
	cuts := map[string]func(data int64) int64{
		"to half":             func(data int64) int64 { return data / 2 },
		"one page short":      func(data int64) int64 { return data - int64(os.Getpagesize()) },
		"to the meta pages":   func(int64) int64 { return 2 * int64(os.Getpagesize()) },
		"to half a meta page": func(int64) int64 { return int64(os.Getpagesize()) / 2 },
	}
	for name, cut := range cuts {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := cacheWithWorld(t, p)
			file := filepath.Join(dir, replica.CacheFile)
			if err := os.Truncate(file, cut(dataBytes(t, file))); err != nil {
				t.Fatal(err)
			}

			// the control endpoint is unreachable: no data, no decision
			p2 := startPlane(t, nil)
			p2.block.Store(true)
			r := startReplica(t, p2, dir, nil)
			if len(setAside(t, dir)) != 1 {
				t.Fatalf("the truncated file was not set aside: %v", setAside(t, dir))
			}
			if err := r.engine.Ready(); err == nil {
				t.Fatal("ready without data")
			}
			if _, err := r.decide("bob"); err == nil {
				t.Fatal("decided without data")
			}
			if code := checkCode(t, r.store); code != codes.Unavailable {
				t.Fatalf("Check answered %v, want UNAVAILABLE", code)
			}
			r.stop()

			// with the control endpoint, it rebuilds from a snapshot
			r = startReplica(t, p, dir, nil)
			r.expect(p.revision(), map[string]bool{"bob": true, "alice": false})
			if err := r.engine.Ready(); err != nil {
				t.Fatalf("not ready after the snapshot: %v", err)
			}
		})
	}
}

// flipInValue flips one bit of the document stored under key whose
// document starts with docPrefix (a leaf page holds each key followed by
// its value: revision, tag, checksum, document), docByte bytes into it.
func flipInValue(t *testing.T, file string, key, docPrefix []byte, docByte int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	at := -1
	for i := 0; ; {
		j := bytes.Index(b[i:], key)
		if j < 0 {
			break
		}
		i += j
		if bytes.HasPrefix(b[i+len(key)+13:], docPrefix) {
			if at >= 0 {
				t.Fatalf("key %q with document %q found twice", key, docPrefix)
			}
			at = i + len(key) + 13
		}
		i++
	}
	if at < 0 {
		t.Fatalf("key %q with document %q not found", key, docPrefix)
	}
	b[at+docByte] ^= 0x20
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedValueIsNeverServed: a bit flipped inside a stored value
// passes bbolt's consistency check (bbolt has no checksums on data pages);
// the value's checksum catches it at the first read: that decision cannot
// be made (an error, never an allow or a deny from damaged data), the
// sidecar stops deciding (not ready, UNAVAILABLE) until it has set the file
// aside and rebuilt it from a snapshot.
func TestDamagedValueIsNeverServed(t *testing.T) {
	t.Parallel()
	p := startPlane(t, nil)
	p.batch(world)
	cases := map[string]struct {
		key, doc string
		at       int
	}{
		// index.user_roles[bob][tk][beta] = ["developer"] becomes ["Developer"]
		"a policy index value": {"bob\x00tk\x00beta", `["developer"]`, 2},
		// users[bob]: its tenant becomes "Beta"
		"an entity value": {"bob", `{"id":"bob","tenant":"beta"`, 22},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := cacheWithWorld(t, p)
			file := filepath.Join(dir, replica.CacheFile)
			flipInValue(t, file, []byte(c.key), []byte(c.doc), c.at)
			// bbolt's own check does not see it
			db, err := bolt.Open(file, 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			_ = db.View(func(tx *bolt.Tx) error {
				for e := range tx.Check() {
					t.Fatalf("bbolt's check found it: %v", e)
				}
				if err := tenancy.VerifyFile(tx); err == nil {
					t.Fatal("the value checksums did not")
				}
				return nil
			})
			db.Close()

			p2 := startPlane(t, nil)
			p2.block.Store(true)
			r := startReplica(t, p2, dir, nil)
			if err := r.engine.Ready(); err != nil {
				t.Fatalf("not ready before the damage was read: %v", err)
			}
			if ok, err := r.decide("bob"); err == nil {
				t.Fatalf("decided (allowed=%v) from a damaged value", ok)
			}
			if err := r.engine.Ready(); err == nil {
				t.Fatal("still ready after damage was found")
			}
			if code := checkCode(t, r.store); code != codes.Unavailable {
				t.Fatalf("Check answered %v, want UNAVAILABLE", code)
			}
			r.stop()

			r = startReplica(t, p, dir, nil)
			r.expect(p.revision(), map[string]bool{"bob": true, "alice": false})
			if len(setAside(t, dir)) != 1 {
				t.Fatalf("the damaged file was not set aside: %v", setAside(t, dir))
			}
			if err := r.store.CheckFile(t.Context()); err != nil {
				t.Fatalf("rebuilt file: %v", err)
			}
		})
	}
}

// TestFailedCheckStopsDeciding: a file that fails its consistency check
// (a data page overwritten) stops serving at once, also while the control
// endpoint is down, and is rebuilt when it is back.
func TestFailedCheckStopsDeciding(t *testing.T) {
	t.Parallel()
	p := startPlane(t, nil)
	p.batch(world)
	for i := range 40 { // enough users for their bucket to have pages of its own
		p.filler(i)
	}
	dir := cacheWithWorld(t, p)
	file := filepath.Join(dir, replica.CacheFile)
	db, err := bolt.Open(file, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var page int64
	_ = db.View(func(tx *bolt.Tx) error { page = int64(tx.Bucket([]byte("e/users")).Root()); return nil })
	if page < 2 {
		t.Fatalf("users bucket root page %d: inline", page)
	}
	size := int64(db.Info().PageSize)
	db.Close()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5A}, int(size)), page*size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	p.block.Store(true)
	r := startReplica(t, p, dir, func(c *replica.SyncConfig) { c.CheckOnStart = true })
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		return r.store.Corrupt(), "the check did not find the damage"
	})
	if err := r.engine.Ready(); err == nil {
		t.Fatal("ready on a file that failed its check")
	}
	if ok, err := r.decide("bob"); err == nil {
		t.Fatalf("decided (allowed=%v) from a file that failed its check", ok)
	}
	if code := checkCode(t, r.store); code != codes.Unavailable {
		t.Fatalf("Check answered %v, want UNAVAILABLE", code)
	}
	p.block.Store(false)
	r.expect(p.revision(), map[string]bool{"bob": true, "alice": false})
	if len(setAside(t, dir)) != 1 {
		t.Fatalf("the damaged file was not set aside: %v", setAside(t, dir))
	}
	if st := r.store.State(); !st.Present || st.LastError != "" {
		t.Fatalf("state after the rebuild: %+v", st)
	}
}
