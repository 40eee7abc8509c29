package bundle_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	opabundle "github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/token"
)

// pbPolicy is a small policy directory: the decision reads static data
// placed by folder, a library in another root, a test file and YAML data.
func pbPolicy(open bool) map[string]string {
	o := "false"
	if open {
		o = "true"
	}
	return map[string]string{
		"envoy/authz.rego":      "package envoy.authz\n\nimport data.lib.gates\n\ndefault allow := false\n\nallow if gates.open\n",
		"envoy/authz_test.rego": "package envoy.authz_test\n\nimport data.envoy.authz\n\ntest_closed if not authz.allow with data.static.gate.open as false\n",
		"lib/gates.rego":        "package lib.gates\n\nopen := data.static.gate.open\n",
		"static/gate/data.json": `{"open": ` + o + `}`,
		"static/data.yaml":      "region: eu\n",
		".hidden/skip.rego":     "package hidden\n\nx := 1\n",
	}
}

var (
	pbKeysMu sync.Mutex
	pbEdKeys = map[string]ed25519.PrivateKey{}
	pbP384   = map[string]*ecdsa.PrivateKey{}
)

// pbKey returns a private key of kind rsa, ec (P-256), ec384 or ed25519,
// cached by name.
func pbKey(tb testing.TB, kind, name string) crypto.Signer {
	tb.Helper()
	switch kind {
	case "rsa":
		return testutil.RSAKey(tb, "bundle-"+name)
	case "ec":
		return testutil.ECKey(tb, "bundle-"+name)
	}
	pbKeysMu.Lock()
	defer pbKeysMu.Unlock()
	switch kind {
	case "ec384":
		if k, ok := pbP384[name]; ok {
			return k
		}
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		pbP384[name] = k
		return k
	case "ed25519":
		if k, ok := pbEdKeys[name]; ok {
			return k
		}
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		pbEdKeys[name] = k
		return k
	}
	tb.Fatalf("unknown key kind %q", kind)
	return nil
}

// pbPrivatePEM encodes key as PKCS#8 ("PRIVATE KEY").
func pbPrivatePEM(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func pbSigner(tb testing.TB, key crypto.Signer, alg, keyID string) *bundle.Signer {
	tb.Helper()
	s, err := bundle.NewSigner(key, alg, keyID)
	if err != nil {
		tb.Fatalf("NewSigner: %v", err)
	}
	return s
}

func pbVerifier(tb testing.TB, pubs ...crypto.PublicKey) *bundle.KeySet {
	tb.Helper()
	v, err := bundle.NewKeySet(pubs, "test keys")
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// pbBuild builds dir into a tarball.
func pbBuild(tb testing.TB, cfg bundle.BuildConfig) ([]byte, bundle.BuildResult) {
	tb.Helper()
	var buf bytes.Buffer
	if cfg.Builtins == nil {
		cfg.Builtins = replica.Builtins()
	}
	res, err := bundle.Build(&buf, cfg)
	if err != nil {
		tb.Fatalf("Build: %v", err)
	}
	return buf.Bytes(), res
}

// pbEntry is one entry of a tarball, in order.
type pbEntry struct {
	name    string
	content []byte
}

// pbUntar lists a tarball's regular files in order.
func pbUntar(tb testing.TB, tarball []byte) []pbEntry {
	tb.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		tb.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out []pbEntry
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			tb.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, pbEntry{h.Name, b})
	}
}

// pbTar writes entries as a tarball as they are (no signing, no checks).
func pbTar(tb testing.TB, entries []pbEntry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.content))}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write(e.content); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// pbEdit rewrites a tarball's entries with edit (which may change, drop
// or add entries) and keeps everything else, signature included.
func pbEdit(tb testing.TB, tarball []byte, edit func([]pbEntry) []pbEntry) []byte {
	tb.Helper()
	return pbTar(tb, edit(pbUntar(tb, tarball)))
}

func pbEntryContent(tb testing.TB, tarball []byte, name string) []byte {
	tb.Helper()
	for _, e := range pbUntar(tb, tarball) {
		if e.name == name {
			return e.content
		}
	}
	tb.Fatalf("no %s in the bundle", name)
	return nil
}

