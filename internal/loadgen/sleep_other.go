//go:build !linux

package loadgen

import (
	"context"
	"time"
)

// sleeper waits for an open loop's next scheduled send (a Go timer; see
// sleep_linux.go for the precise one).
type sleeper struct {
	t *time.Timer
}

func newSleeper() *sleeper {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &sleeper{t: t}
}

// sleep waits for d, or until ctx is done (it then returns false).
func (s *sleeper) sleep(ctx context.Context, d time.Duration) bool {
	s.t.Reset(d)
	select {
	case <-s.t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *sleeper) close() { s.t.Stop() }
