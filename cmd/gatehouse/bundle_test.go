package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	opabundle "github.com/open-policy-agent/opa/v1/bundle"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// bundleCLI runs the command line and returns the exit code, stdout and
// stderr.
func bundleCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// bundleTestPolicy writes a policy directory whose decision is open.
func bundleTestPolicy(t *testing.T, dir string, open bool) {
	t.Helper()
	testutil.WriteFile(t, filepath.Join(dir, "envoy", "authz.rego"), "package envoy.authz\n\ndefault allow := false\n\nallow if data.static.open\n")
	testutil.WriteFile(t, filepath.Join(dir, "envoy", "authz_test.rego"), "package envoy.authz_test\n\ntest_x if true\n")
	testutil.WriteFile(t, filepath.Join(dir, "static", "data.json"), fmt.Sprintf(`{"open": %v}`, open))
}

// bundleKeyFiles writes the RSA key called name as a PKCS#1 private key
// file and a public key file.
func bundleKeyFiles(t *testing.T, dir, name string) (priv, pub string) {
	t.Helper()
	k := testutil.RSAKey(t, "cli-"+name)
	priv = filepath.Join(dir, name+".key.pem")
	pub = filepath.Join(dir, name+".pub.pem")
	testutil.WriteFile(t, priv, string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})))
	testutil.WriteFile(t, pub, string(testutil.PublicKeyPEM(t, &k.PublicKey)))
	return priv, pub
}

