package control_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// bundleTarball is a minimal OPA bundle: a manifest and one policy.
func bundleTarball(tb testing.TB, revision string) []byte {
	tb.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, content := range map[string]string{
		".manifest":        `{"revision":"` + revision + `","roots":["envoy"]}`,
		"envoy/authz.rego": "package envoy.authz\n\nallow := false\n",
	} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content))}); err != nil {
			tb.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
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

func TestBundles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	b1 := bundleTarball(t, "r1")
	sum := sha256.Sum256(b1)
	tag := `"` + hex.EncodeToString(sum[:]) + `"`

	put := e.must("PUT", "/v1/bundles/main.v1", string(b1))
	if got := string(bytes.TrimSpace(put.body)); got != `{"etag":"\"`+hex.EncodeToString(sum[:])+`\""}` || put.header.Get("ETag") != tag {
		t.Fatalf("PUT answer %s, ETag %s; want etag %s", got, put.header.Get("ETag"), tag)
	}
	for _, tok := range []string{adminToken, syncToken} {
		g := e.do("GET", "/v1/bundles/main.v1", tok, "")
		if g.status != 200 || !bytes.Equal(g.body, b1) || g.header.Get("ETag") != tag || g.header.Get("Content-Type") != "application/gzip" {
			t.Fatalf("GET: %d, %d bytes, ETag %s, type %s", g.status, len(g.body), g.header.Get("ETag"), g.header.Get("Content-Type"))
		}
	}
	for _, inm := range []string{tag, `W/` + tag, `"other", ` + tag, "*"} {
		nm := e.do("GET", "/v1/bundles/main.v1", syncToken, "", "If-None-Match", inm)
		if nm.status != 304 || len(nm.body) != 0 || nm.header.Get("ETag") != tag {
			t.Fatalf("If-None-Match %s: %d with %d bytes", inm, nm.status, len(nm.body))
		}
	}
	if g := e.do("GET", "/v1/bundles/main.v1", syncToken, "", "If-None-Match", `"stale"`); g.status != 200 || !bytes.Equal(g.body, b1) {
		t.Fatalf("stale If-None-Match: %d", g.status)
	}

	// A new version replaces the content and the ETag.
	b2 := bundleTarball(t, "r2")
	e.must("PUT", "/v1/bundles/main.v1", string(b2))
	if g := e.do("GET", "/v1/bundles/main.v1", syncToken, "", "If-None-Match", tag); g.status != 200 || !bytes.Equal(g.body, b2) {
		t.Fatalf("after an update, the old ETag: %d", g.status)
	}

	cases := map[string]struct {
		method, path, token, body string
		status                    int
		code                      string
	}{
		"sync token cannot upload": {"PUT", "/v1/bundles/main.v1", syncToken, string(b1), 403, "forbidden"},
		"no token":                 {"GET", "/v1/bundles/main.v1", "", "", 401, "unauthorized"},
		"unknown bundle":           {"GET", "/v1/bundles/nope", syncToken, "", 404, "not_found"},
		"bad name":                 {"PUT", "/v1/bundles/a%20b", adminToken, string(b1), 400, "malformed"},
		"not a tarball":            {"PUT", "/v1/bundles/x", adminToken, "package x", 422, "invalid"},
	}
	for name, c := range cases {
		if r := e.do(c.method, c.path, c.token, c.body); r.status != c.status || r.errCode() != c.code {
			t.Errorf("%s: %s, want %d %s", name, r, c.status, c.code)
		}
	}
	if e.srv.Revision() != 0 {
		t.Fatalf("bundles moved the tenancy revision to %d", e.srv.Revision())
	}
}
