package bundle_test

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

const (
	pbAdminToken = "bundle-admin-token"
	pbSyncToken  = "bundle-sync-token"
)

// pbPlane is a real control endpoint hosting bundles.
type pbPlane struct {
	base          string
	syncTokenFile string
}

func pbStartControl(tb testing.TB) *pbPlane {
	tb.Helper()
	dir := tb.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		testutil.WriteFile(tb, p, content)
		return p
	}
	srv, err := control.New(control.Config{
		Addr:           "127.0.0.1:0",
		DataDir:        filepath.Join(dir, "control"),
		AdminTokenFile: write("admin.token", pbAdminToken),
		SyncTokenFile:  write("sync.token", pbSyncToken+"\n"),
	}, nil)
	if err != nil {
		tb.Fatalf("control.New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		tb.Fatalf("control Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("control Serve: %v", err)
		}
		_ = srv.Close()
	})
	return &pbPlane{base: "http://" + srv.Addr().String(), syncTokenFile: filepath.Join(dir, "sync.token")}
}

func (p *pbPlane) url(name string) string { return p.base + "/v1/bundles/" + name }

// put publishes a bundle as an operator does (admin token).
func (p *pbPlane) put(tb testing.TB, name string, tarball []byte) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPut, p.url(name), bytes.NewReader(tarball))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+pbAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("PUT bundle: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("PUT bundle: %s", resp.Status)
	}
}

// pbSidecar is an engine fed by a PolicySource.
type pbSidecar struct {
	engine *authz.Engine
	src    *bundle.PolicySource
	reg    *prometheus.Registry
}

// pbNewSidecar returns a sidecar engine polling url, trusting pub, with
// the sync token.
func pbNewSidecar(tb testing.TB, p *pbPlane, url string, pub crypto.PublicKey, edit func(*bundle.PolicySourceConfig)) *pbSidecar {
	tb.Helper()
	logger, _ := testutil.Logger(tb)
	reg := prometheus.NewRegistry()
	engine := authz.New(authz.Config{Registerer: reg, DecisionCacheEntries: -1}, nil, nil, logger)
	keyFile := filepath.Join(tb.TempDir(), "bundle.pub.pem")
	testutil.WriteFile(tb, keyFile, string(testutil.PublicKeyPEM(tb, pub)))
	cfg := bundle.PolicySourceConfig{
		Policies: bundle.PolicyConfig{Bundle: bundle.BundleSourceConfig{
			URL: url, PublicKeyFile: keyFile, TokenFile: p.syncTokenFile, Poll: 20 * time.Millisecond,
		}},
		Registerer: reg,
	}
	if edit != nil {
		edit(&cfg)
	}
	src, err := bundle.NewPolicySource(cfg, engine, logger)
	if err != nil {
		tb.Fatalf("NewPolicySource: %v", err)
	}
	return &pbSidecar{engine: engine, src: src, reg: reg}
}

// decide returns the decision on an empty request and its policy revision.
func (s *pbSidecar) decide(tb testing.TB) (bool, string) {
	tb.Helper()
	d, err := s.engine.Decide(tb.Context(), &authz.Request{Input: ast.NewObject()})
	if err != nil {
		tb.Fatalf("Decide: %v", err)
	}
	return d.Allowed, d.PolicyRevision
}

func (s *pbSidecar) downloads(tb testing.TB, result string) float64 {
	tb.Helper()
	return testutil.MetricValue(tb, s.reg, "gatehouse_bundle_downloads_total", map[string]string{"result": result})
}

func (s *pbSidecar) loads(tb testing.TB, result string) float64 {
	tb.Helper()
	return testutil.MetricValue(tb, s.reg, "gatehouse_policy_loads_total", map[string]string{"result": result})
}

// pbSigned builds the standard policy (open or closed) signed by key.
func pbSigned(tb testing.TB, key crypto.Signer, open bool, revision string) []byte {
	tb.Helper()
	b, _ := pbBuild(tb, bundle.BuildConfig{Dir: testutil.PolicyDir(tb, pbPolicy(open)), Revision: revision, Signer: pbSigner(tb, key, "", "")})
	return b
}

