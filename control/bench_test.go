package control_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/control"
)

// BenchmarkWrite is one PUT of a user grant through the handler (no
// network): JSON decoding, invariants, indexes, history entry, and the
// bbolt commit with its fsync, which dominates.
func BenchmarkWrite(b *testing.B) {
	put := grantWriter(b, nil, b.Fatalf)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		put(i)
	}
}

// grantWriter starts a control endpoint (its metrics registered with reg;
// nil: none) holding the demo world and 1,000 users of beta, and returns
// put(i): the PUT of user grant i through the handler, one per user,
// created on the first round and replaced after. A write that is not 200
// is reported with fail (b.Errorf where writers run on other goroutines).
func grantWriter(b *testing.B, reg prometheus.Registerer, fail func(format string, args ...any)) func(i int) {
	dir := b.TempDir()
	srv, err := control.New(control.Config{
		DataDir:        filepath.Join(dir, "data"),
		AdminTokenFile: writeFile(b, dir, "admin.token", adminToken),
		Registerer:     reg,
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Close() })
	h := srv.Handler()
	do := func(fail func(string, ...any), method, path, body string) {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			fail("%s %s: %d %s", method, path, rec.Code, bytes.TrimSpace(rec.Body.Bytes()))
		}
	}
	do(b.Fatalf, "POST", "/v1/batch", worldBatch)
	const users = 1000
	ops := make([]string, users)
	for i := range ops {
		ops[i] = fmt.Sprintf(`{"op":"put","collection":"users","value":{"id":"u%d","tenant":"beta"}}`, i)
	}
	do(b.Fatalf, "POST", "/v1/batch", `{"ops":[`+strings.Join(ops, ",")+`]}`)
	roles := []string{`["developer"]`, `["accountant","developer"]`}
	return func(i int) {
		id := fmt.Sprintf("ug-u%d", i%users)
		do(fail, "PUT", "/v1/user_grants/"+id, fmt.Sprintf(`{"id":"%s","user":"u%d","project":"timekeeping","tenant":"beta","roles":%s}`, id, i%users, roles[i/users%2]))
	}
}