// TestPolicyBundleBuildContents: the tarball holds the policy and data
// files at their paths, a manifest with the directory's revision and the
// roots of its packages and data, and tests only when asked.
func TestPolicyBundleBuildContents(t *testing.T) {
	t.Parallel()
	dir := testutil.PolicyDir(t, pbPolicy(false))
	cases := map[string]struct {
		cfg       bundle.BuildConfig
		wantFiles []string
		wantRev   func() string
		wantRoots []string
	}{
		"defaults": {
			cfg:       bundle.BuildConfig{Dir: dir},
			wantFiles: []string{".manifest", "envoy/authz.rego", "lib/gates.rego", "static/data.yaml", "static/gate/data.json"},
			wantRev: func() string {
				r, err := authz.DirRevision(dir, false)
				if err != nil {
					t.Fatal(err)
				}
				return r
			},
			wantRoots: []string{"envoy", "lib", "static"},
		},
		"tests, revision, roots, signed": {
			cfg: bundle.BuildConfig{Dir: dir, IncludeTests: true, Revision: "v42", Roots: []string{"envoy", "/lib/", "static"},
				Signer: pbSigner(t, pbKey(t, "rsa", "a"), "", "k1")},
			wantFiles: []string{".manifest", ".signatures.json", "envoy/authz.rego", "envoy/authz_test.rego", "lib/gates.rego", "static/data.yaml", "static/gate/data.json"},
			wantRev:   func() string { return "v42" },
			wantRoots: []string{"envoy", "lib", "static"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tarball, res := pbBuild(t, tc.cfg)
			var names []string
			for _, e := range pbUntar(t, tarball) {
				names = append(names, e.name)
			}
			slices.Sort(names)
			if !slices.Equal(names, tc.wantFiles) || !slices.Equal(res.Files, tc.wantFiles) {
				t.Fatalf("files %v (result %v), want %v", names, res.Files, tc.wantFiles)
			}
			var m struct {
				Revision    string   `json:"revision"`
				Roots       []string `json:"roots"`
				RegoVersion *int     `json:"rego_version"`
			}
			if err := json.Unmarshal(pbEntryContent(t, tarball, ".manifest"), &m); err != nil {
				t.Fatal(err)
			}
			if want := tc.wantRev(); m.Revision != want || res.Revision != want {
				t.Errorf("manifest revision %q (result %q), want %q", m.Revision, res.Revision, want)
			}
			if !slices.Equal(m.Roots, tc.wantRoots) || m.RegoVersion == nil || *m.RegoVersion != 1 {
				t.Errorf("manifest roots %v rego_version %v, want %v and 1", m.Roots, m.RegoVersion, tc.wantRoots)
			}
			// The same bytes, read back without a signature check, give
			// the data at the folders' paths.
			src, err := bundle.OpenBundle(tarball, bundle.OpenOptions{Unsigned: true})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(src.Data)
			if want := `{"static":{"gate":{"open":false},"region":"eu"}}`; string(got) != want {
				t.Errorf("data %s, want %s", got, want)
			}
		})
	}

	t.Run("deterministic", func(t *testing.T) {
		t.Parallel()
		s := pbSigner(t, pbKey(t, "rsa", "a"), "RS256", "")
		a, _ := pbBuild(t, bundle.BuildConfig{Dir: dir, Signer: s})
		b, _ := pbBuild(t, bundle.BuildConfig{Dir: dir, Signer: s})
		if !bytes.Equal(a, b) {
			t.Error("two builds of the same directory differ: an unchanged bundle would get a new ETag")
		}
	})
}

