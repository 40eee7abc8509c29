package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// writeTimeout bounds each write of a stream to its client: a client that
// stops reading is cut (and a snapshot's read transaction ends). A
// variable for tests.
var writeTimeout = 30 * time.Second

// Feed streaming bounds.
const (
	// logChunk and logChunkBytes bound what a change stream reads from the
	// history per read transaction.
	logChunk      = 256
	logChunkBytes = 4 << 20
	// ndjson is the media type of the feed.
	ndjson = "application/x-ndjson"
)

// errBehind ends a change stream whose client fell behind the retained
// history while following: it reconnects, gets 410 and re-snapshots.
var errBehind = errors.New("the stream fell behind the retained history")

// lineWriter writes feed lines to a client, each bounded by writeTimeout.
type lineWriter struct {
	rc  *http.ResponseController
	buf *bufio.Writer
}

func newLineWriter(w http.ResponseWriter) *lineWriter {
	return &lineWriter{rc: http.NewResponseController(w), buf: bufio.NewWriterSize(w, 64<<10)}
}

// line encodes one FeedLine into the buffer.
func (lw *lineWriter) line(l *tenancy.FeedLine) error {
	b, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("encode %s line: %w", l.Type, err)
	}
	_ = lw.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := lw.buf.Write(b); err != nil {
		return err
	}
	return lw.buf.WriteByte('\n')
}

// flush sends the buffered lines to the client now.
func (lw *lineWriter) flush() error {
	_ = lw.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
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

// handleSnapshot is GET /v1/sync/snapshot: every entity at one revision,
// from one read transaction, collections in tenancy.Collections order:
//
//	{"type":"header","revision":R,"epoch":"E"}
//	{"type":"entity","collection":...,"id":...,"mod_revision":M,"value":{...}}
//	{"type":"end","revision":R,"count":N}
func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err == nil {
		err = requireReader(p, "the sync feed")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.metrics.streams.WithLabelValues(streamSnapshot).Inc()
	defer s.metrics.streams.WithLabelValues(streamSnapshot).Dec()
	tx, err := s.db.Begin(false)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("begin snapshot: %w", err))
		return
	}
	defer func() { _ = tx.Rollback() }()
	rev := tenancy.Revision(tx)
	streamHeaders(w, rev)
	lw := newLineWriter(w)
	count, err := writeSnapshot(lw, tx, rev, s.epoch)
	if err == nil {
		err = lw.flush()
	}
	if err != nil {
		s.logger.Debug("snapshot stream cut", "revision", rev, "sent", count, "err", err)
		return
	}
	s.logger.Debug("snapshot sent", "revision", rev, "count", count)
}

// writeSnapshot writes the lines of a snapshot of tx.
func writeSnapshot(lw *lineWriter, tx *bolt.Tx, rev uint64, epoch string) (uint64, error) {
	if err := lw.line(&tenancy.FeedLine{Type: tenancy.LineHeader, Revision: rev, Epoch: epoch}); err != nil {
		return 0, err
	}
	var count uint64
	for _, coll := range tenancy.Collections {
		c := tx.Bucket(entityBucket(coll)).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			mod, doc := tenancy.ModRevision(v)
			l := tenancy.FeedLine{Type: tenancy.LineEntity, Collection: coll, ID: string(k), ModRevision: mod, Value: doc}
			if err := lw.line(&l); err != nil {
				return count, err
			}
			count++
		}
	}
	return count, lw.line(&tenancy.FeedLine{Type: tenancy.LineEnd, Revision: rev, Count: count})
}

// handleChanges is GET /v1/sync/changes?since=R[&epoch=E]: a header line,
// every retained revision after R, then each new revision as it commits,
// with heartbeat lines while idle. It runs until the client goes away or
// the server stops.
func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err == nil {
		err = requireReader(p, "the sync feed")
	}
	var since uint64
	q := r.URL.Query()
	if err == nil {
		v := q.Get("since")
		if since, err = strconv.ParseUint(v, 10, 64); err != nil {
			err = badRequest("since=%q: want the revision the client holds (0 for none)", v)
		}
	}
	if err == nil && q.Has("epoch") && q.Get("epoch") != s.epoch {
		err = errorf(http.StatusGone, CodeGone, "epoch %q is not this control endpoint's history (%s): take a new snapshot", q.Get("epoch"), s.epoch)
	}
	var current, oldest uint64
	if err == nil {
		err = s.db.View(func(tx *bolt.Tx) error {
			current, oldest = historyBounds(tx)
			return nil
		})
	}
	switch {
	case err != nil:
	case since > current:
		err = errorf(http.StatusConflict, CodeAhead, "since=%d is ahead of the current revision %d", since, current)
	case since+1 < oldest:
		err = errorf(http.StatusGone, CodeGone, "since=%d is older than the retained history (oldest revision %d): take a new snapshot", since, oldest)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}

	s.metrics.streams.WithLabelValues(streamChanges).Inc()
	defer s.metrics.streams.WithLabelValues(streamChanges).Dec()
	streamHeaders(w, current)
	lw := newLineWriter(w)
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

// follow sends the revisions after `last` as they are committed, and
// heartbeats while idle, until the client or the server goes away (nil).
func (s *Server) follow(r *http.Request, lw *lineWriter, last uint64) error {
	hb := time.NewTimer(s.cfg.Heartbeat)
	defer hb.Stop()
	for {
		published, wake := s.feed.state()
		if published > last {
			sent, err := s.sendRevisions(lw, last)
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
			l := tenancy.FeedLine{Type: tenancy.LineHeartbeat, Revision: published, Time: s.now().UTC()}
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

// sendRevisions sends every history entry after last, flushing after each
// line, and returns the last revision sent. History read in bounded chunks,
// no read transaction is held while writing to the client.
func (s *Server) sendRevisions(lw *lineWriter, last uint64) (uint64, error) {
	for {
		entries, err := s.readLog(last, logChunk, logChunkBytes)
		if err != nil || len(entries) == 0 {
			return last, err
		}
		for _, e := range entries {
			if e.Revision != last+1 {
				return last, fmt.Errorf("%w: next retained revision is %d, the stream is at %d", errBehind, e.Revision, last)
			}
			l := tenancy.FeedLine{Type: tenancy.LineRevision, Revision: e.Revision, Time: e.Time, Changes: e.Changes}
			if err := lw.line(&l); err != nil {
				return last, err
			}
			if err := lw.flush(); err != nil {
				return last, err
			}
			last = e.Revision
		}
	}
}
