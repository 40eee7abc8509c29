package replica

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// TestCheckFileDoesNotHoldUpClose: a shutdown never waits for the start-up
// consistency check (seconds to minutes on a large file). The check is
// held at its start by a writer holding the store's lock; Close returns at
// once all the same, the check, cancelled by its context, returns the
// context's error without marking the file damaged, and the file is closed
// when the check ends. (Close used to wait for the lock the check held.)
func TestCheckFileDoesNotHoldUpClose(t *testing.T) {
	t.Parallel()
	s, err := OpenStore(StoreConfig{Dir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	s.mu.Lock() // a writer, or a long check, holds the lock
	checked := make(chan error, 1)
	go func() { checked <- s.CheckFile(ctx) }()
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		s.life.Lock()
		defer s.life.Unlock()
		return s.checking, "the check did not start"
	})

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for the consistency check")
	}
	cancel()
	s.mu.Unlock()
	if err := <-checked; !errors.Is(err, context.Canceled) {
		t.Fatalf("CheckFile after cancel = %v, want context.Canceled", err)
	}
	if s.Corrupt() {
		t.Fatal("a cancelled check marked the file damaged")
	}
	if err := s.db().Sync(); err == nil {
		t.Fatal("the file is still open after the check ended")
	}
	if err := s.CheckFile(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("CheckFile after Close = %v, want ErrClosed", err)
	}
}

// TestCheckFilePassesAndCloses: an uncancelled check of a sound file
// passes; Close afterwards closes the file.
func TestCheckFilePassesAndCloses(t *testing.T) {
	t.Parallel()
	s, err := OpenStore(StoreConfig{Dir: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckFile(t.Context()); err != nil {
		t.Fatalf("CheckFile: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