// TestPolicyBundleBuildRefuses: nothing is written when the policy does
// not compile or does not define the decision, and errors point at the
// file and line.
func TestPolicyBundleBuildRefuses(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		files map[string]string
		cfg   bundle.BuildConfig
		want  []string
	}{
		"parse error": {
			files: map[string]string{"p/authz.rego": "package envoy.authz\n\nallow if input.x == == 1\n"},
			want:  []string{filepath.Join("p", "authz.rego") + ":3", "rego_parse_error"},
		},
		"type error": {
			files: map[string]string{"p/authz.rego": "package envoy.authz\n\nallow if {\n\tcount(1) > 0\n}\n"},
			want:  []string{filepath.Join("p", "authz.rego") + ":4", "rego_type_error"},
		},
		"no decision rule": {
			files: map[string]string{"p/authz.rego": "package other\n\nallow := true\n"},
			want:  []string{"decision rule not defined", "envoy.authz.allow"},
		},
		"roots exclude a package": {
			files: map[string]string{"p/authz.rego": "package envoy.authz\n\nallow := true\n"},
			cfg:   bundle.BuildConfig{Roots: []string{"other"}},
			want:  []string{"manifest roots [other] do not permit", "envoy.authz"},
		},
		"reserved tenancy data": {
			files: map[string]string{"p/authz.rego": "package envoy.authz\n\nallow := true\n", "tenancy/data.json": `{"x": 1}`},
			want:  []string{"reserved tenancy namespace"},
		},
		"bad data": {
			files: map[string]string{"p/authz.rego": "package envoy.authz\n\nallow := true\n", "data.json": `[1, 2]`},
			want:  []string{"data.json", "must be an object"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := tc.cfg
			cfg.Dir = testutil.PolicyDir(t, tc.files)
			var buf bytes.Buffer
			_, err := bundle.Build(&buf, cfg)
			if err == nil {
				t.Fatal("Build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if buf.Len() != 0 {
				t.Errorf("%d bytes written for a policy that does not build", buf.Len())
			}
		})
	}
}

// TestPolicyBundleOPAVerifiesOurs: a bundle Gatehouse builds and signs
// verifies with OPA's own bundle reader (signature, every file digest,
// data.json canonical hashing), for every key type; tampering is caught by
// OPA too.
func TestPolicyBundleOPAVerifiesOurs(t *testing.T) {
	t.Parallel()
	dir := testutil.PolicyDir(t, pbPolicy(true))
	cases := map[string]struct {
		kind, alg string
	}{
		"RS256":          {"rsa", ""},
		"PS256":          {"rsa", "PS256"},
		"ES256":          {"ec", ""},
		"ES384":          {"ec384", ""},
		"EdDSA":          {"ed25519", ""},
		"RS512 by force": {"rsa", "RS512"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			key := pbKey(t, tc.kind, "opa")
			signer := pbSigner(t, key, tc.alg, "gatehouse-key")
			tarball, res := pbBuild(t, bundle.BuildConfig{Dir: dir, Revision: "rev-" + name, Signer: signer})
			read := func(tarball []byte, keyID string) (opabundle.Bundle, error) {
				vc := opabundle.NewVerificationConfig(map[string]*opabundle.KeyConfig{
					"gatehouse-key": {Key: string(testutil.PublicKeyPEM(t, key.Public())), Algorithm: signer.Algorithm()},
				}, keyID, "", nil)
				return opabundle.NewReader(bytes.NewReader(tarball)).WithBundleVerificationConfig(vc).Read()
			}
			// With the key id configured, and found from the token's kid.
			for _, keyID := range []string{"gatehouse-key", ""} {
				b, err := read(tarball, keyID)
				if err != nil {
					t.Fatalf("OPA refuses our bundle (key id %q): %v", keyID, err)
				}
				if b.Manifest.Revision != res.Revision || len(b.Modules) != 2 {
					t.Fatalf("OPA read revision %q and %d modules", b.Manifest.Revision, len(b.Modules))
				}
				if got, _ := json.Marshal(b.Data); string(got) != `{"static":{"gate":{"open":true},"region":"eu"}}` {
					t.Fatalf("OPA read data %s", got)
				}
			}
			tampered := pbEdit(t, tarball, func(es []pbEntry) []pbEntry {
				for i := range es {
					if es[i].name == "static/gate/data.json" {
						es[i].content = []byte(`{"open": false}`)
					}
				}
				return es
			})
			if _, err := read(tampered, ""); err == nil || !strings.Contains(err.Error(), "digest mismatch") {
				t.Fatalf("OPA on our tampered bundle: %v", err)
			}
		})
	}
}

