// feed.go is long (about 650 lines) on purpose: it is the whole sync feed
// of SPEC §7 — snapshot (NDJSON and bulk), the change stream and the
// shared part cache that serves one encoded revision to every follower —
// whose pieces share the stream's framing, deadlines and revision order.

package control

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// writeTimeout is Config.StreamWriteTimeout's default: each write of a
// stream to its client is bounded, so a client that stops reading is cut.
// A variable for tests.
var writeTimeout = 30 * time.Second

// Feed streaming bounds.
const (
	// logChunkBytes bounds what a stream reads from the history per read
	// transaction (at least one record, itself bounded by FeedPartBytes):
	// what a stream holds while its client is slow.
	logChunkBytes = 256 << 10
	// snapshotPage and snapshotPageBytes bound what a snapshot reads per
	// read transaction: no transaction stays open while writing to the
	// client, so a slow reader never pins old pages of the file.
	snapshotPage      = 1000
	snapshotPageBytes = 256 << 10
	// ndjson is the media type of the feed.
	ndjson = "application/x-ndjson"
)

// errBehind ends a change stream whose client fell behind the retained
// history while following: it reconnects, gets 410 and re-snapshots.
var errBehind = errors.New("the stream fell behind the retained history")

// lineWriter writes feed lines to a client, each bounded by a write
// deadline.
type lineWriter struct {
	rc      *http.ResponseController
	buf     *bufio.Writer
	timeout time.Duration
}

func newLineWriter(w http.ResponseWriter, timeout time.Duration) *lineWriter {
	return newLineWriterSize(w, timeout, 64<<10)
}

func newLineWriterSize(w http.ResponseWriter, timeout time.Duration, size int) *lineWriter {
	return &lineWriter{rc: http.NewResponseController(w), buf: bufio.NewWriterSize(w, size), timeout: timeout}
}

// raw writes an encoded line (a larger one goes to the client without a
// copy into the buffer).
func (lw *lineWriter) raw(b []byte) error {
	_ = lw.rc.SetWriteDeadline(time.Now().Add(lw.timeout))
	_, err := lw.buf.Write(b)
	return err
}

// line encodes one FeedLine into the buffer.
func (lw *lineWriter) line(l *tenancy.FeedLine) error {
	b, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("encode %s line: %w", l.Type, err)
	}
	_ = lw.rc.SetWriteDeadline(time.Now().Add(lw.timeout))
	if _, err := lw.buf.Write(b); err != nil {
		return err
	}
	return lw.buf.WriteByte('\n')
}

// flush sends the buffered lines to the client now.
func (lw *lineWriter) flush() error {
	_ = lw.rc.SetWriteDeadline(time.Now().Add(lw.timeout))
	if err := lw.buf.Flush(); err != nil {
		return err
	}
	if err := lw.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

func streamHeaders(w http.ResponseWriter, rev uint64) {
	h := w.Header()
	h.Set("Content-Type", ndjson)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(RevisionHeader, strconv.FormatUint(rev, 10))
}

// openStream authenticates a sync request and takes one of the
// MaxStreams stream slots; release gives it back.
func (s *Server) openStream(r *http.Request) (release func(), err error) {
	p, err := s.authenticate(r)
	if err == nil {
		err = requireReader(p, "the sync feed")
	}
	if err != nil {
		return nil, err
	}
	if s.streams.Add(1) > int64(s.cfg.MaxStreams) {
		s.streams.Add(-1)
		return nil, errorf(http.StatusServiceUnavailable, CodeBusy, "%d sync streams are open (max_streams): retry later", s.cfg.MaxStreams)
	}
	return func() { s.streams.Add(-1) }, nil
}

func (s *Server) refuseStream(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) && ae.code == CodeBusy {
		w.Header().Set("Retry-After", "1")
	}
	s.writeError(w, r, err)
}

