package bundle

import (
	"os"
	"strconv"
	"strings"
	"time"

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

// residentCheckInterval is how often the cache file's resident pages are
// measured against the budget: reading /proc/self/statm costs a few
// microseconds, and a check reading cold parts of the file maps them fast
// (the kernel maps up to 16 neighbouring pages per fault).
const residentCheckInterval = 100 * time.Millisecond

// residentMeter estimates how much of the cache file is in the process's
// resident set: the resident file-backed memory above its level right after
// the last trim, when the cache file had no page mapped; what remains then
// is the binary's and the libraries' pages. Counting those too would keep a
// sidecar whose binary alone exceeds the budget trimming at every check,
// faulting its data back in each time, while its file pages grew unchecked
// between checks.
type residentMeter struct {
	read func() int64 // resident file-backed bytes, -1 when unknown
	base int64        // what read returned after the last trim
}

// cacheBytes returns the cache file's estimated resident bytes, -1 when
// unknown.
func (m *residentMeter) cacheBytes() int64 {
	cur := m.read()
	if cur < 0 {
		return -1
	}
	if cur < m.base { // the kernel reclaimed some of the binary's pages
		m.base = cur
	}
	return cur - m.base
}

// trimmed records that the cache file's pages were just dropped.
func (m *residentMeter) trimmed() {
	if cur := m.read(); cur >= 0 {
		m.base = cur
	}
}

// keepResident keeps the cache file's pages in the resident set under
// budget until done is closed: they are measured every
// residentCheckInterval and dropped when over it.
func (s *Syncer) keepResident(done <-chan struct{}, budget int64) {
	keepUnder(done, budget, residentCheckInterval, &residentMeter{read: residentFileBytes}, s.trim)
}

// keepUnder calls trim once, then every interval in which m counts more
// than budget bytes of the cache file, until done is closed.
func keepUnder(done <-chan struct{}, budget int64, every time.Duration, m *residentMeter, trim func()) {
	trim()
	m.trimmed()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if m.cacheBytes() > budget {
				trim()
				m.trimmed()
			}
		}
	}
}
