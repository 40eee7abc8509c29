package loadgen

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// An open loop must send each call on time, to within tens of
// microseconds. A Go timer is that precise while the process is busy (the
// scheduler checks timers whenever it switches goroutines), but when the
// process is idle the runtime sleeps in epoll_wait, whose timeout is whole
// milliseconds: a timer due in 100 µs then fires up to a millisecond late,
// and that lateness would be charged to the server as latency (measured
// here: +0.45 ms on the median). So each wait also arms a timerfd,
// registered with the runtime's netpoller, a few microseconds after the Go
// timer: its expiry ends the idle epoll_wait on time, and the scheduler then
// fires the Go timer. Nothing reads the timerfd; only its wake-up matters.

// alarmSlack puts the timerfd's expiry just after the Go timer's due time,
// so that the timer is due when epoll_wait returns.
const alarmSlack = 5 * time.Microsecond

// sleeper waits for an open loop's next scheduled send. It is used by one
// goroutine at a time.
type sleeper struct {
	t  *time.Timer
	fd int
	f  *os.File // keeps fd registered with the netpoller; nil: no alarm
}

func newSleeper() *sleeper {
	t := time.NewTimer(time.Hour)
	t.Stop()
	s := &sleeper{t: t, fd: -1}
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err == nil {
		// A non-blocking fd: os.NewFile registers it with the netpoller.
		s.fd, s.f = fd, os.NewFile(uintptr(fd), "timerfd")
	}
	return s
}

// sleep waits for d, or until ctx is done (it then returns false).
func (s *sleeper) sleep(ctx context.Context, d time.Duration) bool {
	s.t.Reset(d)
	if s.f != nil {
		spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d + alarmSlack))}
		_ = unix.TimerfdSettime(s.fd, 0, &spec, nil) // on failure: a Go timer alone
	}
	select {
	case <-s.t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *sleeper) close() {
	s.t.Stop()
	if s.f != nil {
		_ = s.f.Close()
	}
}
