package control_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// stream is an open feed response whose lines arrive on a channel.
type stream struct {
	lines  chan tenancy.FeedLine
	raw    chan []byte
	cancel context.CancelFunc
	header http.Header
}

// open starts a feed request that must answer 200 and reads its lines in
// the background until the stream ends or the test does.
func (e *env) open(path, token string) *stream {
	e.tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", e.base+path, nil)
	if err != nil {
		e.tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.tb.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		cancel()
		resp.Body.Close()
		e.tb.Fatalf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &stream{lines: make(chan tenancy.FeedLine, 1024), raw: make(chan []byte, 1024), cancel: cancel, header: resp.Header}
	go func() {
		defer close(s.lines)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			var l tenancy.FeedLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				l = tenancy.FeedLine{Type: "unparsable: " + sc.Text()}
			}
			select {
			case s.raw <- slices.Clone(sc.Bytes()):
			default:
			}
			s.lines <- l
		}
	}()
	e.tb.Cleanup(cancel)
	return s
}

// next returns the next line, failing after timeout or at the stream's end.
func (s *stream) next(tb testing.TB, timeout time.Duration) tenancy.FeedLine {
	tb.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			tb.Fatal("the stream ended")
		}
		return l
	case <-time.After(timeout):
		tb.Fatalf("no line within %v", timeout)
	}
	return tenancy.FeedLine{}
}

// nextRevision skips heartbeats up to the next revision line.
func (s *stream) nextRevision(tb testing.TB, timeout time.Duration) tenancy.FeedLine {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l := s.next(tb, time.Until(deadline))
		if l.Type != tenancy.LineHeartbeat {
			return l
		}
	}
}

// readLines reads the first n lines of a feed and closes it.
func readLines(tb testing.TB, e *env, path, token string, n int) []tenancy.FeedLine {
	tb.Helper()
	s := e.open(path, token)
	defer s.cancel()
	out := make([]tenancy.FeedLine, n)
	for i := range out {
		out[i] = s.next(tb, 5*time.Second)
	}
	return out
}

func TestSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	rev := revisionOf(t, e.must("PUT", "/v1/users/bob", `{"id":"bob","tenant":"beta","labels":{"k":"v"}}`))

	s := e.open("/v1/sync/snapshot", syncToken)
	if s.header.Get(control.RevisionHeader) != strconv.FormatUint(rev, 10) {
		t.Fatalf("snapshot %s header %q", control.RevisionHeader, s.header.Get(control.RevisionHeader))
	}
	var lines []tenancy.FeedLine
	for l := range s.lines {
		lines = append(lines, l)
	}
	if len(lines) < 2 {
		t.Fatalf("snapshot of %d lines", len(lines))
	}
	head, end := lines[0], lines[len(lines)-1]
	if head.Type != tenancy.LineHeader || head.Revision != rev || head.Epoch != e.srv.Epoch() {
		t.Fatalf("header %+v, want revision %d epoch %s", head, rev, e.srv.Epoch())
	}
	entities := lines[1 : len(lines)-1]
	if end.Type != tenancy.LineEnd || end.Revision != rev || end.Count != uint64(len(entities)) || len(entities) != 20 {
		t.Fatalf("end %+v after %d entities, want revision %d count 20", end, len(entities), rev)
	}
	order := -1
	for _, l := range entities {
		i := slices.Index(tenancy.Collections, l.Collection)
		if l.Type != tenancy.LineEntity || i < order {
			t.Fatalf("entity line %+v out of tenancy.Collections order", l)
		}
		order = i
		want := uint64(1)
		if l.Collection == tenancy.Users && l.ID == "bob" {
			want = rev
		}
		if l.ModRevision != want {
			t.Fatalf("%s/%s mod_revision %d, want %d", l.Collection, l.ID, l.ModRevision, want)
		}
		if got := e.must("GET", "/v1/"+l.Collection+"/"+l.ID, "").body; !bytes.Equal(bytes.TrimSpace(got), l.Value) {
			t.Fatalf("%s/%s value %s, stored %s", l.Collection, l.ID, l.Value, got)
		}
	}
}