// TestPolicyBundleSourcePicksUp: build → PUT to the control endpoint → the
// sidecar's engine runs it; a new version changes the decisions, and the
// manifest revision is the engine's revision and every decision's.
func TestPolicyBundleSourcePicksUp(t *testing.T) {
	t.Parallel()
	key := pbKey(t, "rsa", "a")
	plane := pbStartControl(t)
	sc := pbNewSidecar(t, plane, plane.url("main"), key.Public(), nil)

	for i, step := range []struct {
		open     bool
		revision string
	}{{false, "2026-01-01.1"}, {true, "2026-01-01.2"}, {false, "2026-01-01.3"}} {
		plane.put(t, "main", pbSigned(t, key, step.open, step.revision))
		if err := sc.src.Load(t.Context()); err != nil {
			t.Fatalf("step %d: Load: %v", i, err)
		}
		st := sc.engine.PolicyStatus()
		if st.Revision != step.revision || st.LastError != "" {
			t.Fatalf("step %d: status %+v, want revision %s", i, st, step.revision)
		}
		allowed, rev := sc.decide(t)
		if allowed != step.open || rev != step.revision {
			t.Fatalf("step %d: allowed %v on revision %s, want %v on %s", i, allowed, rev, step.open, step.revision)
		}
	}
	if got := sc.downloads(t, bundle.DownloadUpdated); got != 3 {
		t.Fatalf("updated downloads %v, want 3", got)
	}
}