func bundleTarNames(t *testing.T, tarball []byte) []string {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

// TestBundleBuildCLI: `gatehouse bundle build` writes a signed bundle that
// both OPA and Gatehouse verify, and refuses (exit 2, file:line, nothing
// written) a policy that does not compile.
func TestBundleBuildCLI(t *testing.T) {
	t.Parallel()
	keys := t.TempDir()
	priv, pub := bundleKeyFiles(t, keys, "signer")
	good := t.TempDir()
	bundleTestPolicy(t, good, true)
	broken := t.TempDir()
	testutil.WriteFile(t, filepath.Join(broken, "envoy", "authz.rego"), "package envoy.authz\n\nallow if {\n\tcount(1) > 0\n}\n")

	cases := map[string]struct {
		args       func(out string) []string
		code       int
		stdout     []string
		stderr     []string
		wantFiles  []string
		verifyWith string // public key file: the bundle must verify with OPA and Gatehouse
	}{
		"signed": {
			args: func(out string) []string {
				return []string{"bundle", "build", good, "-o", out, "--signing-key", priv, "--key-id", "ci", "--revision", "r7"}
			},
			stdout:     []string{"revision r7", "4 files", "roots [envoy static]", "signed RS256 (key id ci)"},
			wantFiles:  []string{".signatures.json", ".manifest", "envoy/authz.rego", "static/data.json"},
			verifyWith: pub,
		},
		"signed PS256 with tests": {
			args: func(out string) []string {
				return []string{"bundle", "build", good, "-o", out, "--signing-key", priv, "--signing-alg", "PS256", "--include-tests"}
			},
			stdout:     []string{"5 files", "signed PS256"},
			wantFiles:  []string{".signatures.json", ".manifest", "envoy/authz.rego", "envoy/authz_test.rego", "static/data.json"},
			verifyWith: pub,
		},
		"unsigned": {
			args: func(out string) []string {
				return []string{"bundle", "build", good, "-o", out, "--root", "envoy", "--root", "static"}
			},
			stdout:    []string{"3 files", "unsigned"},
			wantFiles: []string{".manifest", "envoy/authz.rego", "static/data.json"},
		},
		"shipped policies": {
			args: func(out string) []string {
				return []string{"bundle", "build", filepath.Join("..", "..", "policies"), "-o", out, "--signing-key", priv}
			},
			stdout: []string{"roots [authzen envoy gatehouse]", "signed RS256"},
		},
		"does not compile": {
			args: func(out string) []string {
				return []string{"bundle", "build", broken, "-o", out, "--signing-key", priv}
			},
			code:   exitUsage,
			stderr: []string{filepath.Join(broken, "envoy", "authz.rego") + ":4", "rego_type_error"},
		},
		"missing -o": {
			args:   func(string) []string { return []string{"bundle", "build", good} },
			code:   exitUsage,
			stderr: []string{"-o FILE is required"},
		},
		"not a key": {
			args:   func(out string) []string { return []string{"bundle", "build", good, "-o", out, "--signing-key", pub} },
			code:   exitUsage,
			stderr: []string{"no PEM private key"},
		},
		"algorithm off the list": {
			args: func(out string) []string {
				return []string{"bundle", "build", good, "-o", out, "--signing-key", priv, "--signing-alg", "HS256"}
			},
			code:   exitUsage,
			stderr: []string{`"HS256" is not one of`},
		},
		"alg without key": {
			args: func(out string) []string {
				return []string{"bundle", "build", good, "-o", out, "--signing-alg", "RS256"}
			},
			code:   exitUsage,
			stderr: []string{"need --signing-key"},
		},
		"no such directory": {
			args:   func(out string) []string { return []string{"bundle", "build", filepath.Join(good, "nope"), "-o", out} },
			code:   exitUsage,
			stderr: []string{"no such file or directory"},
		},
		"output folder missing": {
			args: func(string) []string {
				return []string{"bundle", "build", good, "-o", filepath.Join(t.TempDir(), "no", "b.tar.gz")}
			},
			code:   exitFailure,
			stderr: []string{"write"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "bundle.tar.gz")
			code, stdout, stderr := bundleCLI(t, tc.args(out)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.code, stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout %q lacks %q", stdout, w)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
			tarball, err := os.ReadFile(out)
			if tc.code != exitOK {
				if err == nil {
					t.Fatal("a bundle was written although the build failed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantFiles != nil {
				names := bundleTarNames(t, tarball)
				if strings.Join(names, ",") != strings.Join(tc.wantFiles, ",") {
					t.Errorf("tarball files %v, want %v", names, tc.wantFiles)
				}
			}
			if tc.verifyWith == "" {
				return
			}
			pubPEM, err := os.ReadFile(tc.verifyWith)
			if err != nil {
				t.Fatal(err)
			}
			var sigs struct {
				Signatures []string `json:"signatures"`
			}
			if err := json.Unmarshal(bundleTarFile(t, tarball, ".signatures.json"), &sigs); err != nil || len(sigs.Signatures) != 1 {
				t.Fatalf(".signatures.json: %v, %d signatures", err, len(sigs.Signatures))
			}
			alg := "RS256"
			if strings.Contains(stdout, "PS256") {
				alg = "PS256"
			}
			vc := opabundle.NewVerificationConfig(map[string]*opabundle.KeyConfig{"ci": {Key: string(pubPEM), Algorithm: alg}}, "ci", "", nil)
			if _, err := opabundle.NewReader(bytes.NewReader(tarball)).WithBundleVerificationConfig(vc).Read(); err != nil {
				t.Fatalf("OPA does not verify the bundle: %v", err)
			}
			keys, err := bundle.ParsePublicKeys(pubPEM)
			if err != nil {
				t.Fatal(err)
			}
			v, err := bundle.NewVerifier(keys, tc.verifyWith)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := bundle.OpenBundle(tarball, bundle.OpenOptions{Verifier: v}); err != nil {
				t.Fatalf("Gatehouse does not verify the bundle: %v", err)
			}
		})
	}
}

func bundleTarFile(t *testing.T, tarball []byte, name string) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no %s in the bundle: %v", name, err)
		}
		if h.Name == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// TestBundleServe: the platform team's loop on real processes: build and
// sign with the CLI, PUT to the control endpoint, and `gatehouse serve`
// configured with policies.bundle runs it — /v1/status and every
// decision's dynamic metadata carry the manifest revision; a tampered
// bundle is refused while the last good keeps serving; the next good one
// applies; a copy is kept in the data dir.
func TestBundleServe(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "ghb") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	priv, pub := bundleKeyFiles(t, dir, "release")

	// The control endpoint.
	testutil.WriteFile(t, filepath.Join(dir, "admin.token"), "admin-secret")
	testutil.WriteFile(t, filepath.Join(dir, "sync.token"), "sync-secret")
	srv, err := control.New(control.Config{
		Addr: "127.0.0.1:0", DataDir: filepath.Join(dir, "control"),
		AdminTokenFile: filepath.Join(dir, "admin.token"), SyncTokenFile: filepath.Join(dir, "sync.token"),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan error, 1)
	go func() { cdone <- srv.Serve(cctx) }()
	t.Cleanup(func() { ccancel(); <-cdone; _ = srv.Close() })
	bundleURL := "http://" + srv.Addr().String() + "/v1/bundles/main"

	publish := func(revision string, open bool, edit func([]byte) []byte) {
		t.Helper()
		src := filepath.Join(dir, "src-"+revision)
		bundleTestPolicy(t, src, open)
		out := filepath.Join(dir, revision+".tar.gz")
		if code, _, stderr := bundleCLI(t, "bundle", "build", src, "-o", out, "--signing-key", priv, "--revision", revision); code != exitOK {
			t.Fatalf("bundle build: %d %s", code, stderr)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			b = edit(b)
		}
		req, _ := http.NewRequest(http.MethodPut, bundleURL, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer admin-secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("PUT: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	publish("rel-1", false, nil)

	testutil.WriteFile(t, filepath.Join(dir, "gatehouse.yaml"), `listen:
  grpc: unix://`+dir+`/g.sock
  http: unix://`+dir+`/h.sock
  ops: unix://`+dir+`/o.sock
policies:
  bundle:
    url: `+bundleURL+`
    public_key_file: `+filepath.Base(pub)+`
    token_file: sync.token
    poll: 50ms
data:
  dir: var
`)
	exit, _, ops, cancel := runServe(t, dir)
	defer cancel()
	type status struct {
		Ready  bool `json:"ready"`
		Policy struct {
			Revision  string `json:"revision"`
			LastError string `json:"last_error"`
		} `json:"policy"`
	}
	getStatus := func() (status, error) {
		var st status
		resp, err := ops.Get("http://ops/v1/status")
		if err != nil {
			return st, err
		}
		defer resp.Body.Close()
		return st, json.NewDecoder(resp.Body).Decode(&st)
	}
	waitStatus := func(what string, ok func(status) bool) status {
		t.Helper()
		var last status
		testutil.Eventually(t, 10*time.Second, func() (bool, string) {
			select {
			case code := <-exit:
				t.Fatalf("serve exited %d early", code)
			default:
			}
			st, err := getStatus()
			last = st
			return err == nil && ok(st), fmt.Sprintf("%s: %+v %v", what, st, err)
		})
		return last
	}
	client := authv3.NewAuthorizationClient(testutil.Dial(t, "unix://"+filepath.Join(dir, "g.sock")))
	check := func() (allowed bool, revision string) {
		t.Helper()
		resp, err := client.Check(t.Context(), testutil.CheckRequest(testutil.Request{}))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp.GetOkResponse() != nil, resp.GetDynamicMetadata().GetFields()["policy_revision"].GetStringValue()
	}

	waitStatus("ready on rel-1", func(st status) bool { return st.Ready && st.Policy.Revision == "rel-1" })
	if allowed, rev := check(); allowed || rev != "rel-1" {
		t.Fatalf("rel-1: allowed=%v policy_revision %q", allowed, rev)
	}

	// A tampered bundle (data changed after signing) is refused.
	publish("rel-2", false, func(b []byte) []byte {
		return bundleRetar(t, b, "static/data.json", []byte(`{"open": true}`))
	})
	st := waitStatus("rel-2 refused", func(st status) bool { return st.Policy.LastError != "" })
	if st.Policy.Revision != "rel-1" || !strings.Contains(st.Policy.LastError, "static/data.json: digest mismatch") || !st.Ready {
		t.Fatalf("after a tampered bundle: %+v", st)
	}
	if allowed, rev := check(); allowed || rev != "rel-1" {
		t.Fatalf("the tampered bundle took effect: allowed=%v revision %q", allowed, rev)
	}

	publish("rel-3", true, nil)
	waitStatus("rel-3 applied", func(st status) bool { return st.Policy.Revision == "rel-3" && st.Policy.LastError == "" })
	if allowed, rev := check(); !allowed || rev != "rel-3" {
		t.Fatalf("rel-3: allowed=%v policy_revision %q", allowed, rev)
	}
	if _, err := os.Stat(filepath.Join(dir, "var", bundle.PersistedBundleFile)); err != nil {
		t.Errorf("no persisted copy of the applied bundle: %v", err)
	}

	cancel()
	select {
	case code := <-exit:
		if code != exitOK {
			t.Errorf("serve exited %d", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// bundleRetar replaces one file of a tarball, keeping the rest (and the
// signature) as is.
func bundleRetar(t *testing.T, tarball []byte, name string, content []byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			b = content
		}
		h.Size = int64(len(b))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