// TestPolicyBundleWeVerifyOPAs: a bundle OPA signs and writes (as `opa
// build --signing-key` does) opens with Gatehouse's verifier and compiles.
func TestPolicyBundleWeVerifyOPAs(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		kind, alg string
	}{
		"RS256": {"rsa", "RS256"},
		"ES256": {"ec", "ES256"},
		"PS384": {"rsa", "PS384"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			key := pbKey(t, tc.kind, "opa-signer")
			raw := []byte("package envoy.authz\n\nallow := data.static.open\n")
			m, err := ast.ParseModule("/envoy/authz.rego", string(raw))
			if err != nil {
				t.Fatal(err)
			}
			roots := []string{"envoy", "static"}
			b := opabundle.Bundle{
				Manifest: opabundle.Manifest{Revision: "opa-" + name, Roots: &roots},
				Modules:  []opabundle.ModuleFile{{URL: "/envoy/authz.rego", Path: "/envoy/authz.rego", Raw: raw, Parsed: m}},
				Data:     map[string]any{"static": map[string]any{"open": true, "n": json.Number("1.50")}},
			}
			if err := b.GenerateSignature(opabundle.NewSigningConfig(string(pbPrivatePEM(t, key)), tc.alg, ""), "opa-key", false); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := opabundle.NewWriter(&buf).DisableFormat(true).Write(b); err != nil {
				t.Fatal(err)
			}
			src, err := bundle.OpenBundle(buf.Bytes(), bundle.OpenOptions{Keys: pbVerifier(t, key.Public())})
			if err != nil {
				t.Fatalf("our verifier refuses OPA's bundle: %v", err)
			}
			if src.Revision != "opa-"+name || len(src.Modules) != 1 {
				t.Fatalf("revision %q, %d modules", src.Revision, len(src.Modules))
			}
			ps, err := authz.Compile(src, authz.DefaultDecision)
			if err != nil {
				t.Fatal(err)
			}
			if ps.Revision() != "opa-"+name {
				t.Fatalf("compiled revision %q", ps.Revision())
			}
			// Another key: refused.
			other := pbKey(t, tc.kind, "someone-else")
			if _, err := bundle.OpenBundle(buf.Bytes(), bundle.OpenOptions{Keys: pbVerifier(t, other.Public())}); !errors.Is(err, bundle.ErrSignature) {
				t.Fatalf("OPA's bundle with another key: %v", err)
			}
		})
	}
}