// TestPolicyBundleSourceRefuses: a bundle that is unsigned, tampered,
// signed with another key, whose signature and files disagree, or whose
// policy does not compile is refused with a clear last_error; the last
// good policy keeps serving; the refused bundle is fetched again at the
// next poll (not a 304) without re-reporting; a good bundle then applies.
func TestPolicyBundleSourceRefuses(t *testing.T) {
	t.Parallel()
	key := pbKey(t, "rsa", "a")
	plane := pbStartControl(t)
	good := pbSigned(t, key, true, "bad-candidate")
	broken := func() []byte {
		var buf bytes.Buffer
		files := []bundle.File{
			{Name: "envoy/authz.rego", Content: []byte("package envoy.authz\n\nallow if {\n\tcount(1) > 0\n}\n")},
			{Name: ".manifest", Content: []byte(`{"revision": "broken", "roots": ["envoy"]}`)},
		}
		if err := bundle.WriteBundle(&buf, files, pbSigner(t, key, "", "")); err != nil { // signed, never compiled
			t.Fatal(err)
		}
		return buf.Bytes()
	}()
	cases := map[string]struct {
		bad  []byte
		want []string
	}{
		"unsigned": {
			bad: func() []byte {
				b, _ := pbBuild(t, bundle.BuildConfig{Dir: testutil.PolicyDir(t, pbPolicy(true))})
				return b
			}(),
			want: []string{"bundle is not signed", "no .signatures.json", "unsigned bundles are refused"},
		},
		"tampered rego": {
			bad: pbEdit(t, good, func(es []pbEntry) []pbEntry {
				for i := range es {
					if es[i].name == "envoy/authz.rego" {
						es[i].content = append(es[i].content, "\nallow if true\n"...)
					}
				}
				return es
			}),
			want: []string{"bundle files do not match their signature", "envoy/authz.rego: digest mismatch"},
		},
		"wrong key": {
			bad:  pbSigned(t, pbKey(t, "rsa", "intruder"), true, "intruder"),
			want: []string{"bundle signature does not verify with the key(s) in", "bundle.pub.pem", "verification error"},
		},
		"listed file missing": {
			bad: pbEdit(t, good, func(es []pbEntry) []pbEntry {
				return slices.DeleteFunc(es, func(e pbEntry) bool { return e.name == "lib/gates.rego" })
			}),
			want: []string{"lib/gates.rego is listed in the signature but missing from the bundle"},
		},
		"file not listed": {
			bad: pbEdit(t, good, func(es []pbEntry) []pbEntry {
				return append(es, pbEntry{"envoy/backdoor.rego", []byte("package envoy.authz\n\nallow if input.backdoor\n")})
			}),
			want: []string{"envoy/backdoor.rego is not listed in the signature"},
		},
		"does not compile": {
			bad:  broken,
			want: []string{"envoy/authz.rego:4", "rego_type_error"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			bundleName := strings.ReplaceAll(name, " ", "-")
			sc := pbNewSidecar(t, plane, plane.url(bundleName), key.Public(), nil)
			plane.put(t, bundleName, pbSigned(t, key, false, "good-1"))
			if err := sc.src.Load(t.Context()); err != nil {
				t.Fatalf("good bundle: %v", err)
			}

			plane.put(t, bundleName, tc.bad)
			for poll := 1; poll <= 2; poll++ {
				err := sc.src.Load(t.Context())
				if err == nil {
					t.Fatalf("poll %d: the bad bundle was applied", poll)
				}
				st := sc.engine.PolicyStatus()
				if poll == 1 {
					t.Logf("last_error: %s", st.LastError)
				}
				for _, w := range tc.want {
					if !strings.Contains(st.LastError, w) {
						t.Errorf("poll %d: last_error %q does not say %q", poll, st.LastError, w)
					}
				}
				if !strings.Contains(st.LastError, "refused") || !strings.Contains(st.LastError, plane.url(bundleName)) {
					t.Errorf("last_error %q does not say which bundle was refused", st.LastError)
				}
				if allowed, rev := sc.decide(t); allowed || rev != "good-1" || st.Revision != "good-1" {
					t.Fatalf("poll %d: serving allowed=%v revision %s (status %s), want the last good (false, good-1)", poll, allowed, rev, st.Revision)
				}
				if got := sc.downloads(t, bundle.DownloadRefused); got != float64(poll) {
					t.Fatalf("poll %d: refused downloads %v (the refused bundle must be fetched again, not answered 304)", poll, got)
				}
			}
			if got := sc.loads(t, "error"); got != 1 {
				t.Errorf("policy load errors %v: the same refusal should be reported once", got)
			}

			plane.put(t, bundleName, pbSigned(t, key, true, "good-2"))
			if err := sc.src.Load(t.Context()); err != nil {
				t.Fatalf("good bundle after a refusal: %v", err)
			}
			if allowed, rev := sc.decide(t); !allowed || rev != "good-2" || sc.engine.PolicyStatus().LastError != "" {
				t.Fatalf("after recovery: allowed=%v revision %s last_error %q", allowed, rev, sc.engine.PolicyStatus().LastError)
			}
		})
	}
}

