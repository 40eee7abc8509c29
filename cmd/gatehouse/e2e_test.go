package main

// End-to-end tests of the tenancy data plane (issue 3): a real control
// endpoint and real sidecars (the same wiring `serve` uses) on 127.0.0.1:0,
// real bbolt files, real RS256 tokens, the shipped policies.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/golang-jwt/jwt/v5"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

const e2eIssuer = "https://idp.e2e.test/"

// plane is one test's world: keys, tokens, a control endpoint.
type plane struct {
	t         *testing.T
	dir       string
	key       *rsa.PrivateKey
	pubFile   string
	adminFile string
	syncFile  string
	admin     string

	ctrl       *control.Server
	ctrlURL    string
	ctrlAddr   string
	stopCtrl   context.CancelFunc
	ctrlDone   chan error
	ctrlConfig control.Config
}

func newPlane(t *testing.T, cfg control.Config) *plane {
	t.Helper()
	p := &plane{t: t, dir: t.TempDir(), key: testutil.RSAKey(t, "e2e")}
	p.pubFile = filepath.Join(p.dir, "public.pem")
	testutil.WriteFile(t, p.pubFile, string(testutil.PublicKeyPEM(t, &p.key.PublicKey)))
	p.admin = "admin-secret-token"
	p.adminFile = filepath.Join(p.dir, "admin.token")
	p.syncFile = filepath.Join(p.dir, "sync.token")
	testutil.WriteFile(t, p.adminFile, p.admin)
	testutil.WriteFile(t, p.syncFile, "sync-secret-token")
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = filepath.Join(p.dir, "control")
	cfg.AdminTokenFile, cfg.SyncTokenFile = p.adminFile, p.syncFile
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 200 * time.Millisecond
	}
	p.ctrlConfig = cfg
	p.startControl()
	return p
}

// startControl starts (or restarts, on the same address and data) the
// control endpoint.
func (p *plane) startControl() {
	p.t.Helper()
	cfg := p.ctrlConfig
	if p.ctrlAddr != "" {
		cfg.Addr = p.ctrlAddr
	}
	srv, err := control.New(cfg, discardLogger())
	if err != nil {
		p.t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		p.t.Fatal(err)
	}
	p.ctrl, p.ctrlAddr = srv, srv.Addr().String()
	p.ctrlURL = "http://" + p.ctrlAddr
	ctx, cancel := context.WithCancel(context.Background())
	p.stopCtrl = cancel
	p.ctrlDone = make(chan error, 1)
	go func() { p.ctrlDone <- srv.Serve(ctx) }()
	p.t.Cleanup(p.stopControl)
}

func (p *plane) stopControl() {
	if p.stopCtrl == nil {
		return
	}
	p.stopCtrl()
	<-p.ctrlDone
	p.ctrl.Close()
	p.stopCtrl = nil
}

// call makes an admin API request and returns the status and decoded body.
func (p *plane) call(method, path string, body any) (int, map[string]any) {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, p.ctrlURL+path, rd)
	req.Header.Set("Authorization", "Bearer "+p.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (p *plane) seed() uint64 {
	p.t.Helper()
	var batch map[string]any
	if err := json.Unmarshal(devWorld, &batch); err != nil {
		p.t.Fatal(err)
	}
	st, out := p.call(http.MethodPost, "/v1/batch", batch)
	if st != http.StatusOK {
		p.t.Fatalf("seed: %d %v", st, out)
	}
	return uint64(out["revision"].(float64))
}

func (p *plane) token(sub string) string {
	return testutil.MintJWT(p.t, jwt.SigningMethodRS256, p.key, "", testutil.Claims(e2eIssuer, sub, nil))
}

// node is one running sidecar.
type node struct {
	sc     *sidecar
	conn   *grpc.ClientConn
	client authv3.AuthorizationClient
	cancel context.CancelFunc
	done   chan error
	store  *bundle.Store
}

func (p *plane) sidecarConfig(dataDir, controlURL string) ServeConfig {
	cfg := ServeConfig{
		Listen:   ListenConfig{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0", Ops: "127.0.0.1:0"},
		Policies: authz.PolicyConfig{Dir: "../../policies"},
		Data: DataConfig{Dir: dataDir, ControlURL: URLList(controlURL), TokenFile: p.syncFile,
			ReconnectMaxBackoff: 300 * time.Millisecond, MinRevisionWait: 2 * time.Second},
		Issuers: []authz.IssuerConfig{{Issuer: e2eIssuer, Audiences: []string{"api"}, Algorithms: []string{"RS256"}, PublicKeyFile: p.pubFile}},
		Log:     LogConfig{Level: "info", Format: "text"},
	}
	cfg.SetDefaults()
	return cfg
}

func (p *plane) startSidecar(cfg ServeConfig) *node {
	p.t.Helper()
	if err := cfg.Validate(); err != nil {
		p.t.Fatal(err)
	}
	sc, err := newSidecar(cfg, discardLogger())
	if err != nil {
		p.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{sc: sc, cancel: cancel, done: make(chan error, 1)}
	n.store, _ = sc.engine.Tenancy().(*bundle.Store)
	go func() { n.done <- sc.Run(ctx) }()
	conn, err := grpc.NewClient(sc.ext.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.t.Fatal(err)
	}
	n.conn, n.client = conn, authv3.NewAuthorizationClient(conn)
	p.t.Cleanup(n.stop)
	return n
}

func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	n.conn.Close()
	n.cancel = nil
}

func (n *node) waitRevision(t *testing.T, rev uint64) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		st := n.sc.engine.Tenancy().State()
		return st.Present && st.Revision >= rev, fmt.Sprintf("sidecar at %+v, want revision %d", st, rev)
	})
}