// handleSnapshot is GET /v1/sync/snapshot: every entity, then the
// revisions committed meanwhile, declared at the last of them (see the
// protocol in package tenancy):
//
//	{"type":"header","revision":S,"epoch":"E","hash":"H(S)"}
//	{"type":"entity","collection":...,"id":...,"mod_revision":M,"value":{...}}
//	{"type":"revision",...}   (S+1..R)
//	{"type":"end","revision":R,"count":N,"hash":"H(R)"}
//
// Entities are read in pages, each in a short read transaction: a slow
// client never holds one open, so writes keep reusing the file's free
// pages. The revisions S+1..R come from the history; a snapshot that
// outlives the retained history is cut (the client retries).
func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	release, err := s.openStream(r)
	if err != nil {
		s.refuseStream(w, r, err)
		return
	}
	defer release()
	s.metrics.streams.WithLabelValues(streamSnapshot).Inc()
	defer s.metrics.streams.WithLabelValues(streamSnapshot).Dec()
	if acceptsBulk(r) {
		if done := s.sendBulk(w, r); done {
			return
		}
	}
	var start uint64
	var startHash string
	err = s.db.View(func(tx *bolt.Tx) error {
		start, startHash = tenancy.Revision(tx), tenancy.HeadHash(tx)
		return nil
	})
	if err != nil {
		s.writeError(w, r, fmt.Errorf("begin snapshot: %w", err))
		return
	}
	streamHeaders(w, start)
	lw := newLineWriter(w, s.cfg.StreamWriteTimeout)
	end, count, err := s.writeSnapshot(r.Context(), lw, start, startHash)
	if err == nil {
		err = lw.flush()
	}
	switch {
	case errors.Is(err, tenancy.ErrDamaged):
		s.logger.Error("snapshot failed: the data file is damaged", "revision", start, "sent", count, "err", err)
		return
	case err != nil:
		s.logger.Debug("snapshot stream cut", "revision", start, "sent", count, "err", err)
		return
	}
	s.logger.Debug("snapshot sent", "revision", start, "end_revision", end, "count", count)
}

// writeSnapshot writes the lines of a snapshot starting at revision start
// and returns the revision it ends at and the entities sent.
func (s *Server) writeSnapshot(ctx context.Context, lw *lineWriter, start uint64, startHash string) (uint64, uint64, error) {
	if err := lw.line(&tenancy.FeedLine{Type: tenancy.LineHeader, Revision: start, Epoch: s.epoch, Hash: startHash}); err != nil {
		return 0, 0, err
	}
	var count uint64
	for _, coll := range tenancy.Collections {
		var after []byte
		for {
			if err := ctx.Err(); err != nil {
				return 0, count, err
			}
			page, err := s.readPage(coll, after)
			if err != nil || len(page) == 0 {
				if err != nil {
					return 0, count, err
				}
				break
			}
			for i := range page {
				if err := lw.line(&page[i]); err != nil {
					return 0, count, err
				}
				count++
			}
			after = []byte(page[len(page)-1].ID)
		}
	}
	// what was committed while the pages were read: replayed over them, it
	// makes the snapshot exactly the data at end
	var end uint64
	var endHash string
	_ = s.db.View(func(tx *bolt.Tx) error {
		end, endHash = tenancy.Revision(tx), tenancy.HeadHash(tx)
		return nil
	})
	if end > start {
		sent, err := s.sendRevisions(lw, start, end)
		if err != nil {
			return 0, count, err
		}
		if sent != end {
			return 0, count, fmt.Errorf("%w: the snapshot needs revisions %d to %d, sent up to %d", errBehind, start+1, end, sent)
		}
	}
	return end, count, lw.line(&tenancy.FeedLine{Type: tenancy.LineEnd, Revision: end, Count: count, Hash: endHash})
}

// readPage returns the entity lines of collection coll after key `after`
// (from the first when nil), about one page of them, from one short read
// transaction.
func (s *Server) readPage(coll string, after []byte) ([]tenancy.FeedLine, error) {
	var out []tenancy.FeedLine
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(entityBucket(coll)).Cursor()
		var k, v []byte
		if after == nil {
			k, v = c.First()
		} else if k, v = c.Seek(after); k != nil && string(k) == string(after) {
			k, v = c.Next()
		}
		size := 0
		for ; k != nil && len(out) < snapshotPage && size < snapshotPageBytes; k, v = c.Next() {
			doc, err := tenancy.Document(k, v)
			if err != nil {
				return fmt.Errorf("snapshot %s/%s: %w", coll, k, err)
			}
			mod, _ := tenancy.ModRevision(v)
			out = append(out, tenancy.FeedLine{
				Type: tenancy.LineEntity, Collection: coll, ID: string(k), ModRevision: mod,
				Value: append(json.RawMessage(nil), doc...),
			})
			size += len(v)
		}
		return nil
	})
	return out, err
}

