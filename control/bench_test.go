package control_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/control"
)

// BenchmarkWrite is one PUT of a user grant through the handler (no
// network): JSON decoding, invariants, indexes, history entry, and the
// bbolt commit with its fsync, which dominates.
func BenchmarkWrite(b *testing.B) {
	dir := b.TempDir()
	srv, err := control.New(control.Config{
		DataDir:        filepath.Join(dir, "data"),
		AdminTokenFile: writeFile(b, dir, "admin.token", adminToken),
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Close() })
	h := srv.Handler()
	do := func(method, path, body string) {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
		}
	}
	do("POST", "/v1/batch", worldBatch)
	const users = 1000
	ops := make([]string, users)
	for i := range ops {
		ops[i] = fmt.Sprintf(`{"op":"put","collection":"users","value":{"id":"u%d","tenant":"beta"}}`, i)
	}
	do("POST", "/v1/batch", `{"ops":[`+strings.Join(ops, ",")+`]}`)
	roles := []string{`["developer"]`, `["accountant","developer"]`}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// one grant per user, created on the first round, replaced after
		id := fmt.Sprintf("ug-u%d", i%users)
		do("PUT", "/v1/user_grants/"+id, fmt.Sprintf(`{"id":"%s","user":"u%d","project":"timekeeping","tenant":"beta","roles":%s}`, id, i%users, roles[i/users%2]))
	}
}