type verdict struct {
	allowed bool
	status  int
	reason  string
	roles   string
	rev     float64
	err     error
}

func (n *node) check(token, path, project, roles string, headers map[string]string) verdict {
	h := map[string]string{}
	for k, v := range headers {
		h[k] = v
	}
	if token != "" {
		h["authorization"] = "Bearer " + token
	}
	ext := map[string]string{"project": project}
	if roles != "" {
		ext["roles"] = roles
	}
	resp, err := n.client.Check(context.Background(), testutil.CheckRequest(testutil.Request{Path: path, Headers: h, ContextExtensions: ext}))
	if err != nil {
		return verdict{err: err}
	}
	v := verdict{allowed: resp.GetStatus().GetCode() == int32(code.Code_OK), rev: resp.GetDynamicMetadata().GetFields()["tenancy_revision"].GetNumberValue()}
	if ok := resp.GetOkResponse(); ok != nil {
		v.status = 200
		for _, hv := range ok.GetHeaders() {
			if hv.GetHeader().GetKey() == "x-gatehouse-roles" {
				v.roles = hv.GetHeader().GetValue()
			}
		}
	}
	if d := resp.GetDeniedResponse(); d != nil {
		v.status = int(d.GetStatus().GetCode())
		var body struct{ Reason string }
		_ = json.Unmarshal([]byte(d.GetBody()), &body)
		v.reason = body.Reason
	}
	return v
}

func TestE2ESeedCheckRevoke(t *testing.T) {
	t.Parallel()
	p := newPlane(t, control.Config{})
	rev := p.seed()
	n := p.startSidecar(p.sidecarConfig(filepath.Join(p.dir, "sidecar"), p.ctrlURL))
	n.waitRevision(t, rev)

	bob, alice, dave := p.token("bob"), p.token("alice"), p.token("dave")
	cases := map[string]struct {
		v       verdict
		allowed bool
		reason  string
	}{
		"bob in beta":               {n.check(bob, "/t/beta/entries", "timekeeping", "", nil), true, ""},
		"alice external accountant": {n.check(alice, "/t/beta/books", "timekeeping", "accountant", nil), true, ""},
		"bob needs accountant":      {n.check(bob, "/t/beta/books", "timekeeping", "accountant", nil), false, "role_required"},
		"customer on partner app":   {n.check(alice, "/t/alpha/x", "partner-app", "", nil), false, "tenant_not_granted"},
		"suspended user":            {n.check(dave, "/t/beta/entries", "timekeeping", "", nil), false, "user_inactive"},
		"no token":                  {n.check("", "/t/beta/entries", "timekeeping", "", nil), false, "missing_token"},
	}
	for name, c := range cases {
		if c.v.err != nil || c.v.allowed != c.allowed || c.v.reason != c.reason || uint64(c.v.rev) != rev {
			t.Errorf("%s: got %+v, want allowed=%v reason=%q at revision %d", name, c.v, c.allowed, c.reason, rev)
		}
	}

	// revoke: the delete answers with its revision; a check asking for it
	// (read your writes) sees the revocation without polling
	start := time.Now()
	st, out := p.call(http.MethodDelete, "/v1/user_grants/bob-tk", nil)
	if st != http.StatusOK {
		t.Fatalf("revoke: %d %v", st, out)
	}
	revoked := uint64(out["revision"].(float64))
	v := n.check(bob, "/t/beta/entries", "timekeeping", "", map[string]string{"x-gatehouse-min-revision": fmt.Sprint(revoked)})
	elapsed := time.Since(start)
	if v.allowed || v.reason != "no_role" || uint64(v.rev) < revoked {
		t.Fatalf("after revocation: %+v", v)
	}
	t.Logf("write at the control endpoint to a changed decision: %v", elapsed)

	// a revision that will not arrive: a 429 stale deny (SPEC §2), not an
	// error status that failure_mode_allow would turn into an allow
	v = n.check(bob, "/t/beta/entries", "timekeeping", "", map[string]string{"x-gatehouse-min-revision": fmt.Sprint(revoked + 100)})
	if v.err != nil || v.allowed || v.status != http.StatusTooManyRequests || v.reason != "stale" {
		t.Fatalf("unreachable min revision: %+v", v)
	}
}