// TestPolicyBundleOpenRefuses: every way a bundle can fail verification is
// refused with the matching sentinel and a message naming the problem.
func TestPolicyBundleOpenRefuses(t *testing.T) {
	t.Parallel()
	key := pbKey(t, "rsa", "a")
	signer := pbSigner(t, key, "", "")
	good, _ := pbBuild(t, bundle.BuildConfig{Dir: testutil.PolicyDir(t, pbPolicy(false)), Signer: signer})
	goodFiles := pbUntar(t, good)
	unsigned, _ := pbBuild(t, bundle.BuildConfig{Dir: testutil.PolicyDir(t, pbPolicy(false))})

	// signWith replaces the signature of good by one over payload, made by
	// method with key.
	signWith := func(method jwt.SigningMethod, key any, payload jwt.MapClaims) []byte {
		tok := testutil.MintJWT(t, method, key, "", payload)
		return pbEdit(t, good, func(es []pbEntry) []pbEntry {
			for i := range es {
				if es[i].name == ".signatures.json" {
					es[i].content, _ = json.Marshal(map[string]any{"signatures": []string{tok}})
				}
			}
			return es
		})
	}
	// files lists good's files as signed, edited by f.
	files := func(f func([]map[string]any) []map[string]any) []map[string]any {
		var list []map[string]any
		for _, e := range goodFiles {
			if e.name == ".signatures.json" {
				continue
			}
			d := sha256Digest(t, e.name, e.content)
			list = append(list, map[string]any{"name": e.name, "hash": d, "algorithm": "SHA-256"})
		}
		if f != nil {
			list = f(list)
		}
		return list
	}
	replace := func(name string, content []byte) func([]pbEntry) []pbEntry {
		return func(es []pbEntry) []pbEntry {
			for i := range es {
				if es[i].name == name {
					es[i].content = content
				}
			}
			return es
		}
	}
	pubPEM := testutil.PublicKeyPEM(t, key.Public())

	cases := map[string]struct {
		tarball []byte
		want    error
		msg     string
	}{
		"unsigned":                      {unsigned, bundle.ErrUnsigned, "no .signatures.json"},
		"empty signature list":          {pbEdit(t, good, replace(".signatures.json", []byte(`{"signatures": []}`))), bundle.ErrUnsigned, "holds no signature"},
		"tampered rego":                 {pbEdit(t, good, replace("envoy/authz.rego", []byte("package envoy.authz\n\nallow := true\n"))), bundle.ErrTampered, "envoy/authz.rego: digest mismatch"},
		"tampered data":                 {pbEdit(t, good, replace("static/gate/data.json", []byte(`{"open": true}`))), bundle.ErrTampered, "static/gate/data.json: digest mismatch"},
		"tampered manifest":             {pbEdit(t, good, replace(".manifest", []byte(`{"revision": "forged", "roots": ["envoy", "lib", "static"]}`))), bundle.ErrTampered, ".manifest: digest mismatch"},
		"tampered and reformatted data": {pbEdit(t, good, replace("static/gate/data.json", []byte("{\n  \"open\":   true\n}"))), bundle.ErrTampered, "digest mismatch"},
		"wrong key":                     {mustBuildSigned(t, pbKey(t, "rsa", "wrong")), bundle.ErrSignature, "does not verify with the key(s) in test keys"},
		"wrong key type":                {mustBuildSigned(t, pbKey(t, "ec", "wrong")), bundle.ErrSignature, "signing method ES256 is invalid"},
		"listed file missing": {pbEdit(t, good, func(es []pbEntry) []pbEntry {
			return slices.DeleteFunc(es, func(e pbEntry) bool { return e.name == "lib/gates.rego" })
		}), bundle.ErrTampered, "lib/gates.rego is listed in the signature but missing from the bundle"},
		"present file not listed": {pbEdit(t, good, func(es []pbEntry) []pbEntry {
			return append(es, pbEntry{"envoy/extra.rego", []byte("package envoy.extra\n")})
		}), bundle.ErrTampered, "envoy/extra.rego is not listed in the signature"},
		"file smuggled under a second name": {pbEdit(t, good, func(es []pbEntry) []pbEntry {
			return append(es, pbEntry{"/envoy/authz.rego", []byte("package envoy.authz\n\nallow := true\n")})
		}), bundle.ErrBundleFormat, "envoy/authz.rego appears twice"},
		"unsafe path": {pbEdit(t, good, func(es []pbEntry) []pbEntry { return append(es, pbEntry{"../evil.rego", []byte("package evil\n")}) }), bundle.ErrBundleFormat, "unsafe file name"},
		"alg none": {pbEdit(t, good, replace(".signatures.json", mustJSON(t, map[string]any{"signatures": []string{
			testutil.CraftJWT(t, map[string]any{"alg": "none", "typ": "JWT"}, map[string]any{"files": files(nil)}, nil),
		}}))), bundle.ErrSignature, "signing method none is invalid"},
		"HS256 keyed with the public key": {signWith(jwt.SigningMethodHS256, pubPEM, jwt.MapClaims{"files": files(nil)}), bundle.ErrSignature, "signing method HS256 is invalid"},
		"MD5 digests": {signWith(jwt.SigningMethodRS256, key, jwt.MapClaims{"files": files(func(l []map[string]any) []map[string]any {
			for _, f := range l {
				f["algorithm"] = "MD5"
			}
			return l
		})}), bundle.ErrTampered, `digest algorithm "MD5" is not accepted`},
		"scoped signature":  {signWith(jwt.SigningMethodRS256, key, jwt.MapClaims{"files": files(nil), "scope": "write"}), bundle.ErrSignature, `scoped to "write"`},
		"expired signature": {signWith(jwt.SigningMethodRS256, key, jwt.MapClaims{"files": files(nil), "exp": 1}), bundle.ErrSignature, "token is expired"},
		"two signatures":    {pbEdit(t, good, replace(".signatures.json", []byte(`{"signatures": ["a.b.c", "d.e.f"]}`))), bundle.ErrSignature, "holds 2 signatures"},
		"not gzip":          {[]byte("PK\x03\x04 a zip file"), bundle.ErrBundleFormat, "not a gzip-compressed tarball"},
	}
	v := pbVerifier(t, key.Public())
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := bundle.OpenBundle(tc.tarball, bundle.OpenOptions{Keys: v})
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
		})
	}

	t.Run("good", func(t *testing.T) {
		t.Parallel()
		if _, err := bundle.OpenBundle(good, bundle.OpenOptions{Keys: v}); err != nil {
			t.Fatal(err)
		}
		// Digests of data files are over canonical JSON (as OPA's): a
		// reformatted data.json with the same values still verifies.
		reformatted := pbEdit(t, good, replace("static/gate/data.json", []byte("{\n  \"open\":   false\n}\n")))
		src, err := bundle.OpenBundle(reformatted, bundle.OpenOptions{Keys: v})
		if err != nil {
			t.Fatalf("reformatted data.json: %v", err)
		}
		if got, _ := json.Marshal(src.Data); string(got) != `{"static":{"gate":{"open":false},"region":"eu"}}` {
			t.Fatalf("data %s", got)
		}
		// A rotated key file: any listed key verifies.
		if _, err := bundle.OpenBundle(good, bundle.OpenOptions{Keys: pbVerifier(t, pbKey(t, "ec", "new").Public(), key.Public())}); err != nil {
			t.Fatal(err)
		}
	})
}

