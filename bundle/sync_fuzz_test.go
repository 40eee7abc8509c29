package bundle_test

// FuzzSyncStream feeds fuzzed NDJSON sync streams (SPEC §7) to a real
// Syncer over HTTP, into a real bbolt cache file: the change stream over a
// cache at a known revision, or the snapshot stream into an empty cache.
//
// Property: no panic, and whatever the bytes, the file afterwards is at a
// revision the stream fully reached: either exactly as before, or at
// revision R holding exactly the entities of the model after revisions
// 1..R of the stream (a snapshot: all of it, or nothing) — never half a
// revision. The model is computed here from the stream's lines
// independently of the syncer. When every state the stream passes through
// keeps the invariants, the file's indexes must also equal those of a file
// built from scratch from the same entities.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

const fuzzEpoch = "epoch-fuzz"

// syncFixture is the cache every change stream starts from.
type syncFixture struct {
	template []byte         // the cache file at baseRev
	baseRev  uint64         // its revision
	base     testutil.State // its entities
}

// newSyncFixture writes the test world at the control side (revision 1),
// snapshots it into a cache file and returns the file's bytes, with seeds:
// the change lines of further real writes and the snapshot lines.
func newSyncFixture(tb testing.TB) (*syncFixture, []tenancy.FeedLine, []tenancy.FeedLine) {
	tb.Helper()
	src := newSource(tb)
	src.write(world)
	dir := tb.TempDir()
	st := openStore(tb, dir)
	b, err := st.BeginSnapshot(src.rev, fuzzEpoch)
	if err != nil {
		tb.Fatal(err)
	}
	snap := src.snapshot()
	for _, l := range snap {
		if err := b.Put(l); err != nil {
			tb.Fatal(err)
		}
	}
	if err := b.Commit(time.Now()); err != nil {
		tb.Fatal(err)
	}
	if err := st.Close(); err != nil {
		tb.Fatal(err)
	}
	fx := &syncFixture{baseRev: src.rev}
	if fx.template, err = os.ReadFile(filepath.Join(dir, bundle.CacheFile)); err != nil {
		tb.Fatal(err)
	}
	_ = src.db.View(func(tx *bolt.Tx) error {
		fx.base, err = testutil.StateFromTx(tx)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	changes := []tenancy.FeedLine{
		src.write(`[{"op":"delete","collection":"user_grants","id":"ug-bob"}]`),
		src.write(`[{"op":"put","collection":"projects","value":{"id":"tk","owner":"acme","roles":["developer"]}}]`),
		src.write(`[{"op":"put","collection":"tenants","value":{"id":"gamma","parent":"acme"}},
			{"op":"put","collection":"users","value":{"id":"gus","tenant":"gamma"}},
			{"op":"put","collection":"project_grants","value":{"id":"pg-gamma","project":"tk","tenant":"gamma","roles":["developer"]}},
			{"op":"put","collection":"user_grants","value":{"id":"ug-gus","user":"gus","project":"tk","tenant":"gamma","roles":["developer"]}}]`),
		src.write(`[{"op":"put","collection":"project_grants","value":{"id":"pg-beta","project":"tk","tenant":"beta","roles":["developer"],"status":"suspended"}}]`),
		src.write(`[{"op":"delete","collection":"tenants","id":"beta","cascade":true}]`),
	}
	// one batch, in an order the control accepts (it validates the
	// resulting state): a project grant before its project
	changes = append(changes, src.write(`[{"op":"put","collection":"project_grants","value":{"id":"pg-np","project":"np","tenant":"gamma","roles":["r"]}},
			{"op":"put","collection":"projects","value":{"id":"np","owner":"acme","roles":["r"]}},
			{"op":"put","collection":"user_grants","value":{"id":"ug-gus-np","user":"gus","project":"np","tenant":"gamma","roles":["r"]}}]`))
	return fx, changes, snap
}

// ndjson renders feed lines as a stream.
func ndjson(tb testing.TB, lines ...any) []byte {
	tb.Helper()
	var buf bytes.Buffer
	for _, l := range lines {
		b, err := json.Marshal(l)
		if err != nil {
			tb.Fatal(err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

func FuzzSyncStream(f *testing.F) {
	fx, changes, snap := newSyncFixture(f)
	last := changes[len(changes)-1].Revision
	head := tenancy.FeedLine{Type: tenancy.LineHeader, Revision: last, Epoch: fuzzEpoch, Oldest: 1}
	beat := tenancy.FeedLine{Type: tenancy.LineHeartbeat, Revision: last, Time: time.Unix(1_800_000_000, 0)}
	all := []any{head}
	for _, c := range changes {
		all = append(all, c)
	}
	f.Add(ndjson(f, all...), false) // every revision, the last one creating a grant before its project
	changes = changes[:len(changes)-1]
	full := ndjson(f, all[:len(all)-1]...)
	f.Add(full, false)
	f.Add(full[:len(full)-7], false) // the last revision cut inside its line
	f.Add(ndjson(f, head, changes[0], beat, changes[1]), false)
	f.Add(ndjson(f, head, changes[0], changes[2]), false) // a gap
	f.Add(ndjson(f, head, changes[1], changes[0]), false) // out of order
	bad := changes[2]
	bad.Changes = slices.Clone(bad.Changes)
	bad.Changes[len(bad.Changes)-1].Value = json.RawMessage(`{"id":"ug-gus","user":"gus","project":"tk","tenant":"gamma","roles":["bad role"]}`)
	f.Add(ndjson(f, head, changes[0], changes[1], bad), false) // the third revision's last change does not decode
	other := head
	other.Epoch = "another-history"
	f.Add(ndjson(f, other, changes[0]), false)
	f.Add(ndjson(f, head, changes[0], map[string]any{"type": "surprise"}, changes[1]), false)
	f.Add([]byte(`{"type":"header","revision":9,"epoch":"epoch-fuzz"}`+"\n"+`{"type":"revision","revision":2,"changes":[{"op":"delete","collection":"nope","id":"x"}]}`+"\n"), false)
	f.Add([]byte("not json\n"), false)

	sh := tenancy.FeedLine{Type: tenancy.LineHeader, Revision: fx.baseRev, Epoch: "snap-epoch"}
	end := tenancy.FeedLine{Type: tenancy.LineEnd, Revision: fx.baseRev, Count: uint64(len(snap))}
	lines := []any{sh}
	for _, l := range snap {
		lines = append(lines, l)
	}
	whole := ndjson(f, append(lines, end)...)
	f.Add(whole, true)
	f.Add(ndjson(f, lines...), true) // no end line
	wrong := end
	wrong.Count--
	f.Add(ndjson(f, append(lines, wrong)...), true)
	f.Add(ndjson(f, sh, snap[0], snap[0], tenancy.FeedLine{Type: tenancy.LineEnd, Revision: fx.baseRev, Count: 2}), true) // a duplicate
	f.Add([]byte(`{"type":"header","revision":3}`+"\n"+`{"type":"end","revision":3}`+"\n"), true)                         // no epoch

	f.Fuzz(func(t *testing.T, stream []byte, fromEmpty bool) {
		dir := t.TempDir()
		path := filepath.Join(dir, bundle.CacheFile)
		if !fromEmpty {
			if err := os.WriteFile(path, fx.template, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		runSync(t, dir, stream)
		if _, err := os.Stat(path + ".snapshot"); err == nil {
			t.Fatalf("a snapshot file was left behind")
		}
		got := readCache(t, path)
		if fromEmpty {
			checkSnapshot(t, got, stream)
		} else {
			checkChanges(t, fx, got, stream)
		}
	})
}

// runSync runs a Syncer over the cache in dir against a control endpoint
// that answers the first request with stream and any later one (the
// syncer's next attempt: the stream's outcome is then final) by ending the
// run.
func runSync(t *testing.T, dir string, stream []byte) {
	t.Helper()
	st, err := bundle.OpenStore(bundle.StoreConfig{Dir: dir}, discard())
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Bool
	again := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if served.CompareAndSwap(false, true) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = w.Write(stream)
			return
		}
		once.Do(func() { close(again) })
		http.Error(w, "the fuzz run is over", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	sy := bundle.NewSyncer(bundle.SyncConfig{
		ControlURL: srv.URL, IdleTimeout: 5 * time.Second,
		MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, ResidentBudget: -1,
	}, st, discard())
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		_ = sy.Run(ctx)
	}()
	select {
	case <-again:
	case <-time.After(30 * time.Second):
		t.Errorf("the syncer neither finished the stream nor came back within 30s")
	}
	cancel()
	<-ran
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// cache is what a cache file holds.
type cache struct {
	revision uint64
	epoch    string
	state    testutil.State
	indexes  map[string]string // bucket \x01 key → value (mod revisions stripped)
}

// readCache reads a closed cache file, checking bbolt's consistency.
func readCache(t *testing.T, path string) cache {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("the cache file does not open: %v", err)
	}
	defer db.Close()
	var c cache
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("consistency check: %w", err)
		}
		c.revision, c.epoch = tenancy.Revision(tx), tenancy.Epoch(tx)
		var err error
		if c.state, err = testutil.StateFromTx(tx); err != nil {
			return err
		}
		c.indexes = indexDump(tx)
		return nil
	})
	if err != nil {
		t.Fatalf("cache file: %v", err)
	}
	return c
}

// indexDump collects every secondary ("x/") and policy ("i/") index entry.
func indexDump(tx *bolt.Tx) map[string]string {
	out := map[string]string{}
	_ = tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		n := string(name)
		if !strings.HasPrefix(n, "x/") && !strings.HasPrefix(n, "i/") {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if strings.HasPrefix(n, "i/") {
				_, v = tenancy.ModRevision(v)
			}
			out[n+"\x01"+string(k)] = string(v)
			return nil
		})
	})
	return out
}

// rebuiltIndexes writes s from scratch into a new file (collections in
// dependency order) and dumps its indexes.
func rebuiltIndexes(t *testing.T, s testutil.State) map[string]string {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "rebuilt.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out map[string]string
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tenancy.Init(tx); err != nil {
			return err
		}
		w, err := tenancy.NewWriter(tx, 1)
		if err != nil {
			return err
		}
		for _, c := range tenancy.Collections {
			ids := make([]string, 0, len(s[c]))
			for id := range s[c] {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			for _, id := range ids {
				if err := w.Put(s[c][id]); err != nil {
					return err
				}
			}
		}
		out = indexDump(tx)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// streamLines returns the complete lines of stream decoded, up to the first
// that does not decode (which the syncer stops at); a last line without
// its newline was cut and is not complete.
func streamLines(stream []byte) []tenancy.FeedLine {
	var out []tenancy.FeedLine
	r := bufio.NewReader(bytes.NewReader(stream))
	for {
		b, err := r.ReadBytes('\n')
		if err != nil {
			return out
		}
		var l tenancy.FeedLine
		if json.Unmarshal(b, &l) != nil {
			return out
		}
		out = append(out, l)
	}
}

// checkChanges: the file is at base revision + k, holding the model after
// the stream's first k revisions, for a k the stream reached.
func checkChanges(t *testing.T, fx *syncFixture, got cache, stream []byte) {
	t.Helper()
	if got.epoch != fuzzEpoch {
		t.Fatalf("epoch is %q, want %q (a change stream never replaces the history)", got.epoch, fuzzEpoch)
	}
	models := []testutil.State{fx.base}
	lines := streamLines(stream)
	if len(lines) > 0 && lines[0].Type == tenancy.LineHeader && (lines[0].Epoch == "" || lines[0].Epoch == fuzzEpoch) {
	feed:
		for _, l := range lines[1:] {
			switch l.Type {
			case tenancy.LineHeartbeat:
				continue
			case tenancy.LineRevision:
				if l.Revision != fx.baseRev+uint64(len(models)) {
					break feed
				}
				next, ok := applyModel(models[len(models)-1], l.Changes)
				if !ok {
					break feed
				}
				models = append(models, next)
			default:
				break feed
			}
		}
	}
	if got.revision < fx.baseRev || got.revision-fx.baseRev >= uint64(len(models)) {
		t.Fatalf("the cache is at revision %d; the stream reaches revisions %d..%d", got.revision, fx.baseRev, fx.baseRev+uint64(len(models)-1))
	}
	k := int(got.revision - fx.baseRev)
	if diff := stateDiff(models[k], got.state); diff != "" {
		t.Fatalf("at revision %d the cache is not the model after %d revisions of the stream (half a revision?): %s", got.revision, k, diff)
	}
	for _, m := range models[:k+1] {
		if len(m.Violations()) > 0 {
			return // the stream went through states no control endpoint writes
		}
	}
	if diff := mapDiff(rebuiltIndexes(t, got.state), got.indexes); diff != "" {
		t.Fatalf("at revision %d the indexes differ from a rebuild of the same entities: %s", got.revision, diff)
	}
}

// checkSnapshot: an empty cache either stays empty or holds exactly the
// snapshot, at its revision and epoch.
func checkSnapshot(t *testing.T, got cache, stream []byte) {
	t.Helper()
	want, head, ok := snapshotModel(streamLines(stream))
	if !ok {
		if got.epoch != "" || got.revision != 0 || got.state.Count() != 0 {
			t.Fatalf("an incomplete or invalid snapshot left data: revision %d, epoch %q, %d entities", got.revision, got.epoch, got.state.Count())
		}
		return
	}
	if got.epoch != head.Epoch || got.revision != head.Revision {
		t.Fatalf("after a complete snapshot at %d (epoch %q) the cache is at %d (epoch %q)", head.Revision, head.Epoch, got.revision, got.epoch)
	}
	if diff := stateDiff(want, got.state); diff != "" {
		t.Fatalf("the cache is not the snapshot: %s", diff)
	}
	if len(want.Violations()) == 0 {
		if diff := mapDiff(rebuiltIndexes(t, got.state), got.indexes); diff != "" {
			t.Fatalf("the snapshot's indexes differ from a rebuild of the same entities: %s", diff)
		}
	}
}

// snapshotModel: a header with an epoch, entity lines that decode (with
// matching ids), then an end line with the header's revision and the count.
func snapshotModel(lines []tenancy.FeedLine) (testutil.State, tenancy.FeedLine, bool) {
	if len(lines) == 0 || lines[0].Type != tenancy.LineHeader || lines[0].Epoch == "" {
		return nil, tenancy.FeedLine{}, false
	}
	head := lines[0]
	s := testutil.NewState()
	n := uint64(0)
	for _, l := range lines[1:] {
		switch l.Type {
		case tenancy.LineEntity:
			e, err := tenancy.DecodeStored(l.Collection, l.Value)
			if err != nil || e.Key() != l.ID {
				return nil, head, false
			}
			s[l.Collection][l.ID] = e
			n++
		case tenancy.LineEnd:
			return s, head, l.Count == n && l.Revision == head.Revision
		default:
			return nil, head, false
		}
	}
	return nil, head, false
}

// applyModel applies one revision's changes to a copy of s; false when a
// change cannot apply (the syncer must then refuse the whole revision).
func applyModel(s testutil.State, changes []tenancy.Change) (testutil.State, bool) {
	out := s.Clone()
	for _, c := range changes {
		switch c.Op {
		case tenancy.OpPut:
			e, err := tenancy.DecodeStored(c.Collection, c.Value)
			if err != nil || e.Key() != c.ID {
				return nil, false
			}
			out[c.Collection][c.ID] = e
		case tenancy.OpDelete:
			if !tenancy.IsCollection(c.Collection) {
				return nil, false
			}
			delete(out[c.Collection], c.ID)
		default:
			return nil, false
		}
	}
	return out, true
}

func stateDiff(want, got testutil.State) string {
	var diffs []string
	for _, c := range tenancy.Collections {
		for id, w := range want[c] {
			g, ok := got[c][id]
			switch {
			case !ok:
				diffs = append(diffs, fmt.Sprintf("%s/%s missing", c, id))
			case !reflect.DeepEqual(w, g):
				diffs = append(diffs, fmt.Sprintf("%s/%s is %+v, want %+v", c, id, g, w))
			}
		}
		for id := range got[c] {
			if _, ok := want[c][id]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s/%s should not exist", c, id))
			}
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}

func mapDiff(want, got map[string]string) string {
	var diffs []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%q missing (want %s)", k, w))
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("%q is %s, want %s", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%q = %s should not exist", k, g))
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}