// handleChanges is GET /v1/sync/changes?since=R[&epoch=E][&hash=H]: a
// header line, every retained revision after R, then each new revision as
// it commits, with heartbeat lines while idle. It runs until the client
// goes away or the server stops. With epoch and hash, the client's history
// at R must be this endpoint's (else 410: it re-snapshots).
func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request) {
	release, err := s.openStream(r)
	if err != nil {
		s.refuseStream(w, r, err)
		return
	}
	defer release()
	var since uint64
	q := r.URL.Query()
	v := q.Get("since")
	if since, err = strconv.ParseUint(v, 10, 64); err != nil {
		err = badRequest("since=%q: want the revision the client holds (0 for none)", v)
	}
	if err == nil && q.Has("epoch") && q.Get("epoch") != s.epoch {
		err = errorf(http.StatusGone, CodeGone, "epoch %q is not this control endpoint's history (%s): take a new snapshot", q.Get("epoch"), s.epoch)
	}
	var current, oldest uint64
	var hash string
	var hashKnown bool
	if err == nil {
		err = s.db.View(func(tx *bolt.Tx) error {
			current, oldest = historyBounds(tx)
			if since <= current {
				hash, hashKnown = hashAt(tx, since)
			}
			return nil
		})
	}
	switch {
	case err != nil:
	case since > current:
		err = errorf(http.StatusConflict, CodeAhead, "since=%d is ahead of the current revision %d: this is not the history the client holds; take a new snapshot", since, current)
	case since+1 < oldest:
		err = errorf(http.StatusGone, CodeGone, "since=%d is older than the retained history (oldest revision %d): take a new snapshot", since, oldest)
	case q.Has("hash") && (!hashKnown || q.Get("hash") != hash):
		err = errorf(http.StatusGone, CodeGone, "the client's revision %d is not this control endpoint's revision %d (history hash differs or is not retained): take a new snapshot", since, since)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}

	s.metrics.streams.WithLabelValues(streamChanges).Inc()
	defer s.metrics.streams.WithLabelValues(streamChanges).Dec()
	streamHeaders(w, current)
	lw := newLineWriterSize(w, s.cfg.StreamWriteTimeout, streamBufBytes)
	err = lw.line(&tenancy.FeedLine{Type: tenancy.LineHeader, Revision: current, Epoch: s.epoch, Oldest: oldest})
	if err == nil {
		err = lw.flush()
	}
	if err == nil {
		err = s.follow(r, lw, since)
	}
	switch {
	case errors.Is(err, errBehind):
		s.logger.Warn("change stream ended: the client fell behind the retained history", "history", s.cfg.History)
	case err != nil:
		s.logger.Debug("change stream ended", "err", err)
	}
}

// asOfStore is a store whose data may lag a shared log (etcd): it says
// since when it is known to be current.
type asOfStore interface{ currentAsOf() time.Time }

// currentAsOf is the time a heartbeat stamps: now for the embedded store
// (its file is the history), and for a replica over etcd the last time
// its view was confirmed whole, so that a replica cut off from etcd makes
// its sidecars' data stale instead of current.
func (s *Server) currentAsOf() time.Time {
	now := s.now()
	if as, ok := s.store.(asOfStore); ok {
		if t := as.currentAsOf(); t.Before(now) {
			return t
		}
	}
	return now
}

// follow sends the revisions after `last` as they are committed, and
// heartbeats while idle, until the client or the server goes away (nil).
func (s *Server) follow(r *http.Request, lw *lineWriter, last uint64) error {
	hb := time.NewTimer(s.cfg.Heartbeat)
	defer hb.Stop()
	for {
		published, wake := s.feed.state()
		if published > last {
			sent, err := s.sendShared(lw, last, published)
			if err != nil {
				return err
			}
			if sent == last { // published revisions are always in the history
				return fmt.Errorf("%w: revision %d is not in the history", errBehind, last+1)
			}
			last = sent
			hb.Reset(s.cfg.Heartbeat)
			continue
		}
		select {
		case <-wake:
		case <-hb.C:
			l := tenancy.FeedLine{Type: tenancy.LineHeartbeat, Revision: published, Time: s.currentAsOf().UTC()}
			if err := lw.line(&l); err != nil {
				return err
			}
			if err := lw.flush(); err != nil {
				return err
			}
			hb.Reset(s.cfg.Heartbeat)
		case <-r.Context().Done():
			return nil
		case <-s.ctx.Done():
			return nil
		}
	}
}