// TestPolicyBundleSourceNotModified: polling an unchanged bundle gets 304:
// no download, no recompile (the very same policy set stays active).
func TestPolicyBundleSourceNotModified(t *testing.T) {
	t.Parallel()
	key := pbKey(t, "rsa", "a")
	plane := pbStartControl(t)
	sc := pbNewSidecar(t, plane, plane.url("main"), key.Public(), nil)
	plane.put(t, "main", pbSigned(t, key, true, "r1"))
	if err := sc.src.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	first := sc.engine.Policy()
	for range 3 {
		if err := sc.src.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if sc.engine.Policy() != first {
		t.Fatal("an unchanged bundle was recompiled")
	}
	if got := sc.downloads(t, bundle.DownloadNotModified); got != 3 {
		t.Fatalf("not_modified %v, want 3", got)
	}
	if got, want := sc.loads(t, "success"), 1.0; got != want {
		t.Fatalf("policy loads %v, want %v", got, want)
	}
	// Re-publishing the same bytes keeps the ETag: still 304.
	plane.put(t, "main", pbSigned(t, key, true, "r1"))
	if err := sc.src.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	if sc.engine.Policy() != first || sc.downloads(t, bundle.DownloadNotModified) != 4 {
		t.Fatal("a rebuilt identical bundle was downloaded again or recompiled")
	}
}

// TestPolicyBundleSourceDownloadErrors: an unreachable endpoint, an unknown
// bundle or a missing token are reported, counted as errors, and the last
// good policy keeps serving; when the endpoint serves the applied bundle
// again, the error clears without a recompile.
func TestPolicyBundleSourceDownloadErrors(t *testing.T) {
	t.Parallel()
	key := pbKey(t, "rsa", "a")
	plane := pbStartControl(t)
	plane.put(t, "main", pbSigned(t, key, true, "r1"))

	// A port that refuses connections.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + l.Addr().String() + "/v1/bundles/main"
	l.Close()

	cases := map[string]struct {
		url  string
		edit func(*bundle.PolicySourceConfig)
		want string
	}{
		"unknown bundle": {plane.url("nope"), nil, `404 Not Found: {"error":"bundle \"nope\" does not exist"`},
		"no token":       {plane.url("main"), func(c *bundle.PolicySourceConfig) { c.Policies.Bundle.TokenFile = "" }, "401 Unauthorized"},
		"missing token file": {plane.url("main"), func(c *bundle.PolicySourceConfig) {
			c.Policies.Bundle.TokenFile = filepath.Join(t.TempDir(), "absent")
		}, "policy bundle token: open"},
		"endpoint down": {down, nil, "connection refused"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sc := pbNewSidecar(t, plane, tc.url, key.Public(), tc.edit)
			if err := sc.src.Load(t.Context()); err == nil {
				t.Fatal("Load succeeded")
			}
			st := sc.engine.PolicyStatus()
			if !strings.Contains(st.LastError, tc.want) || st.Revision != "" {
				t.Fatalf("status %+v, want last_error with %q", st, tc.want)
			}
			if got := sc.downloads(t, bundle.DownloadError); got != 1 {
				t.Fatalf("error downloads %v", got)
			}
		})
	}

	t.Run("recovery", func(t *testing.T) {
		t.Parallel()
		tokenFile := filepath.Join(t.TempDir(), "token")
		testutil.WriteFile(t, tokenFile, pbSyncToken)
		sc := pbNewSidecar(t, plane, plane.url("main"), key.Public(), func(c *bundle.PolicySourceConfig) { c.Policies.Bundle.TokenFile = tokenFile })
		if err := sc.src.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		active := sc.engine.Policy()
		testutil.WriteFile(t, tokenFile, "revoked")
		if err := sc.src.Load(t.Context()); err == nil || !strings.Contains(sc.engine.PolicyStatus().LastError, "401") {
			t.Fatalf("revoked token: %v, status %+v", err, sc.engine.PolicyStatus())
		}
		if allowed, rev := sc.decide(t); !allowed || rev != "r1" {
			t.Fatal("the last good policy stopped serving")
		}
		testutil.WriteFile(t, tokenFile, pbSyncToken) // rotated back: re-read at the next poll
		if err := sc.src.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		if st := sc.engine.PolicyStatus(); st.LastError != "" || st.Revision != "r1" || sc.engine.Policy() != active {
			t.Fatalf("after recovery: %+v (recompiled: %v)", st, sc.engine.Policy() != active)
		}
	})
}

