package control

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// Sync streams whose clients stop reading: they hold bounded memory, no
// read transaction (the file does not grow, writes keep their speed), and
// are cut off after the write timeout.

const boundsToken = "admin-token-for-bounds"

// boundsServer starts a control endpoint on 127.0.0.1:0.
func boundsServer(t *testing.T, edit func(*Config)) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte(boundsToken), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"), AdminTokenFile: tok, Heartbeat: time.Hour}
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = s.Close()
	})
	return s, s.Addr().String()
}

// bigUser is a user of about 3.5 KB (16 labels of 200 bytes), version v.
func bigUser(id string, v int) string {
	var labels []string
	for i := range 16 {
		labels = append(labels, fmt.Sprintf(`"k%02d":"%d-%s"`, i, v, strings.Repeat("x", 196)))
	}
	return fmt.Sprintf(`{"id":%q,"tenant":"t","labels":{%s}}`, id, strings.Join(labels, ","))
}

func boundsDo(t *testing.T, addr, method, path, body string) time.Duration {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+boundsToken)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return time.Since(start)
}

// seedBig writes n big users in batches of per (one revision each).
func seedBig(t *testing.T, addr string, n, per int) {
	t.Helper()
	boundsDo(t, addr, "PUT", "/v1/tenants/t", `{"id":"t","name":"T"}`)
	for i := 0; i < n; i += per {
		var ops []string
		for j := i; j < min(n, i+per); j++ {
			ops = append(ops, `{"op":"put","collection":"users","value":`+bigUser(fmt.Sprintf("u%05d", j), 0)+`}`)
		}
		boundsDo(t, addr, "POST", "/v1/batch", `{"ops":[`+strings.Join(ops, ",")+`]}`)
	}
}

// stalledStream opens a sync stream over a connection with a small
// receive buffer, reads the response head and stops reading.
func stalledStream(t *testing.T, addr, path string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", path, addr, boundsToken)
	br := bufio.NewReaderSize(conn, 1024)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, " 200 ") {
		t.Fatalf("GET %s: %q %v", path, line, err)
	}
	return conn
}

