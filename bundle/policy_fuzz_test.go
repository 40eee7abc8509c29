package bundle_test

// FuzzOpenBundle fuzzes the policy bundle reader with arbitrary bytes, as a
// download could deliver them: the tarball as is, or (compress) the bytes
// as the tar inside a fresh gzip stream, so that mutations reach the tar
// and file parsers instead of dying in gzip's checksum.
//
// Properties: no panic; every refusal wraps one of the sentinels of
// policy_errors.go (a clear, classifiable error); with a verifier, a bundle
// opens only if its files are exactly a file set the trusted key signed
// (re-read here with archive/tar, data files compared as JSON values).

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/util"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// fuzzBundleFiles are the file sets the fuzz key signs.
var fuzzBundleFiles = [][]bundle.File{
	{
		{Name: ".manifest", Content: []byte(`{"revision":"r1","roots":["envoy","static"]}`)},
		{Name: "envoy/authz.rego", Content: []byte("package envoy.authz\n\ndefault allow := false\n\nallow if data.static.open\n")},
		{Name: "static/data.json", Content: []byte(`{"open": true}`)},
	},
	{
		{Name: "envoy/authz.rego", Content: []byte("package envoy.authz\n\nallow := true\n")},
		{Name: "static/more/data.yaml", Content: []byte("region: eu\nlist: [1, 2]\n")},
	},
}

func FuzzOpenBundle(f *testing.F) {
	key := pbKey(f, "rsa", "fuzz-bundle")
	v := pbVerifier(f, key.Public())
	add := func(files []bundle.File, signed bool) {
		var buf bytes.Buffer
		s := (*bundle.Signer)(nil)
		if signed {
			s = pbSigner(f, key, "", "")
		}
		if err := bundle.WriteBundle(&buf, files, s); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes(), false)
		gz, err := gzip.NewReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			f.Fatal(err)
		}
		plain, err := io.ReadAll(gz)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(plain, true)
	}
	for _, files := range fuzzBundleFiles {
		add(files, true)
		add(files, false)
	}
	add([]bundle.File{{Name: "../escape.rego", Content: []byte("package x\n")}}, false)
	add([]bundle.File{{Name: "a.rego", Content: []byte("package a\n")}, {Name: "/a.rego", Content: []byte("package b\n")}}, false)
	add([]bundle.File{{Name: ".manifest", Content: []byte(`{"roots":["x"]}`)}, {Name: "y/data.json", Content: []byte(`{"a":1}`)}}, false)
	add([]bundle.File{{Name: "p.rego", Content: []byte("package p\n\nallow if {")}}, false)
	add([]bundle.File{{Name: "policy.wasm", Content: []byte("\x00asm")}}, false)
	f.Add([]byte("not a tarball"), false)
	f.Add([]byte{}, true)

	f.Fuzz(func(t *testing.T, data []byte, compress bool) {
		tarball := data
		if compress {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			_, _ = zw.Write(data)
			_ = zw.Close()
			tarball = buf.Bytes()
		}
		if _, err := bundle.OpenBundle(tarball, bundle.OpenOptions{Unsigned: true}); err != nil {
			checkBundleError(t, err)
		}
		_, err := bundle.OpenBundle(tarball, bundle.OpenOptions{Keys: v})
		if err != nil {
			checkBundleError(t, err)
			return
		}
		got, ok := tarFiles(tarball)
		if !ok {
			t.Fatalf("a bundle opened whose tarball archive/tar cannot read")
		}
		for _, want := range fuzzBundleFiles {
			if sameFiles(want, got) {
				return
			}
		}
		t.Fatalf("a bundle opened whose files are not a signed set: %q", slicesKeys(got))
	})
}

func checkBundleError(t *testing.T, err error) {
	t.Helper()
	for _, s := range []error{bundle.ErrBundleFormat, bundle.ErrUnsigned, bundle.ErrSignature, bundle.ErrTampered} {
		if errors.Is(err, s) {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("empty error message")
			}
			return
		}
	}
	t.Fatalf("refusal without a bundle sentinel (not classifiable): %v", err)
}

// tarFiles reads the regular files of a gzipped tarball by bundle path,
// without the signatures file.
func tarFiles(tarball []byte) (map[string][]byte, bool) {
	zr, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		return nil, false
	}
	tr := tar.NewReader(zr)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, true
		}
		if err != nil {
			return nil, false
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, false
		}
		name := h.Name
		for strings.HasPrefix(name, "/") || strings.HasPrefix(name, "./") {
			name = strings.TrimPrefix(strings.TrimPrefix(name, "/"), "./")
		}
		if name == bundle.SignaturesFile {
			continue
		}
		out[name] = b
	}
}

// sameFiles: the same names, the same bytes (data files: the same JSON
// value, as their digests are computed).
func sameFiles(want []bundle.File, got map[string][]byte) bool {
	if len(want) != len(got) {
		return false
	}
	for _, f := range want {
		g, ok := got[f.Name]
		if !ok {
			return false
		}
		if strings.HasSuffix(f.Name, ".json") || strings.HasSuffix(f.Name, ".yaml") || f.Name == ".manifest" {
			var a, b any
			if util.Unmarshal(f.Content, &a) != nil || util.Unmarshal(g, &b) != nil {
				return false
			}
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if !bytes.Equal(ja, jb) {
				return false
			}
			continue
		}
		if !bytes.Equal(f.Content, g) {
			return false
		}
	}
	return true
}

func slicesKeys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range maps.Keys(m) {
		out = append(out, k)
	}
	return out
}
