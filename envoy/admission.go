package envoy

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/sync/semaphore"

	"github.com/gatehouse-dev/gatehouse/authz"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// A Check passes three bounds before it is evaluated (SPEC §2: what a
// client sends never turns into "cannot decide"; each bound is a deny):
//
//   - size: a request larger than Config.MaxRequestBytes is denied 413
//     (request_too_large) without being decoded;
//   - bytes in flight: admission takes the request's size from a weighted
//     semaphore of Config.MaxInflightBytes, held until the answer is built
//     (over gRPC, decodeReserve before the request is decoded, the rest of
//     its size after);
//   - evaluations in flight: Decide runs on one of Config.MaxInflight
//     long-lived worker goroutines. Their stacks have grown to what policy
//     evaluation needs (topdown recurses deeply), so a check does not grow
//     a fresh goroutine's stack again, and at most MaxInflight inputs and
//     evaluations are in memory at once.
//
// A check waits for admission and for a worker at most queueWait, and
// never into the last quarter of the time its caller gave it (Envoy's gRPC
// timeout); then it is denied 429 (overloaded, retry-after: 1): failing
// closed, and early enough for Envoy to receive the deny rather than time
// out (a timeout is a failure, which failure_mode_allow turns into an
// allow). The wait for a minimum revision keeps the same margin.

// queueWait bounds how long a check waits for admission and a worker.
const queueWait = time.Second

// waitUntil is when a check that started at now stops waiting: after at
// most wait, and a quarter of the time left before ctx's deadline (time to
// answer on a loaded machine).
func waitUntil(ctx context.Context, now time.Time, wait time.Duration) time.Time {
	until := now.Add(wait)
	if d, ok := ctx.Deadline(); ok {
		if margin := d.Add(-d.Sub(now) / 4); margin.Before(until) {
			until = margin
		}
	}
	return until
}

// admission bounds the bytes of the requests in flight.
type admission struct {
	sem  *semaphore.Weighted
	size int64
}

func newAdmission(size int64) *admission {
	return &admission{sem: semaphore.NewWeighted(size), size: size}
}

// acquire takes n bytes (clamped to [1, size]), waiting at most until ctx
// ends or deadline passes. It returns the bytes taken (pass them to
// release), 0 when none were.
func (a *admission) acquire(ctx context.Context, n int64, deadline time.Time) int64 {
	n = min(max(n, 1), a.size)
	if !a.sem.TryAcquire(n) {
		wctx, cancel := context.WithDeadline(ctx, deadline)
		err := a.sem.Acquire(wctx, n)
		cancel()
		if err != nil {
			return 0
		}
	}
	return n
}

// release gives back what acquire took (0: nothing).
func (a *admission) release(n int64) {
	if n > 0 {
		a.sem.Release(n)
	}
}

// workers runs evaluations on long-lived goroutines (see above).
//
// # Concurrency
//
// run is safe for concurrent use. Before start and after stop, run calls
// fn on the caller's goroutine (a Server used without Serve).
type workers struct {
	n    int
	jobs chan *job

	running atomic.Bool
	mu      sync.Mutex // serializes start and stop
	quit    chan struct{}
	wg      sync.WaitGroup
}

// job is one evaluation handed to a worker: fn, or (fn nil) Decide of
// engine on req; done is signalled when it has returned. Jobs are pooled:
// a check allocates nothing to hand its evaluation over.
type job struct {
	fn     func()
	ctx    context.Context
	engine *authz.Engine
	req    *authz.Request
	d      *authz.Decision
	err    error
	done   chan struct{}
}

// reset clears j for the pool.
func (j *job) reset() {
	j.fn, j.ctx, j.engine, j.req, j.d, j.err = nil, nil, nil, nil, nil, nil
}

var jobs = sync.Pool{New: func() any { return &job{done: make(chan struct{}, 1)} }}

func newWorkers(n int) *workers {
	return &workers{n: n, jobs: make(chan *job)}
}

// start starts the worker goroutines; stop ends them after their current
// job.
func (w *workers) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running.Load() {
		return
	}
	quit := make(chan struct{})
	w.quit = quit
	for range w.n {
		w.wg.Go(func() { w.loop(quit) })
	}
	w.running.Store(true)
}

