package testutil

import "runtime"

// HeapInUse is the live heap after a collection, for tests bounding the
// memory a cache holds (run them without t.Parallel).
func HeapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