// highWater is the size of the pages the file uses (bbolt's high-water
// mark): what a pinned read transaction makes grow.
func highWater(s *Server) int64 {
	var n int64
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

// TestStalledSnapshotDoesNotPinTheFile: a snapshot whose client stops
// reading holds no read transaction: writes meanwhile reuse the pages they
// free (the file does not grow beyond a bound) and keep their speed.
func TestStalledSnapshotDoesNotPinTheFile(t *testing.T) {
	t.Parallel()
	s, addr := boundsServer(t, func(c *Config) { c.StreamWriteTimeout = time.Minute })
	seedBig(t, addr, 2500, 500) // ~9 MB: more than the socket buffers hold
	stalledStream(t, addr, "/v1/sync/snapshot")
	time.Sleep(500 * time.Millisecond) // the stream fills the socket buffers and blocks

	before := highWater(s)
	var lat []time.Duration
	for i := range 300 {
		lat = append(lat, boundsDo(t, addr, "PUT", fmt.Sprintf("/v1/users/u%05d", i%50), bigUser(fmt.Sprintf("u%05d", i%50), i+1)))
	}
	growth := highWater(s) - before
	slices.Sort(lat)
	t.Logf("300 writes of 3.5 KB with a stalled snapshot: file grew %d KiB; write latency median %v, max %v", growth>>10, lat[150], lat[299])
	if s.streams.Load() != 1 {
		t.Fatalf("%d streams open, want the stalled snapshot", s.streams.Load())
	}
	// the history itself grows by ~1.1 MB; with the snapshot's read
	// transaction held, every page the writes free stays in use (~16 MB)
	if growth > 5<<20 {
		t.Fatalf("the file grew by %d KiB during 300 writes: the stalled snapshot pins its pages", growth>>10)
	}
	if lat[299] > 5*time.Second {
		t.Fatalf("a write took %v with a stalled snapshot", lat[299])
	}
}

// TestStalledStreamsHoldBoundedMemory: change streams replaying a large
// history to clients that stop reading each hold a bounded amount of
// memory.
// Not parallel: it measures the heap.
func TestStalledStreamsHoldBoundedMemory(t *testing.T) {
	s, addr := boundsServer(t, func(c *Config) { c.StreamWriteTimeout = time.Minute })
	seedBig(t, addr, 2400, 40) // 60 revisions of 140 KB: ~8.5 MB of history

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()
	const streams = 12
	var conns []net.Conn
	for range streams {
		conns = append(conns, stalledStream(t, addr, "/v1/sync/changes?since=0"))
	}
	time.Sleep(time.Second) // each stream fills its socket buffers and blocks
	held := heap() - base
	runtime.KeepAlive(conns) // the streams stay open while the heap is measured
	t.Logf("%d stalled change streams hold %d KiB of heap (%d KiB each)", streams, held>>10, held/streams>>10)
	if s.streams.Load() != streams {
		t.Fatalf("%d streams open, want %d", s.streams.Load(), streams)
	}
	if per := held / streams; per > 2<<20 {
		t.Fatalf("each stalled stream holds %d KiB", per>>10)
	}
}

// TestStalledStreamIsCutOff: a client that stops reading is cut off after
// the write timeout, and its stream slot is freed.
func TestStalledStreamIsCutOff(t *testing.T) {
	t.Parallel()
	s, addr := boundsServer(t, func(c *Config) { c.StreamWriteTimeout = 200 * time.Millisecond })
	seedBig(t, addr, 2400, 40)
	for _, path := range []string{"/v1/sync/changes?since=0", "/v1/sync/snapshot"} {
		stalledStream(t, addr, path)
		start := time.Now()
		for s.streams.Load() != 0 && time.Since(start) < 10*time.Second {
			time.Sleep(10 * time.Millisecond)
		}
		if s.streams.Load() != 0 {
			t.Fatalf("%s: a stalled stream still open after %v", path, time.Since(start))
		}
	}
}

// TestLegacyHistoryUpgrade: a data file written before history hashes and
// parts (schema 1 values, history entries keyed by revision alone, no
// hash) keeps serving: its chain starts at its revision; a client holding
// an older revision cannot prove it and re-snapshots (410); a snapshot and
// the revisions after it carry hashes chained from there.
func TestLegacyHistoryUpgrade(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tok, []byte(boundsToken), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: "127.0.0.1:0", DataDir: filepath.Join(dir, "data"), AdminTokenFile: tok, Heartbeat: time.Hour}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx) }()
	addr := s.Addr().String()
	boundsDo(t, addr, "PUT", "/v1/tenants/t", `{"id":"t","name":"T"}`)
	boundsDo(t, addr, "PUT", "/v1/users/a", `{"id":"a","tenant":"t"}`)
	boundsDo(t, addr, "PUT", "/v1/users/b", `{"id":"b","tenant":"t"}`)
	epoch := s.Epoch()
	cancel()
	<-done
	_ = s.Close()

	// rewrite the file as the previous version left it
	db, err := bolt.Open(filepath.Join(cfg.DataDir, DBFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket([]byte("meta"))
		if err := meta.Put([]byte("schema"), []byte(tenancy.LegacySchema)); err != nil {
			return err
		}
		if err := meta.Delete([]byte("hash")); err != nil {
			return err
		}
		log := tx.Bucket(bucketLog)
		type kv struct{ k, v []byte }
		var old []kv
		_ = log.ForEach(func(k, v []byte) error {
			var e tenancy.LogEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			e.Hash, e.More = "", false
			b, _ := json.Marshal(e)
			old = append(old, kv{append([]byte(nil), k...), b})
			return nil
		})
		for _, e := range old {
			if err := log.Delete(e.k); err != nil {
				return err
			}
			if err := log.Put(e.k[:8], e.v); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s2, addr2 := boundsServer(t, func(c *Config) { *c = cfg; c.Addr = "127.0.0.1:0" })
	if s2.Epoch() != epoch || s2.Revision() != 3 {
		t.Fatalf("reopened at %d epoch %s", s2.Revision(), s2.Epoch())
	}
	get := func(path string) (int, []tenancy.FeedLine) {
		req, _ := http.NewRequest("GET", "http://"+addr2+path, nil)
		req.Header.Set("Authorization", "Bearer "+boundsToken)
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		resp, err := http.DefaultClient.Do(req.WithContext(rctx))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var lines []tenancy.FeedLine
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var l tenancy.FeedLine
			_ = json.Unmarshal(sc.Bytes(), &l)
			lines = append(lines, l)
			if l.Type == tenancy.LineEnd || (l.Type == tenancy.LineRevision && !l.More && strings.Contains(path, "since=3")) {
				break
			}
		}
		return resp.StatusCode, lines
	}
	genesis := tenancy.GenesisHash(epoch, 3)
	if code, _ := get("/v1/sync/changes?since=1&epoch=" + epoch + "&hash=" + tenancy.GenesisHash(epoch, 1)); code != http.StatusGone {
		t.Fatalf("resuming inside the unhashed history: %d, want 410", code)
	}
	if code, lines := get("/v1/sync/snapshot"); code != 200 || lines[0].Hash != genesis || lines[len(lines)-1].Hash != genesis || lines[len(lines)-1].Count != 3 {
		t.Fatalf("snapshot of the upgraded file: %d %+v", code, lines)
	}
	// its values carry no checksums: a client asking for a bulk snapshot
	// gets the NDJSON one
	req, _ := http.NewRequest("GET", "http://"+addr2+"/v1/sync/snapshot", nil)
	req.Header.Set("Authorization", "Bearer "+boundsToken)
	req.Header.Set("Accept", tenancy.BulkMediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != ndjson {
		t.Fatalf("bulk snapshot of a legacy file: %d %q, want 200 NDJSON", resp.StatusCode, ct)
	}
	boundsDo(t, addr2, "PUT", "/v1/users/c", `{"id":"c","tenant":"t"}`)
	code, lines := get("/v1/sync/changes?since=3&epoch=" + epoch + "&hash=" + genesis)
	if code != 200 || len(lines) != 2 || lines[1].Revision != 4 || lines[1].Hash != tenancy.HashRevision(genesis, 4, lines[1].Changes) {
		t.Fatalf("changes after the upgrade: %d %+v", code, lines)
	}
	if code, _ := get("/v1/sync/changes?since=3&epoch=" + epoch + "&hash=" + tenancy.GenesisHash(epoch, 2)); code != http.StatusGone {
		t.Fatalf("a wrong hash at the upgrade revision: %d, want 410", code)
	}
}

// TestStalledBulkSnapshotIsCutOff: a bulk snapshot holds a read
// transaction while it is sent; a client that stops reading is cut after
// the write timeout, and one that keeps it longer than bulkMaxDuration
// (however long the write timeout) is cut then: the transaction ends, the
// stream slot is given back.
func TestStalledBulkSnapshotIsCutOff(t *testing.T) {
	cases := map[string]func(*Config){
		"write timeout": func(c *Config) { c.StreamWriteTimeout = 200 * time.Millisecond },
		"max duration":  func(c *Config) { c.StreamWriteTimeout = time.Hour },
	}
	old := bulkMaxDuration
	bulkMaxDuration = 500 * time.Millisecond
	t.Cleanup(func() { bulkMaxDuration = old })
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			s, addr := boundsServer(t, edit)
			seedBig(t, addr, 2400, 40)
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(conn, "GET /v1/sync/snapshot HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nAccept: %s\r\n\r\n", addr, boundsToken, tenancy.BulkMediaType)
			head, err := bufio.NewReaderSize(conn, 1024).ReadString('\n')
			if err != nil || !strings.Contains(head, " 200 ") {
				t.Fatalf("bulk snapshot: %q %v", head, err)
			}
			start := time.Now()
			for (s.streams.Load() != 0 || s.db.Stats().OpenTxN != 0) && time.Since(start) < 10*time.Second {
				time.Sleep(10 * time.Millisecond)
			}
			if n := s.streams.Load(); n != 0 || s.db.Stats().OpenTxN != 0 {
				t.Fatalf("after %v: %d streams, %d read transactions open", time.Since(start), n, s.db.Stats().OpenTxN)
			}
		})
	}
}