// sendRevisions sends the history after revision last, up to revision upto
// (0: all there is), part by part, flushing after each revision, and
// returns the last revision sent whole. The history is read in bounded
// chunks: no read transaction is held while writing to the client, and a
// revision of any size is never held whole in memory.
func (s *Server) sendRevisions(lw *lineWriter, last, upto uint64) (uint64, error) {
	from := u64(last + 1)
	var part uint32 // the part of revision last+1 expected next
	for {
		recs, next, err := s.readLog(from, logChunkBytes)
		if err != nil || len(recs) == 0 {
			return last, err
		}
		for _, rec := range recs {
			e := &rec.entry
			if upto > 0 && e.Revision > upto {
				return last, nil
			}
			if e.Revision != last+1 || rec.part != part {
				return last, fmt.Errorf("%w: next retained record is revision %d part %d, the stream is at revision %d part %d", errBehind, e.Revision, rec.part, last+1, part)
			}
			l := tenancy.FeedLine{Type: tenancy.LineRevision, Revision: e.Revision, Time: e.Time, Changes: e.Changes, More: e.More && !rec.legacy, Hash: e.Hash}
			if err := lw.line(&l); err != nil {
				return last, err
			}
			if l.More {
				part++
				continue
			}
			if err := lw.flush(); err != nil {
				return last, err
			}
			last, part = e.Revision, 0
		}
		if next == nil {
			return last, nil
		}
		from = next
	}
}

// bulkMaxDuration bounds a bulk snapshot: it reads the file in one read
// transaction, which keeps the pages it sees from being reused (the file
// grows meanwhile) and holds off a re-map of the file (when it outgrows its
// mapping, writes wait for it). At disk speed a 10M-grant world takes a
// minute or two; a client slower than this is cut and retries.
var bulkMaxDuration = 15 * time.Minute

// acceptsBulk reports whether a snapshot request's Accept header names the
// bulk snapshot's media type.
func acceptsBulk(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			if strings.EqualFold(strings.TrimSpace(mt), tenancy.BulkMediaType) {
				return true
			}
		}
	}
	return false
}

// deadlineWriter sets a write deadline before each write to the client:
// timeout from now, and never past end.
type deadlineWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	end     time.Time
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	dl := time.Now().Add(d.timeout)
	if dl.After(d.end) {
		dl = d.end
	}
	_ = d.rc.SetWriteDeadline(dl)
	return d.w.Write(p)
}

// sendBulk answers a snapshot request with a bulk snapshot (see
// tenancy.BulkMediaType): the data buckets of the file, in key order, from
// one read transaction. It reports false, having written nothing, when
// the file cannot be sent that way (a file of the legacy schema, whose
// values carry no checksums): the caller sends the NDJSON snapshot.
func (s *Server) sendBulk(w http.ResponseWriter, r *http.Request) bool {
	ctx, cancel := context.WithTimeout(r.Context(), bulkMaxDuration)
	defer cancel()
	start := time.Now()
	tx, err := s.db.Begin(false)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("begin snapshot: %w", err))
		return true
	}
	defer func() { _ = tx.Rollback() }()
	if tenancy.Schema(tx) != tenancy.SchemaVersion {
		return false
	}
	rev := tenancy.Revision(tx)
	h := w.Header()
	h.Set("Content-Type", tenancy.BulkMediaType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(RevisionHeader, strconv.FormatUint(rev, 10))
	dw := &deadlineWriter{w: w, rc: http.NewResponseController(w), timeout: s.cfg.StreamWriteTimeout, end: start.Add(bulkMaxDuration)}
	buf := bufio.NewWriterSize(&ctxWriter{ctx: ctx, w: dw}, 256<<10)
	bw := tenancy.NewBulkWriter(buf)
	err = tenancy.WriteBulk(tx, s.epoch, bw)
	if err == nil {
		err = buf.Flush()
	}
	switch {
	case err != nil && ctx.Err() == nil && !errors.Is(err, errClientGone):
		s.logger.Error("bulk snapshot failed", "revision", rev, "sent", bw.Entities(), "err", err)
	case err != nil:
		s.logger.Debug("bulk snapshot cut", "revision", rev, "sent", bw.Entities(), "err", err)
	default:
		s.logger.Debug("bulk snapshot sent", "revision", rev, "entities", bw.Entities(), "duration", time.Since(start))
	}
	return true
}

// errClientGone: the client went away, or the snapshot outlived its bound.
var errClientGone = errors.New("the snapshot's client went away or took too long")

// ctxWriter fails writes once ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   *deadlineWriter
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, errClientGone
	}
	n, err := c.w.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: %w", errClientGone, err)
	}
	return n, err
}

