//go:build !linux

package bundle

// dropPages is a no-op where madvise is not used.
func dropPages(uintptr, int64) error { return nil }

// residentFileBytes is unknown where /proc is not available.
func residentFileBytes() int64 { return -1 }

// keepResident does nothing where the resident set cannot be measured.
func (s *Syncer) keepResident(<-chan struct{}, int64) {}
