package decisionlog

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxBatchBytes bounds one upload's JSON array (before gzip): the records,
// their commas and the brackets.
const maxBatchBytes = 1 << 20

// finalUploadTimeout bounds the last uploads at shutdown.
const finalUploadTimeout = 5 * time.Second

// uploader buffers encoded records (bounded in bytes) and POSTs them as
// gzip'd JSON arrays, retrying with exponential backoff.
type uploader struct {
	url, tokenFile     string
	minDelay, maxDelay time.Duration
	limit              int64
	client             *http.Client
	logger             *slog.Logger
	dropped            *prometheus.CounterVec
	written            prometheus.Counter

	mu    sync.Mutex
	buf   [][]byte
	bytes int64
	kick  chan struct{} // a full batch is waiting
}

func newUploader(cfg Config, dropped *prometheus.CounterVec, written prometheus.Counter, logger *slog.Logger) *uploader {
	r := cfg.Service.Reporting
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second} // bounds a shutdown waiting for an upload in flight
	}
	return &uploader{
		url: cfg.Service.URL, tokenFile: cfg.Service.TokenFile,
		minDelay: seconds(r.MinDelaySeconds), maxDelay: seconds(r.MaxDelaySeconds),
		limit: r.BufferSizeLimitBytes, client: client, logger: logger,
		dropped: dropped, written: written, kick: make(chan struct{}, 1),
	}
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// add buffers one record; when the buffer is over its limit the oldest
// records are dropped and counted.
func (u *uploader) add(rec []byte) {
	rec = bytes.Clone(rec)
	u.mu.Lock()
	u.buf = append(u.buf, rec)
	u.bytes += int64(len(rec))
	n := u.trimLocked()
	full := u.bytes >= maxBatchBytes
	u.mu.Unlock()
	if n > 0 {
		u.dropped.WithLabelValues(DropBufferFull).Add(float64(n))
	}
	if full {
		select {
		case u.kick <- struct{}{}:
		default:
		}
	}
}

// trimLocked drops the oldest records beyond the limit; it returns how many.
func (u *uploader) trimLocked() int {
	n := 0
	for u.bytes > u.limit && len(u.buf) > 0 {
		u.bytes -= int64(len(u.buf[0]))
		u.buf[0] = nil
		u.buf = u.buf[1:]
		n++
	}
	return n
}

// take removes the oldest records whose JSON array fits in maxBatchBytes
// (at least one).
func (u *uploader) take() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	var size int64
	n := 0
	for n < len(u.buf) && (n == 0 || 2+size+int64(len(u.buf[n]))+int64(n) <= maxBatchBytes) {
		size += int64(len(u.buf[n]))
		n++
	}
	batch := u.buf[:n:n]
	u.buf = u.buf[n:]
	u.bytes -= size
	return batch
}

// putBack returns a batch that failed to the front of the buffer.
func (u *uploader) putBack(batch [][]byte) {
	u.mu.Lock()
	var size int64
	for _, r := range batch {
		size += int64(len(r))
	}
	u.buf = append(batch[:len(batch):len(batch)], u.buf...)
	u.bytes += size
	n := u.trimLocked()
	u.mu.Unlock()
	if n > 0 {
		u.dropped.WithLabelValues(DropBufferFull).Add(float64(n))
	}
}

func (u *uploader) pending() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.buf)
}

// run uploads every minDelay (at once when a full batch waits), backing
// off exponentially up to maxDelay after failures, until ctx is done;
// then it uploads what is left within finalUploadTimeout and counts the
// rest as dropped (shutdown).
func (u *uploader) run(ctx context.Context) {
	delay := u.minDelay
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			u.final()
			return
		case <-t.C:
		case <-u.kick:
			if delay > u.minDelay { // backing off: the kick waits its turn
				continue
			}
		}
		// An upload in flight is not cut by shutdown: one cut after the
		// service stored it would be sent again by final.
		if err := u.flush(context.WithoutCancel(ctx)); err != nil {
			delay = min(2*delay, u.maxDelay)
			u.logger.Warn("decision log upload failed; retrying", "err", err, "retry_in", delay, "pending", u.pending())
		} else {
			delay = u.minDelay
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(delay)
	}
}

// final makes the last uploads at shutdown.
func (u *uploader) final() {
	ctx, cancel := context.WithTimeout(context.Background(), finalUploadTimeout)
	defer cancel()
	if err := u.flush(ctx); err != nil {
		u.logger.Warn("decision log: last upload failed", "err", err)
	}
	u.mu.Lock()
	n := len(u.buf)
	u.buf, u.bytes = nil, 0
	u.mu.Unlock()
	if n > 0 {
		u.dropped.WithLabelValues(DropShutdown).Add(float64(n))
		u.logger.Error("decision log: records not uploaded before shutdown", "records", n)
	}
}

// flush uploads batches until the buffer is empty or one fails.
func (u *uploader) flush(ctx context.Context) error {
	for {
		batch := u.take()
		if len(batch) == 0 {
			return nil
		}
		if unsent, err := u.send(ctx, batch); err != nil {
			u.putBack(unsent)
			return err
		}
	}
}

// send uploads a batch, halving it while the service answers 413 (its body
// limit may be below maxBatchBytes); a single record answered 413, or a
// batch answered another 4xx that will not succeed on retry, is dropped
// and counted. On any other error it returns the records not uploaded, to
// be retried.
func (u *uploader) send(ctx context.Context, batch [][]byte) ([][]byte, error) {
	err := u.post(ctx, batch)
	var se *statusError
	switch {
	case err == nil:
		u.written.Add(float64(len(batch)))
		return nil, nil
	case errors.As(err, &se) && se.code == http.StatusRequestEntityTooLarge && len(batch) > 1:
		half := len(batch) / 2
		if unsent, err := u.send(ctx, batch[:half:half]); err != nil {
			return slices.Concat(unsent, batch[half:]), err
		}
		return u.send(ctx, batch[half:])
	case isRejected(err):
		u.dropped.WithLabelValues(DropRejected).Add(float64(len(batch)))
		u.logger.Error("decision log upload refused; records dropped", "records", len(batch), "err", err)
		return nil, nil
	default:
		return batch, err
	}
}

// statusError is an upload answered with an unexpected status.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string { return fmt.Sprintf("upload answered %d: %s", e.code, e.body) }

// isRejected: a 4xx other than 401/403 (a token being rotated), 408 and
// 429 will not succeed on retry.
func isRejected(err error) bool {
	se, ok := err.(*statusError)
	if !ok {
		return false
	}
	switch se.code {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestTimeout, http.StatusTooManyRequests:
		return false
	}
	return se.code >= 400 && se.code < 500
}

// post sends one batch: a gzip'd JSON array, with the bearer token.
func (u *uploader) post(ctx context.Context, batch [][]byte) error {
	var body bytes.Buffer
	zw := gzip.NewWriter(&body)
	_, _ = zw.Write([]byte{'['})
	for i, r := range batch {
		if i > 0 {
			_, _ = zw.Write([]byte{','})
		}
		_, _ = zw.Write(r)
	}
	_, _ = zw.Write([]byte{']'})
	if err := zw.Close(); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.url, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	if u.tokenFile != "" {
		tok, err := os.ReadFile(u.tokenFile)
		if err != nil {
			return fmt.Errorf("token_file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return &statusError{code: resp.StatusCode, body: strings.TrimSpace(string(msg))}
	}
	return nil
}