func (w *workers) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.running.Load() {
		return
	}
	w.running.Store(false)
	close(w.quit)
	w.wg.Wait()
}

func (w *workers) loop(quit chan struct{}) {
	for {
		select {
		case j := <-w.jobs:
			if j.fn != nil {
				j.fn()
			} else {
				j.d, j.err = j.engine.Decide(j.ctx, j.req)
			}
			j.done <- struct{}{}
		case <-quit:
			return
		}
	}
}

// run calls fn on a worker and returns once it has returned. It waits for a
// free worker at most until ctx ends or deadline passes, and then returns
// false without calling fn.
func (w *workers) run(ctx context.Context, deadline time.Time, fn func()) bool {
	if !w.running.Load() {
		fn()
		return true
	}
	j := jobs.Get().(*job)
	j.fn = fn
	ok := w.do(ctx, deadline, j)
	j.reset()
	jobs.Put(j)
	return ok
}

// decide is engine.Decide(ctx, req) run on a worker (on the caller's
// goroutine when w is nil); ok is false when no worker was free in time.
func (w *workers) decide(ctx context.Context, deadline time.Time, engine *authz.Engine, req *authz.Request) (d *authz.Decision, err error, ok bool) {
	if w == nil || !w.running.Load() {
		d, err = engine.Decide(ctx, req)
		return d, err, true
	}
	j := jobs.Get().(*job)
	j.ctx, j.engine, j.req = ctx, engine, req
	if ok = w.do(ctx, deadline, j); ok {
		d, err = j.d, j.err
	}
	j.reset()
	jobs.Put(j)
	return d, err, ok
}

// do hands j to a worker and waits for it to be done.
func (w *workers) do(ctx context.Context, deadline time.Time, j *job) bool {
	select {
	case w.jobs <- j:
	default:
		t := time.NewTimer(time.Until(deadline))
		select {
		case w.jobs <- j:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
			return false
		}
	}
	<-j.done
	return true
}

// checkMessage is what the gRPC codec decodes a Check request into: the
// request, or why it could not be decoded. Decoding errors are client input
// (invalid UTF-8 in a string field, a truncated message), so they must
// reach Check as a deny, not become the INTERNAL status gRPC answers when a
// codec fails.
type checkMessage struct {
	req  *authv3.CheckRequest
	prep *Prepared // req validated, once decided (nil before, or when it did not validate)
	size int64     // encoded size in bytes
	// err is why req could not be decoded (nil when it was).
	err error
	// tooLarge: size is over the limit; req was not decoded.
	tooLarge bool
	// skip asks the codec to read the message without decoding it (the
	// check is refused before).
	skip bool
}

// codec is the server's gRPC codec: protobuf, except that a checkMessage
// is decoded without ever failing (see checkMessage).
type codec struct {
	proto    encoding.CodecV2
	maxBytes int64 // checkMessages above are not decoded
}

var _ encoding.CodecV2 = (*codec)(nil)

func newCodec(maxBytes int64) *codec {
	return &codec{proto: encoding.GetCodecV2("proto"), maxBytes: maxBytes}
}

func (c *codec) Name() string { return c.proto.Name() }

// pooledMessageBytes is the largest message marshaled into the shared
// buffer pool, whose next tier above 32 KiB is 1 MiB: a large deny (a body
// quoting a long path) would hold 1 MiB until it is written.
const pooledMessageBytes = 32 << 10

// Marshal is gRPC's protobuf marshaling (one Size, then the cached size),
// with a message over pooledMessageBytes in a buffer of its own size.
func (c *codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return c.proto.Marshal(v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true}
	if size > pooledMessageBytes || mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (c *codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*checkMessage)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	m.size = int64(data.Len())
	if m.size > c.maxBytes {
		m.tooLarge = true
	}
	if m.tooLarge || m.skip {
		return nil
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		// Exactly the message's size: the shared pool would hand a 1 MiB
		// buffer to any message over 32 KiB.
		b = data.Materialize()
	}
	if err := proto.Unmarshal(b, m.req); err != nil {
		m.err = fmt.Errorf("%w: the request does not decode: %v", ErrMalformedRequest, err)
	}
	return nil
}
