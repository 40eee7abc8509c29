package control

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStreamLeavesNoWriteDeadline: after a snapshot, the client reuses its
// keep-alive connection later than the stream's write timeout; the next
// answer must still be written (net/http clears the per-write deadlines a
// stream sets when its handler returns). Not parallel: it shortens
// writeTimeout.
func TestStreamLeavesNoWriteDeadline(t *testing.T) {
	defer func(d time.Duration) { writeTimeout = d }(writeTimeout)
	writeTimeout = 50 * time.Millisecond

	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte("admin-token-for-deadlines"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Addr: "127.0.0.1:0", DataDir: dir, AdminTokenFile: tok}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(t.Context()) }()
	defer func() {
		s.cancel()
		_ = s.Close()
	}()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	get := func(path string) int {
		req, _ := http.NewRequest("GET", "http://"+s.Addr().String()+path, nil)
		req.Header.Set("Authorization", "Bearer admin-token-for-deadlines")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatalf("GET %s: read: %v", path, err)
		}
		return resp.StatusCode
	}
	if code := get("/v1/sync/snapshot"); code != 200 {
		t.Fatalf("snapshot: %d", code)
	}
	time.Sleep(4 * writeTimeout)
	if code := get("/v1/tenants?limit=5"); code != 200 {
		t.Fatalf("the request after the snapshot on the same connection: %d", code)
	}
}