func TestE2ERestartWithControlDown(t *testing.T) {
	t.Parallel()
	p := newPlane(t, control.Config{})
	rev := p.seed()
	data := filepath.Join(p.dir, "sidecar")
	n := p.startSidecar(p.sidecarConfig(data, p.ctrlURL))
	n.waitRevision(t, rev)
	n.stop()
	p.stopControl()

	start := time.Now()
	n2 := p.startSidecar(p.sidecarConfig(data, p.ctrlURL))
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		err := n2.sc.engine.Ready()
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("ready from the cache file with the control endpoint down in %v", time.Since(start))
	v := n2.check(p.token("bob"), "/t/beta/entries", "timekeeping", "", nil)
	if !v.allowed || uint64(v.rev) != rev {
		t.Fatalf("decision from the cache: %+v", v)
	}
	if n2.sc.engine.Tenancy().State().LastError == "" {
		testutil.Eventually(t, 5*time.Second, func() (bool, string) {
			return n2.sc.engine.Tenancy().State().LastError != "", "no sync error reported while the control endpoint is down"
		})
	}
}

func TestE2EStalenessAndRecovery(t *testing.T) {
	t.Parallel()
	p := newPlane(t, control.Config{Heartbeat: 100 * time.Millisecond})
	rev := p.seed()
	cfg := p.sidecarConfig(filepath.Join(p.dir, "sidecar"), p.ctrlURL)
	cfg.Data.MaxStaleness = 700 * time.Millisecond
	n := p.startSidecar(cfg)
	n.waitRevision(t, rev)
	bob := p.token("bob")
	if v := n.check(bob, "/t/beta/entries", "timekeeping", "", nil); !v.allowed {
		t.Fatalf("fresh: %+v", v)
	}
	p.stopControl()
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		v := n.check(bob, "/t/beta/entries", "timekeeping", "", nil)
		return status.Code(v.err) == codes.Unavailable, fmt.Sprintf("with the control endpoint down beyond max_staleness: %+v", v)
	})
	p.startControl()
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		v := n.check(bob, "/t/beta/entries", "timekeeping", "", nil)
		return v.allowed, fmt.Sprintf("after the control endpoint returned: %+v", v)
	})
}

func TestE2EHistoryGoneResnapshots(t *testing.T) {
	t.Parallel()
	p := newPlane(t, control.Config{History: 3})
	p.seed()
	data := filepath.Join(p.dir, "sidecar")
	n := p.startSidecar(p.sidecarConfig(data, p.ctrlURL))
	n.waitRevision(t, p.ctrl.Revision())
	n.stop()
	for i := range 10 {
		if st, out := p.call(http.MethodPut, fmt.Sprintf("/v1/users/u%d", i), map[string]any{"id": fmt.Sprintf("u%d", i), "tenant": "beta"}); st != 200 {
			t.Fatalf("write: %d %v", st, out)
		}
	}
	p.call(http.MethodDelete, "/v1/user_grants/bob-tk", nil)
	n2 := p.startSidecar(p.sidecarConfig(data, p.ctrlURL))
	n2.waitRevision(t, p.ctrl.Revision())
	if v := n2.check(p.token("bob"), "/t/beta/entries", "timekeeping", "", nil); v.allowed {
		t.Fatalf("after re-snapshot, the revoked grant still allows: %+v", v)
	}
}

// cutProxy forwards sidecar traffic to the control endpoint; while armed it
// cuts the change stream in the middle of the line of one revision.
type cutProxy struct {
	upstream string
	cutAt    atomic.Uint64 // revision whose line is cut; 0 = pass through
	cuts     atomic.Int32
}