// Fan-out. A change stream that follows the head sends the revisions just
// committed, the same bytes to every follower: each history part is read
// and encoded once, into a bounded cache shared by the streams (sharedParts),
// and written from there. A stream holds no copy of it: its own memory is
// its goroutine, the connection's buffers and a small write buffer
// (streamBufBytes); a line larger than the buffer goes to the socket from
// the shared bytes.
const (
	// streamBufBytes is a change stream's write buffer.
	streamBufBytes = 4 << 10
	// sharedPartsBytes bounds the encoded parts kept for the streams.
	sharedPartsBytes = 32 << 20
)

// feedPart is one history part encoded as a feed line, newline included;
// shared, never modified.
type feedPart struct {
	rev  uint64
	part uint32
	more bool
	line []byte
}

// partCache holds recently encoded parts, oldest evicted first past max
// bytes. fill serializes reads of the history on a miss: when a revision
// commits, one stream reads and encodes it, the others wait and find it.
type partCache struct {
	fill  sync.Mutex
	mu    sync.Mutex
	parts map[[12]byte]*feedPart
	fifo  []*feedPart
	bytes int
	max   int
	reads atomic.Int64 // history reads on a miss (for tests)
}

func newPartCache(max int) *partCache {
	return &partCache{parts: map[[12]byte]*feedPart{}, max: max}
}

func partID(rev uint64, part uint32) [12]byte {
	var k [12]byte
	binary.BigEndian.PutUint64(k[:], rev)
	binary.BigEndian.PutUint32(k[8:], part)
	return k
}

func (c *partCache) get(rev uint64, part uint32) *feedPart {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.parts[partID(rev, part)]
}

func (c *partCache) add(ps []*feedPart) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range ps {
		id := partID(p.rev, p.part)
		if _, ok := c.parts[id]; ok {
			continue
		}
		c.parts[id] = p
		c.fifo = append(c.fifo, p)
		c.bytes += len(p.line)
	}
	drop := 0
	for c.bytes > c.max && drop < len(c.fifo)-1 {
		old := c.fifo[drop]
		delete(c.parts, partID(old.rev, old.part))
		c.bytes -= len(old.line)
		c.fifo[drop] = nil
		drop++
	}
	if drop > 0 {
		c.fifo = append(c.fifo[:0], c.fifo[drop:]...)
	}
}

// sharedPart returns part `part` of revision rev, encoded, from the shared
// cache or read from the history (with the records after it, about
// logChunkBytes of them); nil when the history does not hold it.
func (s *Server) sharedPart(rev uint64, part uint32) (*feedPart, error) {
	if p := s.parts.get(rev, part); p != nil {
		return p, nil
	}
	s.parts.fill.Lock()
	defer s.parts.fill.Unlock()
	if p := s.parts.get(rev, part); p != nil {
		return p, nil
	}
	s.parts.reads.Add(1)
	from := u64(rev) // also finds a whole revision recorded before parts existed
	if part > 0 {
		from = partKey(rev, part)
	}
	recs, _, err := s.readLog(from, logChunkBytes)
	if err != nil {
		return nil, err
	}
	var want *feedPart
	ps := make([]*feedPart, 0, len(recs))
	for _, rec := range recs {
		e := &rec.entry
		l := tenancy.FeedLine{Type: tenancy.LineRevision, Revision: e.Revision, Time: e.Time, Changes: e.Changes, More: e.More && !rec.legacy, Hash: e.Hash}
		b, err := json.Marshal(&l)
		if err != nil {
			return nil, fmt.Errorf("encode revision %d: %w", e.Revision, err)
		}
		p := &feedPart{rev: e.Revision, part: rec.part, more: l.More, line: append(b, '\n')}
		if p.rev == rev && p.part == part {
			want = p
		}
		ps = append(ps, p)
	}
	s.parts.add(ps)
	return want, nil
}

// sendShared sends the revisions after last up to upto (published: the
// history holds them) from the shared encoded parts, flushing after each
// revision, and returns the last revision sent whole.
func (s *Server) sendShared(lw *lineWriter, last, upto uint64) (uint64, error) {
	var part uint32
	for last < upto {
		p, err := s.sharedPart(last+1, part)
		if err != nil || p == nil {
			if err == nil && part > 0 {
				err = fmt.Errorf("%w: revision %d part %d is not in the history", errBehind, last+1, part)
			}
			return last, err
		}
		if err := lw.raw(p.line); err != nil {
			return last, err
		}
		if p.more {
			part++
			continue
		}
		if err := lw.flush(); err != nil {
			return last, err
		}
		last, part = p.rev, 0
	}
	return last, nil
}