func TestChangesReplayAndFollow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.Heartbeat = time.Hour })
	e.seed()
	e.must("PUT", "/v1/users/u1", `{"id":"u1","tenant":"gamma"}`)
	rev := revisionOf(t, e.must("DELETE", "/v1/users/u1", ""))

	s := e.open("/v1/sync/changes?since=0", syncToken)
	head := s.next(t, 5*time.Second)
	if head.Type != tenancy.LineHeader || head.Revision != rev || head.Epoch != e.srv.Epoch() || head.Oldest != 1 {
		t.Fatalf("header %+v, want revision %d, oldest 1", head, rev)
	}
	for want := uint64(1); want <= rev; want++ {
		l := s.next(t, 5*time.Second)
		if l.Type != tenancy.LineRevision || l.Revision != want || l.Time.IsZero() || len(l.Changes) == 0 {
			t.Fatalf("line %+v, want revision %d with changes", l, want)
		}
		if want == 1 && len(l.Changes) != 20 {
			t.Fatalf("revision 1 carries %d changes, want the 20 of the batch", len(l.Changes))
		}
		if want == rev && (l.Changes[0].Op != tenancy.OpDelete || l.Changes[0].ID != "u1" || l.Changes[0].Value != nil) {
			t.Fatalf("last revision %+v, want the delete of users/u1", l.Changes)
		}
	}

	// Writes while the client follows arrive at once.
	const writes = 20
	var lat, puts []time.Duration
	for i := range writes {
		id := "f" + strconv.Itoa(i)
		start := time.Now()
		got := revisionOf(t, e.must("PUT", "/v1/users/"+id, `{"id":"`+id+`","tenant":"gamma"}`))
		put := time.Since(start)
		l := s.nextRevision(t, 5*time.Second)
		lat = append(lat, time.Since(start))
		puts = append(puts, put)
		if l.Revision != got || len(l.Changes) != 1 || l.Changes[0].ID != id {
			t.Fatalf("followed line %+v, want revision %d putting %s", l, got, id)
		}
	}
	slices.Sort(lat)
	slices.Sort(puts)
	t.Logf("write→stream latency over %d writes: median %v, max %v (PUT round trip incl. fsync: median %v, max %v)",
		writes, lat[writes/2], lat[writes-1], puts[writes/2], puts[writes-1])
	if lat[writes-1] > time.Second {
		t.Fatalf("write→stream latency up to %v, want < 1s (target 100 ms)", lat[writes-1])
	}
}

func TestChangesHeartbeat(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.Heartbeat = 30 * time.Millisecond })
	rev := e.seed()
	s := e.open("/v1/sync/changes?since="+strconv.FormatUint(rev, 10), adminToken)
	if h := s.next(t, 5*time.Second); h.Type != tenancy.LineHeader || h.Oldest != 1 {
		t.Fatalf("header %+v", h)
	}
	for range 3 {
		l := s.next(t, 5*time.Second)
		if l.Type != tenancy.LineHeartbeat || l.Revision != rev || l.Time.IsZero() {
			t.Fatalf("line %+v, want a heartbeat at revision %d", l, rev)
		}
	}
	raw := <-s.raw
	if !bytes.HasPrefix(raw, []byte(`{"type":"header","revision":1,"epoch":"`)) || !bytes.HasSuffix(raw, []byte(`","oldest":1}`)) {
		t.Fatalf("header line %s is not the documented wire format", raw)
	}
}

func TestChangesRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.History = 3 })
	e.seed()
	for i := range 9 {
		e.must("PUT", "/v1/users/h"+strconv.Itoa(i), `{"id":"h`+strconv.Itoa(i)+`","tenant":"gamma"}`)
	}
	if e.srv.Revision() != 10 {
		t.Fatalf("revision %d after 10 writes", e.srv.Revision())
	}
	epoch := e.srv.Epoch()
	cases := map[string]struct {
		query  string
		token  string
		status int
		code   string
	}{
		"since older than the history": {"since=0", syncToken, 410, "gone"},
		"since just too old":           {"since=6", syncToken, 410, "gone"},
		"wrong epoch":                  {"since=9&epoch=0123", syncToken, 410, "gone"},
		"empty epoch":                  {"since=9&epoch=", syncToken, 410, "gone"},
		"since ahead":                  {"since=11", syncToken, 409, "ahead"},
		"bad since":                    {"since=-1", syncToken, 400, "malformed"},
		"no since":                     {"", syncToken, 400, "malformed"},
		"no token":                     {"since=9", "", 401, "unauthorized"},
		"user token":                   {"since=9", userToken(t, "carol"), 403, "forbidden"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := e.do("GET", "/v1/sync/changes?"+c.query, c.token, "")
			if r.status != c.status || r.errCode() != c.code {
				t.Fatalf("got %s, want %d %s", r, c.status, c.code)
			}
		})
	}
	// The oldest revision still resumable: since=7 with the right epoch.
	lines := readLines(t, e, "/v1/sync/changes?since=7&epoch="+epoch, syncToken, 4)
	if lines[0].Oldest != 8 || lines[0].Revision != 10 || lines[1].Revision != 8 || lines[3].Revision != 10 {
		t.Fatalf("resumed at 7: %+v", lines)
	}
	if r := e.do("GET", "/v1/sync/snapshot", userToken(t, "carol"), ""); r.status != 403 {
		t.Fatalf("snapshot with a user token: %s", r)
	}
}

func TestChangesStreamsEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.Heartbeat = time.Hour })
	e.seed()
	gauge := func() float64 {
		return e.metric("gatehouse_control_feed_streams", map[string]string{"kind": "changes"})
	}

	// A client that goes away ends its stream on the server.
	s := e.open("/v1/sync/changes?since=1", syncToken)
	s.next(t, 5*time.Second)
	if g := gauge(); g != 1 {
		t.Fatalf("open streams gauge %v, want 1", g)
	}
	s.cancel()
	eventually(t, 5*time.Second, "the server ends the stream of a gone client", func() bool { return gauge() == 0 })

	// Shutdown ends the streams still open.
	s2 := e.open("/v1/sync/changes?since=1", syncToken)
	s2.next(t, 5*time.Second)
	done := make(chan struct{})
	go func() {
		for range s2.lines {
		}
		close(done)
	}()
	start := time.Now()
	e.stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream outlived Serve")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %v with a stream open", d)
	}
}

// TestConcurrentWritesReachFollowersInOrder mixes admin and delegated
// writers with snapshots while a follower reads the change stream: every
// revision arrives once, in order, without gaps.
func TestConcurrentWritesReachFollowersInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.Heartbeat = 20 * time.Millisecond })
	rev := e.seed()
	s := e.open("/v1/sync/changes?since="+strconv.FormatUint(rev, 10), syncToken)
	s.next(t, 5*time.Second)

	const perWriter = 25
	writers := map[string]string{ // token → tenant of its users
		adminToken:            "gamma",
		userToken(t, "alice"): "alpha",
		userToken(t, "erin"):  "beta",
		userToken(t, "carol"): "acme",
	}
	var wg sync.WaitGroup
	for tok, tenant := range writers {
		wg.Go(func() {
			for i := range perWriter {
				id := tenant + "-" + strconv.Itoa(i)
				if r := e.do("PUT", "/v1/users/"+id, tok, `{"id":"`+id+`","tenant":"`+tenant+`"}`); r.status != 200 {
					t.Errorf("PUT users/%s: %s", id, r)
					return
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 5 {
				if r := e.do("GET", "/v1/sync/snapshot", syncToken, ""); r.status != 200 || !bytes.Contains(r.body, []byte(`"type":"end"`)) {
					t.Errorf("snapshot: %d", r.status)
					return
				}
			}
		})
	}
	wg.Wait()
	final := e.srv.Revision()
	if final != rev+4*perWriter {
		t.Fatalf("revision %d after %d writes from %d", final, 4*perWriter, rev)
	}
	for want := rev + 1; want <= final; want++ {
		if l := s.nextRevision(t, 5*time.Second); l.Revision != want {
			t.Fatalf("follower got revision %d, want %d", l.Revision, want)
		}
	}
}

// TestChangesHistoryHash: every revision carries its history hash, chained
// from the previous one; a client resumes only with the hash of the
// revision it holds (else 410: it holds another history), and a snapshot
// declares the hash of its revision.
func TestChangesHistoryHash(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.Heartbeat = time.Hour })
	e.seed()
	for i := range 4 {
		e.must("PUT", "/v1/users/h"+strconv.Itoa(i), `{"id":"h`+strconv.Itoa(i)+`","tenant":"gamma"}`)
	}
	rev := e.srv.Revision()
	lines := readLines(t, e, "/v1/sync/changes?since=0", syncToken, int(rev)+1)
	hashes := map[uint64]string{0: tenancy.GenesisHash(e.srv.Epoch(), 0)}
	for _, l := range lines[1:] {
		want := tenancy.HashRevision(hashes[l.Revision-1], l.Revision, l.Changes)
		if l.Hash != want || l.More {
			t.Fatalf("revision %d: hash %q more=%v, want the chained hash %q", l.Revision, l.Hash, l.More, want)
		}
		hashes[l.Revision] = l.Hash
	}
	cases := map[string]struct {
		since  uint64
		hash   string
		status int
	}{
		"the hash of since":         {3, hashes[3], 200},
		"the current revision":      {rev, hashes[rev], 200},
		"none: revision 0":          {0, hashes[0], 200},
		"another revision's hash":   {3, hashes[2], 410},
		"a hash of another history": {rev, tenancy.GenesisHash("elsewhere", rev), 410},
		"empty":                     {3, "", 410},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := "/v1/sync/changes?since=" + strconv.FormatUint(c.since, 10) + "&epoch=" + e.srv.Epoch() + "&hash=" + c.hash
			if c.status != 200 {
				if r := e.do("GET", path, syncToken, ""); r.status != c.status || r.errCode() != "gone" {
					t.Fatalf("got %s, want %d gone", r, c.status)
				}
				return
			}
			got := readLines(t, e, path, syncToken, int(rev-c.since)+1)
			if last := got[len(got)-1]; last.Revision != rev || (c.since < rev && last.Hash != hashes[rev]) {
				t.Fatalf("resumed at %d: last line %+v", c.since, last)
			}
		})
	}
	snap := e.open("/v1/sync/snapshot", syncToken)
	var all []tenancy.FeedLine
	for l := range snap.lines {
		all = append(all, l)
	}
	if head, end := all[0], all[len(all)-1]; head.Hash != hashes[rev] || end.Hash != hashes[rev] || end.Revision != rev {
		t.Fatalf("snapshot header %+v end %+v, want the hash of revision %d", head, end, rev)
	}
}

