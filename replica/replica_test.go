package replica_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
	"github.com/gatehouse-dev/gatehouse/token"
)

// The tests of this file run the real control endpoint (its handler on a
// real socket, 127.0.0.1:0, so that it can be stopped, restored from a
// copy of its data directory and restarted behind the same address) and
// real sidecars: a replica.Store on a bbolt file, a Syncer, and an engine
// deciding with the shipped policies.

const (
	rpAdminToken = "replica-admin-token"
	rpSyncToken  = "replica-sync-token"
	rpIssuer     = "https://idp.replica/"
)

// plane is a control endpoint that can go down and come back (possibly
// from another data file) behind one address.
type plane struct {
	t   testing.TB
	cfg control.Config
	cur atomic.Pointer[control.Server]
	url string
	// block, when set, answers 503 to sync requests (the control endpoint
	// is unreachable for sidecars) while the admin API still works.
	block atomic.Bool
	// cut, when set, cuts change streams right after the first part of
	// that revision (cuts counts them).
	cut  atomic.Uint64
	cuts atomic.Int64
}

// cutWriter passes a change stream through until the first part of
// revision rev, then aborts the connection.
type cutWriter struct {
	http.ResponseWriter
	p   *plane
	rev uint64
}

func (c *cutWriter) Write(b []byte) (int, error) {
	marker := []byte(fmt.Sprintf(`{"type":"revision","revision":%d,`, c.rev))
	i := bytes.Index(b, marker)
	if i < 0 {
		return c.ResponseWriter.Write(b)
	}
	end := i + bytes.IndexByte(b[i:], '\n') + 1
	if !bytes.Contains(b[i:end], []byte(`"more":true`)) {
		return c.ResponseWriter.Write(b) // a revision of one part: nothing to cut inside
	}
	if _, err := c.ResponseWriter.Write(b[:end]); err != nil {
		return 0, err
	}
	c.ResponseWriter.(http.Flusher).Flush()
	c.p.cuts.Add(1)
	panic(http.ErrAbortHandler) // the connection is closed mid-revision
}

func (c *cutWriter) Flush()                      { c.ResponseWriter.(http.Flusher).Flush() }
func (c *cutWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func startPlane(t testing.TB, edit func(*control.Config)) *plane {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		testutil.WriteFile(t, p, content)
		return p
	}
	p := &plane{t: t, cfg: control.Config{
		DataDir:        filepath.Join(dir, "control"),
		AdminTokenFile: write("admin.token", rpAdminToken),
		SyncTokenFile:  write("sync.token", rpSyncToken),
		Heartbeat:      100 * time.Millisecond,
	}}
	if edit != nil {
		edit(&p.cfg)
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := p.cur.Load()
		if s == nil || (p.block.Load() && strings.HasPrefix(r.URL.Path, "/v1/sync/")) {
			http.Error(w, `{"error":"the control endpoint is down","code":"down"}`, http.StatusServiceUnavailable)
			return
		}
		if rev := p.cut.Load(); rev != 0 && r.URL.Path == "/v1/sync/changes" {
			w = &cutWriter{ResponseWriter: w, p: p, rev: rev}
		}
		s.Handler().ServeHTTP(w, r)
	}))
	p.url = ts.URL
	t.Cleanup(ts.Close)
	p.up()
	t.Cleanup(p.down)
	return p
}

// up starts the control endpoint on its data directory.
func (p *plane) up() {
	p.t.Helper()
	s, err := control.New(p.cfg, nil)
	if err != nil {
		p.t.Fatalf("control.New: %v", err)
	}
	p.cur.Store(s)
}

// down stops the control endpoint: its streams end, requests answer 503.
func (p *plane) down() {
	if s := p.cur.Swap(nil); s != nil {
		_ = s.Close()
	}
}

// file is the control endpoint's data file.
func (p *plane) file() string { return filepath.Join(p.cfg.DataDir, control.DBFile) }

