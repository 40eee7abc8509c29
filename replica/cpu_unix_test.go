//go:build unix

package replica_test

import (
	"syscall"
	"time"
)

// processCPU is the CPU time (user + system) the process has used: what a
// check costs, whatever else runs on the machine meanwhile.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