// mustBuildSigned builds the standard policy signed with key.
func mustBuildSigned(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	b, _ := pbBuild(tb, bundle.BuildConfig{Dir: testutil.PolicyDir(tb, pbPolicy(false)), Signer: pbSigner(tb, key, "", "")})
	return b
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// sha256Digest computes a file digest as OPA's signer does.
func sha256Digest(tb testing.TB, name string, content []byte) string {
	tb.Helper()
	h, err := opabundle.NewSignatureHasher(opabundle.SHA256)
	if err != nil {
		tb.Fatal(err)
	}
	var v any = content
	if opabundle.IsStructuredDoc(name) {
		var doc any
		if err := util.Unmarshal(content, &doc); err != nil {
			tb.Fatal(err)
		}
		v = doc
	}
	d, err := h.HashFile(v)
	if err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(d)
}

// TestPolicyBundleKeys: signing keys of every supported type parse, and
// algorithms that do not fit a key are refused.
func TestPolicyBundleKeys(t *testing.T) {
	t.Parallel()
	rsaKey := pbKey(t, "rsa", "a")
	cases := map[string]struct {
		pem     []byte
		alg     string
		wantAlg string
		wantErr string
	}{
		"PKCS#1 RSA":     {pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey.(*rsa.PrivateKey))}), "", "RS256", ""},
		"SEC 1 EC":       {ecPEM(t, pbKey(t, "ec", "a").(*ecdsa.PrivateKey)), "", "ES256", ""},
		"PKCS#8 Ed25519": {pbPrivatePEM(t, pbKey(t, "ed25519", "a")), "", "EdDSA", ""},
		"PKCS#8 P-384":   {pbPrivatePEM(t, pbKey(t, "ec384", "a")), "", "ES384", ""},
		"ES256 on RSA":   {pbPrivatePEM(t, rsaKey), "ES256", "", "does not fit a RSA key"},
		"HS256":          {pbPrivatePEM(t, rsaKey), "HS256", "", `"HS256" is not one of`},
		"none":           {pbPrivatePEM(t, rsaKey), "none", "", `"none" is not one of`},
		"ES384 on P-256": {ecPEM(t, pbKey(t, "ec", "a").(*ecdsa.PrivateKey)), "ES384", "", "does not fit a ECDSA P-256 key"},
		"public key":     {testutil.PublicKeyPEM(t, rsaKey.Public()), "", "", "no PEM private key"},
		"encrypted":      {pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), "", "", "encrypted private keys are not supported"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			k, err := token.ParsePrivateKey(tc.pem)
			var s *bundle.Signer
			if err == nil {
				s, err = bundle.NewSigner(k, tc.alg, "")
			}
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, bundle.ErrKey) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Algorithm() != tc.wantAlg {
				t.Fatalf("algorithm %s, want %s", s.Algorithm(), tc.wantAlg)
			}
		})
	}
	t.Run("public keys", func(t *testing.T) {
		t.Parallel()
		pems := append(testutil.PublicKeyPEM(t, rsaKey.Public()), testutil.PublicKeyPEM(t, pbKey(t, "ed25519", "a").Public())...)
		keys, err := token.ParsePublicKeys(pems)
		if err != nil || len(keys) != 2 {
			t.Fatalf("ParsePublicKeys: %d keys, %v", len(keys), err)
		}
		if _, err := token.ParsePublicKeys(pbPrivatePEM(t, rsaKey)); !errors.Is(err, bundle.ErrKey) || !strings.Contains(err.Error(), "give the sidecar only the public key") {
			t.Fatalf("private key as public key: %v", err)
		}
	})
}

func ecPEM(tb testing.TB, k *ecdsa.PrivateKey) []byte {
	tb.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}
