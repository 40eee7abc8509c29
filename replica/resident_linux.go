package replica

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dropPages tells the kernel the process no longer needs the mapped pages
// [addr, addr+size) resident. For a read-only shared file mapping this only
// unmaps them: the data stays in the page cache and the next read faults it
// back in without I/O.
func dropPages(addr uintptr, size int64) error {
	if size <= 0 {
		return nil
	}
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, addr, uintptr(size), unix.MADV_DONTNEED)
	if errno != 0 {
		return errno
	}
	return nil
}

// residentFileBytes returns the process's resident file-backed (and shared)
// memory from /proc/self/statm, or -1 when unknown.
func residentFileBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return -1
	}
	shared, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return -1
	}
	return shared * int64(os.Getpagesize())
}