func (c *cutProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, c.upstream+r.URL.RequestURI(), nil)
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	fl := w.(http.Flusher)
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if cut := c.cutAt.Load(); cut != 0 && bytes.Contains(line, []byte(fmt.Sprintf(`"type":"revision","revision":%d,`, cut))) {
				_, _ = w.Write(line[:len(line)/2])
				fl.Flush()
				c.cuts.Add(1)
				panic(http.ErrAbortHandler) // drop the connection mid-line
			}
			_, _ = w.Write(line)
			fl.Flush()
		}
		if err != nil {
			return
		}
	}
}

func TestE2ECutStreamNeverHalfApplies(t *testing.T) {
	t.Parallel()
	p := newPlane(t, control.Config{})
	rev := p.seed()
	proxy := &cutProxy{upstream: p.ctrlURL}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: proxy}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })

	n := p.startSidecar(p.sidecarConfig(filepath.Join(p.dir, "sidecar"), "http://"+lis.Addr().String()))
	n.waitRevision(t, rev)

	// one revision with many changes: new users and their grants
	var ops []map[string]any
	for i := range 300 {
		id := fmt.Sprintf("x%03d", i)
		ops = append(ops,
			map[string]any{"op": "put", "collection": "users", "value": map[string]any{"id": id, "tenant": "beta"}},
			map[string]any{"op": "put", "collection": "user_grants", "value": map[string]any{"id": "ug-" + id, "user": id, "project": "timekeeping", "tenant": "beta", "roles": []string{"developer"}}},
		)
	}
	proxy.cutAt.Store(rev + 1)
	if st, out := p.call(http.MethodPost, "/v1/batch", map[string]any{"ops": ops}); st != 200 {
		t.Fatalf("batch: %d %v", st, out)
	}
	testutil.Eventually(t, 5*time.Second, func() (bool, string) { return proxy.cuts.Load() >= 2, "the stream was not cut" })
	// while the revision keeps being cut, the cache stays at rev: none of
	// its 600 changes is visible
	if got := n.sc.engine.Tenancy().State().Revision; got != rev {
		t.Fatalf("cache at revision %d during cut streams, want %d", got, rev)
	}
	for _, id := range []string{"x000", "x150", "x299"} {
		if v := n.check(p.token(id), "/t/beta/entries", "timekeeping", "", nil); v.allowed || v.reason != "unknown_user" {
			t.Fatalf("%s visible from a cut revision: %+v", id, v)
		}
	}
	proxy.cutAt.Store(0)
	n.waitRevision(t, rev+1)
	for _, id := range []string{"x000", "x150", "x299"} {
		if v := n.check(p.token(id), "/t/beta/entries", "timekeeping", "", nil); !v.allowed {
			t.Fatalf("%s after the revision arrived whole: %+v", id, v)
		}
	}
}

func TestE2ECorruptCacheIsRebuilt(t *testing.T) {
	t.Parallel()
	corruptions := map[string]func(t *testing.T, file string){
		"meta pages": func(t *testing.T, file string) {
			f, err := os.OpenFile(file, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 8192), 0); err != nil {
				t.Fatal(err)
			}
		},
		"a data page in use": func(t *testing.T, file string) {
			db, err := bolt.Open(file, 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			var page int64
			_ = db.View(func(tx *bolt.Tx) error {
				page = int64(tx.Bucket([]byte("e/users")).Root())
				return nil
			})
			size := int64(db.Info().PageSize)
			db.Close()
			f, err := os.OpenFile(file, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(bytes.Repeat([]byte{0x5A}, int(size)), page*size); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, corrupt := range corruptions {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := newPlane(t, control.Config{})
			rev := p.seed()
			data := filepath.Join(p.dir, "sidecar")
			n := p.startSidecar(p.sidecarConfig(data, p.ctrlURL))
			n.waitRevision(t, rev)
			n.stop()
			corrupt(t, filepath.Join(data, bundle.CacheFile))

			n2 := p.startSidecar(p.sidecarConfig(data, p.ctrlURL))
			testutil.Eventually(t, 10*time.Second, func() (bool, string) {
				if n2.store.Corrupt() {
					return false, "cache still marked damaged"
				}
				if err := n2.store.CheckFile(); err != nil {
					return false, "cache fails its check: " + err.Error()
				}
				v := n2.check(p.token("bob"), "/t/beta/entries", "timekeeping", "", nil)
				return v.allowed, fmt.Sprintf("decision after rebuild: %+v", v)
			})
			if name == "meta pages" {
				m, _ := filepath.Glob(filepath.Join(data, bundle.CacheFile+".corrupt-*"))
				if len(m) != 1 {
					t.Fatalf("damaged file not set aside: %v", m)
				}
			}
		})
	}
}

func discardLogger() *slog.Logger {
	return newLogger(LogConfig{Level: "error", Format: "text"}, io.Discard)
}