// do sends an admin request and returns the revision it answered.
func (p *plane) do(method, path, body string) uint64 {
	p.t.Helper()
	req, err := http.NewRequest(method, p.url+path, strings.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+rpAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		p.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	var out struct {
		Revision uint64 `json:"revision"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		p.t.Fatalf("%s %s: %s: %v", method, path, b, err)
	}
	return out.Revision
}

// batch applies a JSON array of ops.
func (p *plane) batch(ops string) uint64 {
	p.t.Helper()
	return p.do("POST", "/v1/batch", `{"ops":`+ops+`}`)
}

// grantUser creates a user of beta with a developer grant on tk.
func (p *plane) grantUser(id string) uint64 {
	p.t.Helper()
	return p.batch(fmt.Sprintf(`[
	 {"op":"put","collection":"users","value":{"id":%q,"tenant":"beta"}},
	 {"op":"put","collection":"user_grants","value":{"id":"ug-%s","user":%q,"project":"tk","tenant":"beta","roles":["developer"]}}]`, id, id, id))
}

// filler writes an unrelated revision.
func (p *plane) filler(i int) uint64 {
	p.t.Helper()
	id := "filler-" + strconv.Itoa(i)
	return p.do("PUT", "/v1/users/"+id, fmt.Sprintf(`{"id":%q,"tenant":"acme"}`, id))
}

func (p *plane) revision() uint64 { return p.cur.Load().Revision() }

// sidecar is a replica: cache file, syncer and engine.
type sidecar struct {
	t      testing.TB
	dir    string
	store  *replica.Store
	syncer *replica.Syncer
	engine *authz.Engine
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

var (
	rpVerifierOnce sync.Once
	rpPubPEM       []byte
)

// startReplica starts a sidecar syncing from p into dir.
func startReplica(t testing.TB, p *plane, dir string, edit func(*replica.SyncConfig)) *sidecar {
	t.Helper()
	st, err := replica.OpenStore(replica.StoreConfig{Dir: dir}, discard())
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	r := &sidecar{t: t, dir: dir, store: st, reg: prometheus.NewRegistry(), done: make(chan struct{})}
	cfg := replica.SyncConfig{
		ControlURL: p.url, TokenFile: filepath.Join(filepath.Dir(p.cfg.DataDir), "sync.token"),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, IdleTimeout: 5 * time.Second,
		ResidentBudget: -1, Registerer: r.reg,
	}
	if edit != nil {
		edit(&cfg)
	}
	r.syncer = replica.NewSyncer(cfg, st, discard())
	r.engine = newEngine(t, st, rpVerifier(t), 0)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		_ = r.syncer.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop stops the syncer and closes the cache file.
func (r *sidecar) stop() {
	r.once.Do(func() {
		r.cancel()
		<-r.done
		_ = r.store.Close()
	})
}

func rpVerifier(tb testing.TB) *token.Verifier {
	tb.Helper()
	key := testutil.RSAKey(tb, "replica")
	rpVerifierOnce.Do(func() { rpPubPEM = testutil.PublicKeyPEM(tb, &key.PublicKey) })
	pemFile := filepath.Join(tb.TempDir(), "pub.pem")
	testutil.WriteFile(tb, pemFile, string(rpPubPEM))
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: []token.IssuerConfig{{
		Issuer: rpIssuer, Audiences: []string{"api"}, Algorithms: []string{"RS256"}, PublicKeyFile: pemFile,
	}}}, discard())
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func rpToken(tb testing.TB, sub string) string {
	tb.Helper()
	return testutil.MintJWT(tb, jwt.SigningMethodRS256, testutil.RSAKey(tb, "replica"), "", testutil.Claims(rpIssuer, sub, nil))
}

// decide asks whether sub may use project tk in tenant beta as a
// developer: allowed, denied, or an error (cannot decide).
func (r *sidecar) decide(sub string) (bool, error) {
	r.t.Helper()
	return decideDeveloper(r.t, r.engine, sub)
}

// decideDeveloper asks e whether sub may use project tk in tenant beta as
// a developer.
func decideDeveloper(tb testing.TB, e *authz.Engine, sub string) (bool, error) {
	tb.Helper()
	tok := rpToken(tb, sub)
	cr := worldgen.Request{Subject: sub, Path: "/t/beta/items/1", Context: map[string]string{"project": "tk", "roles": "developer"}}.CheckRequest(tok)
	in, err := envoy.Input(cr)
	if err != nil {
		tb.Fatal(err)
	}
	d, err := e.Decide(context.Background(), &authz.Request{Input: in, Authorization: "Bearer " + tok})
	if err != nil {
		return false, err
	}
	return d.Allowed, nil
}

// expect waits until every subject gets its expected decision (allowed or
// denied, never an error) and the cache is at revision rev.
func (r *sidecar) expect(rev uint64, want map[string]bool) {
	r.t.Helper()
	testutil.Eventually(r.t, 15*time.Second, func() (bool, string) {
		if got := r.store.State().Revision; got != rev {
			return false, fmt.Sprintf("cache at revision %d, want %d (last error %q)", got, rev, r.store.State().LastError)
		}
		for sub, allowed := range want {
			got, err := r.decide(sub)
			if err != nil || got != allowed {
				return false, fmt.Sprintf("%s: allowed=%v err=%v, want allowed=%v", sub, got, err, allowed)
			}
		}
		return true, ""
	})
}

func (r *sidecar) snapshots() float64 {
	return testutil.MetricValue(r.t, r.reg, "gatehouse_sync_snapshots_total", map[string]string{"result": "success"})
}

func copyFile(tb testing.TB, dst, src string) {
	tb.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// TestRestoredControlEndpointIsNeverSpliced: the control endpoint's data
// directory is restored from a copy, then written to. However many
// revisions the restored history reaches (fewer than the sidecar holds: its
// since is ahead; as many; more), the sidecar takes a new snapshot and
// decides from the restored history only: the grant revoked after the
// restore is denied, the grant made only in the lost history is gone, the
// grant made after the restore is allowed.
func TestRestoredControlEndpointIsNeverSpliced(t *testing.T) {
	t.Parallel()
	cases := map[string]int{ // restored history: revisions written after the restore
		"restored history shorter (since ahead)": 2,
		"restored history as long":               3,
		"restored history longer":                6,
	}
	for name, after := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := startPlane(t, nil)
			p.batch(world)
			r := startReplica(t, p, t.TempDir(), nil)
			r.expect(1, map[string]bool{"bob": true})

			backup := filepath.Join(t.TempDir(), "control.db.backup")
			p.down()
			copyFile(t, backup, p.file())
			p.up()

			// the history that will be lost: carol is granted, then unrelated writes
			p.grantUser("carol")
			p.filler(1)
			lost := p.filler(2)
			if lost != 4 {
				t.Fatalf("lost history ends at %d", lost)
			}
			r.expect(lost, map[string]bool{"bob": true, "carol": true})
			before := r.snapshots()

			p.down()
			copyFile(t, p.file(), backup)
			p.up()
			p.do("DELETE", "/v1/user_grants/ug-bob", "")
			rev := p.grantUser("dave")
			for i := 3; i <= after; i++ {
				rev = p.filler(100 + i)
			}
			if rev != uint64(1+after) {
				t.Fatalf("restored history at %d, want %d", rev, 1+after)
			}
			r.expect(rev, map[string]bool{"bob": false, "carol": false, "dave": true})
			testutil.Eventually(t, 5*time.Second, func() (bool, string) {
				got := r.snapshots()
				return got > before, fmt.Sprintf("no new snapshot (snapshots %v, before the restore %v)", got, before)
			})
			// and it goes on following the restored history
			rev = p.grantUser("erin")
			r.expect(rev, map[string]bool{"bob": false, "dave": true, "erin": true})
		})
	}
}

// TestApplyRefusesAnotherHistory: the store recomputes the history hash of
// every revision it applies; a revision of another history (the same
// revision number, other changes or another predecessor), or one whose
// changes were altered, is refused whole with ErrDiverged.
func TestApplyRefusesAnotherHistory(t *testing.T) {
	t.Parallel()
	src := newSource(t)
	src.write(world)
	other := newSource(t)
	other.write(world)
	other.write(`[{"op":"put","collection":"users","value":{"id":"zed","tenant":"acme"}}]`)
	r3other := other.write(`[{"op":"delete","collection":"user_grants","id":"ug-alice"}]`)

	st := openStore(t, t.TempDir())
	loadSnapshot(t, st, src)
	r2 := src.write(`[{"op":"delete","collection":"user_grants","id":"ug-bob"}]`)
	tampered := r2
	tampered.Changes = []tenancy.Change{{Op: "delete", Collection: "user_grants", ID: "ug-alice"}}
	foreign := r3other
	foreign.Revision = 2 // the right number, another history's revision
	cases := map[string]tenancy.FeedLine{
		"altered changes":            tampered,
		"another history's revision": foreign,
		"a hash from elsewhere":      {Type: tenancy.LineRevision, Revision: 2, Changes: r2.Changes, Hash: r3other.Hash},
	}
	for name, l := range cases {
		if err := st.ApplyRevisions([]tenancy.FeedLine{l}, time.Now()); !errors.Is(err, replica.ErrDiverged) {
			t.Fatalf("%s: %v, want ErrDiverged", name, err)
		}
		if st.State().Revision != 1 {
			t.Fatalf("%s: applied", name)
		}
		if _, err := read(t, st, "user_grants", "ug-bob"); err != nil {
			t.Fatalf("%s: revision half-applied: %v", name, err)
		}
	}
	if err := st.ApplyRevisions([]tenancy.FeedLine{r2}, time.Now()); err != nil {
		t.Fatalf("the revision of the cache's own history: %v", err)
	}
}
