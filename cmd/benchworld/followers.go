package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
)

// followers measures fan-out: it opens n lightweight change-stream clients
// (raw connections, a small read buffer each) on a control endpoint, then
// writes at the control endpoint and measures, for each write, the time
// until the last of the n followers received it. With --control-pid it
// reports the control endpoint's RSS before and with the streams open.
func followers(args []string) error {
	fs := flag.NewFlagSet("followers", flag.ExitOnError)
	controlURL := fs.String("control", "http://127.0.0.1:8282", "control endpoint")
	adminFile := fs.String("admin-token-file", "", "admin token file (writes)")
	syncFile := fs.String("sync-token-file", "", "sync token file (streams; default the admin token)")
	n := fs.Int("n", 2000, "followers")
	writes := fs.Int("writes", 100, "writes to measure")
	pace := fs.Duration("pace", 20*time.Millisecond, "pause between writes")
	pid := fs.Int("control-pid", 0, "the control endpoint's process id, for its RSS")
	_ = fs.Parse(args)
	admin, err := readTokenFile(*adminFile)
	if err != nil {
		return err
	}
	syncTok := admin
	if *syncFile != "" {
		if syncTok, err = readTokenFile(*syncFile); err != nil {
			return err
		}
	}
	u, err := url.Parse(*controlURL)
	if err != nil || u.Host == "" || u.Scheme != "http" {
		return fmt.Errorf("--control %q: want http://host:port", *controlURL)
	}
	if err := call(*controlURL, admin, "PUT", "/v1/tenants/fanout", map[string]any{"id": "fanout", "name": "fan-out"}); err != nil {
		return err
	}
	rev, err := currentRevision(*controlURL, admin)
	if err != nil {
		return err
	}
	rss := func() string {
		if *pid == 0 {
			return "?"
		}
		m, err := loadgen.ProcMem(*pid)
		if err != nil {
			return "?"
		}
		return fmt.Sprintf("%.1f", float64(m.RSS)/(1<<20))
	}
	rssBefore := rss()
	last := make([]atomic.Uint64, *n)
	for i := range *n {
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			return fmt.Errorf("follower %d: %w", i, err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /v1/sync/changes?since=%d HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", rev, u.Host, syncTok)
		last[i].Store(rev - 1) // until its header arrives
		go follow(conn, &last[i])
	}
	// every follower has its header: the streams are open
	if err := waitAll(last, rev, 60*time.Second); err != nil {
		return fmt.Errorf("opening the followers: %w", err)
	}
	time.Sleep(time.Second)
	rssOpen := rss()
	var lat []time.Duration
	for i := range *writes {
		start := time.Now()
		if err := call(*controlURL, admin, "PUT", fmt.Sprintf("/v1/users/fanout-%d", i%50), map[string]any{"id": fmt.Sprintf("fanout-%d", i%50), "tenant": "fanout", "labels": map[string]string{"i": strconv.Itoa(i)}}); err != nil {
			return err
		}
		rev++
		if err := waitAll(last, rev, 30*time.Second); err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
		time.Sleep(*pace)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	fmt.Printf("followers: %d change streams; write -> receipt at the last follower: p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d writes; control RSS %s MiB before, %s MiB with the streams open, %s MiB after the writes\n",
		*n, q(0.5), q(0.99), q(1), len(lat), rssBefore, rssOpen, rss())
	return nil
}

// follow reads a change stream, recording the revision of each revision
// line (the header line, too: the stream is open).
func follow(conn net.Conn, last *atomic.Uint64) {
	br := bufio.NewReaderSize(conn, 1024)
	marker := []byte(`"revision":`)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if !errors.Is(err, net.ErrClosed) {
				fmt.Fprintf(os.Stderr, "a follower's stream ended: %v (last line %.200q)\n", err, line)
			}
			last.Store(ended)
			return
		}
		if !bytes.HasPrefix(line, []byte(`{"type":"revision"`)) && !bytes.HasPrefix(line, []byte(`{"type":"header"`)) {
			continue
		}
		if i := bytes.Index(line, marker); i >= 0 {
			rest := line[i+len(marker):]
			j := bytes.IndexAny(rest, ",}")
			if j > 0 {
				if r, err := strconv.ParseUint(string(rest[:j]), 10, 64); err == nil {
					last.Store(r)
				}
			}
		}
	}
}

// ended marks a follower whose stream ended.
const ended = math.MaxUint64

// waitAll waits until every follower has received revision rev.
func waitAll(last []atomic.Uint64, rev uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := range last {
		for {
			got := last[i].Load()
			if got == ended {
				return fmt.Errorf("follower %d: its stream ended", i)
			}
			if got >= rev {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("follower %d at revision %d, want %d after %v", i, got, rev, timeout)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	return nil
}

func currentRevision(base, token string) (uint64, error) {
	req, _ := http.NewRequest("GET", base+"/v1/tenants?limit=1", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out struct {
		Revision uint64 `json:"revision"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		return 0, fmt.Errorf("GET /v1/tenants: %s %v", resp.Status, err)
	}
	return out.Revision, nil
}

func readTokenFile(path string) (string, error) {
	if path == "" {
		return "", errors.New("--admin-token-file is required")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
