package envoy

import (
	"bytes"
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// goid is the calling goroutine's id.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	id, _ := strconv.ParseUint(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	return id
}

// TestWorkersRunOnLongLivedGoroutines: evaluations run on the workers'
// own goroutines, the same few every time (their stacks stay grown), not
// on the caller's; before start and after stop, on the caller's.
func TestWorkersRunOnLongLivedGoroutines(t *testing.T) {
	t.Parallel()
	w := newWorkers(2)
	caller := goid()
	var got uint64
	if !w.run(t.Context(), time.Now().Add(time.Second), func() { got = goid() }) || got != caller {
		t.Fatalf("before start: ran on goroutine %d, want the caller's %d", got, caller)
	}
	w.start()
	seen := map[uint64]bool{}
	for range 200 {
		if !w.run(t.Context(), time.Now().Add(time.Second), func() { got = goid() }) {
			t.Fatal("run refused with idle workers")
		}
		if got == caller {
			t.Fatal("ran on the caller's goroutine")
		}
		seen[got] = true
	}
	if len(seen) > 2 {
		t.Errorf("200 runs on %d goroutines, want the 2 workers'", len(seen))
	}
	w.stop()
	if !w.run(t.Context(), time.Now().Add(time.Second), func() { got = goid() }) || got != caller {
		t.Fatalf("after stop: ran on goroutine %d, want the caller's %d", got, caller)
	}
}

// TestWorkersBoundEvaluations: with every worker busy, run waits at most
// until its deadline or its context ends, then refuses without calling fn;
// a freed worker takes the next run.
func TestWorkersBoundEvaluations(t *testing.T) {
	t.Parallel()
	w := newWorkers(1)
	w.start()
	defer w.stop()
	release, started := make(chan struct{}), make(chan struct{})
	done := make(chan bool)
	go func() {
		done <- w.run(context.Background(), time.Now().Add(time.Second), func() { close(started); <-release })
	}()
	<-started
	var called atomic.Bool
	start := time.Now()
	if w.run(t.Context(), time.Now().Add(50*time.Millisecond), func() { called.Store(true) }) {
		t.Fatal("run went past a busy worker")
	}
	if el := time.Since(start); el < 40*time.Millisecond || el > 5*time.Second {
		t.Errorf("refused after %v, want about the 50ms deadline", el)
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(20*time.Millisecond, cancel)
	if w.run(ctx, time.Now().Add(time.Minute), func() { called.Store(true) }) {
		t.Fatal("run went past a busy worker (cancelled context)")
	}
	if called.Load() {
		t.Fatal("a refused fn was called")
	}
	close(release)
	if !<-done {
		t.Fatal("the first run was refused")
	}
	if !w.run(t.Context(), time.Now().Add(time.Second), func() { called.Store(true) }) || !called.Load() {
		t.Fatal("a free worker did not take the run")
	}
}

// TestAdmissionBoundsBytes: requests are admitted while their sizes fit the
// budget; beyond it, acquire waits until room is released or the deadline
// passes (then nil); a request larger than the budget is admitted alone.
func TestAdmissionBoundsBytes(t *testing.T) {
	t.Parallel()
	a := newAdmission(100)
	deadline := func(d time.Duration) time.Time { return time.Now().Add(d) }
	r1 := a.acquire(t.Context(), 60, deadline(time.Second))
	if r1 != 60 {
		t.Fatalf("60 of 100: took %d", r1)
	}
	if n := a.acquire(t.Context(), 60, deadline(30*time.Millisecond)); n != 0 {
		t.Fatal("60 more admitted into 40")
	}
	r2 := a.acquire(t.Context(), 40, deadline(time.Second))
	if r2 != 40 {
		t.Fatalf("40 of the remaining 40: took %d", r2)
	}
	got := make(chan int64, 1)
	go func() { got <- a.acquire(context.Background(), 1000, deadline(5*time.Second)) }() // clamped to 100: waits for all
	time.Sleep(20 * time.Millisecond)
	a.release(r1)
	select {
	case n := <-got:
		t.Fatalf("admitted with 40 in flight: took %d", n)
	case <-time.After(20 * time.Millisecond):
	}
	a.release(r2)
	r3 := <-got
	if r3 != 100 {
		t.Fatalf("an oversized request: took %d, want the whole budget", r3)
	}
	a.release(r3)
	a.release(0) // nothing taken: nothing given back
	if n := a.acquire(t.Context(), 100, deadline(time.Second)); n != 100 {
		t.Fatal("the budget was not given back")
	} else {
		a.release(n)
	}
}