// TestSyncStreamsAreBounded: at most max_streams sync streams are open at
// once; more answer 503 (code busy, Retry-After) until one ends.
func TestSyncStreamsAreBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *control.Config) { c.MaxStreams = 2; c.Heartbeat = time.Hour })
	rev := e.seed()
	since := "/v1/sync/changes?since=" + strconv.FormatUint(rev, 10)
	s1 := e.open(since, syncToken)
	s1.next(t, 5*time.Second)
	s2 := e.open(since, syncToken)
	s2.next(t, 5*time.Second)
	for _, path := range []string{since, "/v1/sync/snapshot"} {
		r := e.do("GET", path, syncToken, "")
		if r.status != 503 || r.errCode() != "busy" || r.header.Get("Retry-After") == "" {
			t.Fatalf("GET %s with 2 streams open: %s (Retry-After %q), want 503 busy", path, r, r.header.Get("Retry-After"))
		}
	}
	s1.cancel()
	eventually(t, 5*time.Second, "a slot frees when a stream ends", func() bool {
		return e.do("GET", "/v1/sync/snapshot", syncToken, "").status == 200
	})
	e.must("PUT", "/v1/users/z", `{"id":"z","tenant":"gamma"}`)
	if l := s2.nextRevision(t, 5*time.Second); l.Revision != rev+1 {
		t.Fatalf("stream after the refusals: %+v", l)
	}
}

// A client whose Accept names the bulk snapshot's media type gets the data
// buckets of the file at one revision, in bulk (see tenancy.BulkMediaType):
// loaded into a new file it verifies and holds the same entities, at the
// revision, epoch and history hash of the NDJSON snapshot. The sync token
// reads it; no token is refused. A client that does not ask gets NDJSON.
func TestBulkSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	rev := revisionOf(t, e.must("PUT", "/v1/users/bob", `{"id":"bob","tenant":"beta","labels":{"k":"v"}}`))
	get := func(token, accept string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", e.base+"/v1/sync/snapshot", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if resp := get("", tenancy.BulkMediaType); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without a token: %d", resp.StatusCode)
	}
	if ct := get(syncToken, "application/x-ndjson").Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("NDJSON asked, %q answered", ct)
	}
	resp := get(syncToken, "application/x-ndjson;q=0.5, "+tenancy.BulkMediaType)
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != tenancy.BulkMediaType {
		t.Fatalf("bulk asked: %d %q", resp.StatusCode, ct)
	}
	if resp.Header.Get(control.RevisionHeader) != strconv.FormatUint(rev, 10) {
		t.Fatalf("%s header %q, want %d", control.RevisionHeader, resp.Header.Get(control.RevisionHeader), rev)
	}
	br := tenancy.NewBulkReader(resp.Body, 1<<20)
	h, err := br.ReadHeader()
	if err != nil {
		t.Fatal(err)
	}
	var nd []tenancy.FeedLine
	for l := range e.open("/v1/sync/snapshot", syncToken).lines {
		nd = append(nd, l)
	}
	if h.Revision != rev || h.Epoch != e.srv.Epoch() || h.Hash != nd[0].Hash {
		t.Fatalf("bulk header %+v, want revision %d, epoch %s, hash %.12s", h, rev, e.srv.Epoch(), nd[0].Hash)
	}
	db, err := bolt.Open(filepath.Join(t.TempDir(), "cache.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(tenancy.Init); err != nil {
		t.Fatal(err)
	}
	n, err := tenancy.LoadBulk(db, br, h, nil)
	if err != nil || n != 20 {
		t.Fatalf("loaded %d entities (%v), want 20", n, err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		if err := tenancy.VerifyFile(tx); err != nil {
			return err
		}
		for _, l := range nd[1 : len(nd)-1] {
			rev, _, doc, err := tenancy.OpenValue([]byte(l.ID), tx.Bucket([]byte("e/"+l.Collection)).Get([]byte(l.ID)))
			if err != nil || rev != l.ModRevision || !bytes.Equal(doc, l.Value) {
				return fmt.Errorf("%s/%s: revision %d %s (%v), NDJSON says %d %s", l.Collection, l.ID, rev, doc, err, l.ModRevision, l.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