// TestPolicyBundleSourceRestore: the last applied bundle is kept in the
// data dir; a restarted sidecar whose bundle server is down serves it
// (verified again), and a tampered copy is not used.
func TestPolicyBundleSourceRestore(t *testing.T) {
	t.Parallel()
	key := pbKey(t, "rsa", "a")
	plane := pbStartControl(t)
	dataDir := filepath.Join(t.TempDir(), "var")
	withData := func(c *bundle.PolicySourceConfig) { c.DataDir = dataDir }
	plane.put(t, "main", pbSigned(t, key, true, "persisted-1"))
	first := pbNewSidecar(t, plane, plane.url("main"), key.Public(), withData)
	if err := first.src.Load(t.Context()); err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dataDir, bundle.PersistedBundleFile)
	if _, err := os.Stat(copyPath); err != nil {
		t.Fatalf("no persisted copy: %v", err)
	}

	// Restart with the endpoint unreachable.
	downURL := "http://127.0.0.1:1/v1/bundles/main"
	second := pbNewSidecar(t, plane, downURL, key.Public(), withData)
	if err := second.src.Restore(); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if allowed, rev := second.decide(t); !allowed || rev != "persisted-1" {
		t.Fatalf("restored: allowed=%v revision %s", allowed, rev)
	}
	if err := second.src.Load(t.Context()); err == nil {
		t.Fatal("download from a closed port succeeded")
	}
	if allowed, _ := second.decide(t); !allowed {
		t.Fatal("the restored policy stopped serving")
	}

	// A copy tampered with on disk, or one the key no longer verifies, is
	// not used.
	cases := map[string]struct {
		content []byte
		pub     crypto.PublicKey
		want    error
	}{
		"tampered": {pbEdit(t, mustRead(t, copyPath), func(es []pbEntry) []pbEntry {
			for i := range es {
				if es[i].name == "static/gate/data.json" {
					es[i].content = []byte(`{"open": false}`)
				}
			}
			return es
		}), key.Public(), bundle.ErrTampered},
		"key rotated away": {mustRead(t, copyPath), pbKey(t, "rsa", "next").Public(), bundle.ErrSignature},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			testutil.WriteFile(t, filepath.Join(dir, bundle.PersistedBundleFile), string(tc.content))
			sc := pbNewSidecar(t, plane, downURL, tc.pub, func(c *bundle.PolicySourceConfig) { c.DataDir = dir })
			if err := sc.src.Restore(); !errors.Is(err, tc.want) {
				t.Fatalf("Restore: %v, want %v", err, tc.want)
			}
			if sc.engine.Policy() != nil {
				t.Fatal("an unverified copy is serving")
			}
		})
	}
}

func mustRead(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestPolicyBundleSourceRun: the polling loop picks up a published bundle
// without being asked, and stops with its context.
func TestPolicyBundleSourceRun(t *testing.T) {
	t.Parallel()
	key := pbKey(t, "ec", "run")
	plane := pbStartControl(t)
	plane.put(t, "main", pbSigned(t, key, false, "run-1"))
	sc := pbNewSidecar(t, plane, plane.url("main"), key.Public(), nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sc.src.Run(ctx) }()
	waitRevision := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for sc.engine.PolicyStatus().Revision != want {
			if time.Now().After(deadline) {
				t.Fatalf("revision %q, want %q", sc.engine.PolicyStatus().Revision, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitRevision("run-1")
	plane.put(t, "main", pbSigned(t, key, true, "run-2"))
	waitRevision("run-2")
	if allowed, _ := sc.decide(t); !allowed {
		t.Fatal("run-2 not serving")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestPolicyBundleSourceConfig: configuration problems are found at start.
func TestPolicyBundleSourceConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pub := filepath.Join(dir, "pub.pem")
	testutil.WriteFile(t, pub, string(testutil.PublicKeyPEM(t, pbKey(t, "rsa", "a").Public())))
	priv := filepath.Join(dir, "priv.pem")
	testutil.WriteFile(t, priv, string(pbPrivatePEM(t, pbKey(t, "rsa", "a"))))
	cases := map[string]struct {
		bundle bundle.BundleSourceConfig
		want   string
	}{
		"not http":         {bundle.BundleSourceConfig{URL: "file:///tmp/b.tar.gz", PublicKeyFile: pub}, "is not an http(s) URL"},
		"no key file":      {bundle.BundleSourceConfig{URL: "http://127.0.0.1:1/b"}, "public_key_file is required"},
		"absent key file":  {bundle.BundleSourceConfig{URL: "http://127.0.0.1:1/b", PublicKeyFile: filepath.Join(dir, "nope.pem")}, "no such file"},
		"private key file": {bundle.BundleSourceConfig{URL: "http://127.0.0.1:1/b", PublicKeyFile: priv}, "give the sidecar only the public key"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := bundle.NewPolicySource(bundle.PolicySourceConfig{Policies: bundle.PolicyConfig{Bundle: tc.bundle}}, authz.New(authz.Config{}, nil, nil, slog.New(slog.DiscardHandler)), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
