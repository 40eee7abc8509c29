package control

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// follower is a lightweight change-stream client on a raw connection: it
// reads lines with a small buffer and records the last revision line.
type follower struct {
	conn net.Conn
	last atomic.Uint64
}

func openFollower(t *testing.T, addr string, since uint64, wg *sync.WaitGroup) *follower {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET /v1/sync/changes?since=%d HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", since, addr, boundsToken)
	f := &follower{conn: conn}
	f.last.Store(since)
	wg.Add(1)
	go func() {
		defer wg.Done()
		br := bufio.NewReaderSize(conn, 512)
		marker := []byte(`{"type":"revision","revision":`)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
			if i := bytes.Index(line, marker); i >= 0 {
				var rev uint64
				_, _ = fmt.Sscanf(string(line[i+len(marker):]), "%d", &rev)
				f.last.Store(rev)
			}
		}
	}()
	return f
}

func heapAndStacks() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// TestFanOutSharesEncodedParts: many change streams following the head
// receive every revision, each read from the history and encoded once
// (not once per stream), and each open stream costs the server a bounded,
// small amount of memory (no per-stream 64 KiB buffer, no per-stream copy
// of the revision).
func TestFanOutSharesEncodedParts(t *testing.T) {
	const n, writes = 300, 20
	s, addr := boundsServer(t, nil)
	boundsDo(t, addr, "PUT", "/v1/tenants/t", `{"id":"t","name":"T"}`)
	before := heapAndStacks()
	var wg sync.WaitGroup
	fs := make([]*follower, n)
	for i := range fs {
		fs[i] = openFollower(t, addr, 1, &wg)
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.streams.Load() != n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // every stream past its header, waiting
	per := (int64(heapAndStacks()) - int64(before)) / n
	t.Logf("%d streams: %d bytes each (server and client, heap and stacks)", n, per)
	if per > 48<<10 {
		t.Fatalf("an open change stream costs %d bytes", per)
	}
	reads := s.parts.reads.Load()
	var rev uint64
	for i := range writes {
		boundsDo(t, addr, "PUT", fmt.Sprintf("/v1/users/u%d", i), fmt.Sprintf(`{"id":"u%d","tenant":"t","labels":{"k":%q}}`, i, strings.Repeat("v", 200)))
		rev = s.Revision()
		for _, f := range fs {
			for f.last.Load() < rev && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if got := f.last.Load(); got != rev {
				t.Fatalf("a follower at revision %d, want %d", got, rev)
			}
		}
	}
	if got := s.parts.reads.Load() - reads; got > writes {
		t.Fatalf("%d history reads for %d revisions sent to %d streams: want at most one per revision", got, writes, n)
	}
}
