package main

import (
	"bufio"
	"bytes"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// The Go runtime's soft memory limit (debug.SetMemoryLimit) makes the
// garbage collector work harder as the heap nears it, instead of letting
// the heap double (GOGC=100) past a container's limit into an OOM kill. A
// sidecar usually runs under a cgroup memory limit, so the default follows
// it: 90% of the limit, leaving a tenth for what the cgroup charges but the
// runtime does not count (the cache file's mapped pages, kept under
// data.resident_budget_mb; kernel socket buffers). Outside a cgroup limit
// nothing is set: any figure would be a guess, and one below the live heap
// makes the collector run continuously.

// memoryLimitShare is the share of the cgroup limit set by default.
const memoryLimitShare = 0.9

// unlimitedCgroup: cgroup v1 reports "no limit" as a huge number (the
// largest page-aligned int64); anything above this is no limit.
const unlimitedCgroup = 1 << 62

// memoryLimit is a resolved limits.memory_limit_mb.
type memoryLimit struct {
	// Bytes is the limit to set; 0 sets none (keeps the runtime's, from
	// GOMEMLIMIT or none), math.MaxInt64 removes any.
	Bytes int64
	// Source says where it came from, for the log.
	Source string
}

// resolveMemoryLimit decides the soft memory limit: a positive mb is that
// many MiB; -1 is no limit (not even GOMEMLIMIT's); 0 (the default) is
// GOMEMLIMIT when set, else 90% of the cgroup limit when there is one
// (cgroup <= 0: none), else none.
func resolveMemoryLimit(mb int, gomemlimit string, cgroup int64) memoryLimit {
	switch {
	case mb > 0:
		return memoryLimit{Bytes: int64(mb) << 20, Source: "limits.memory_limit_mb"}
	case mb < 0:
		return memoryLimit{Bytes: math.MaxInt64, Source: "off (limits.memory_limit_mb: -1)"}
	case gomemlimit != "":
		return memoryLimit{Source: "GOMEMLIMIT"}
	case cgroup > 0:
		return memoryLimit{Bytes: int64(float64(cgroup) * memoryLimitShare), Source: "90% of the cgroup memory limit"}
	}
	return memoryLimit{Source: "none (no cgroup memory limit)"}
}

// applyMemoryLimit resolves and sets the soft memory limit and logs it.
func applyMemoryLimit(mb int, logger *slog.Logger) {
	lim := resolveMemoryLimit(mb, os.Getenv("GOMEMLIMIT"), cgroupMemoryLimit("/"))
	if lim.Bytes != 0 {
		debug.SetMemoryLimit(lim.Bytes)
	}
	cur := debug.SetMemoryLimit(-1) // -1 reads without changing
	if cur == math.MaxInt64 {
		logger.Info("memory limit", "limit_mb", "none", "source", lim.Source)
		return
	}
	logger.Info("memory limit", "limit_mb", cur>>20, "source", lim.Source)
}

// cgroupMemoryLimit returns the memory limit of the process's cgroup, in
// bytes (0: none found), read below root (a test seam; "/" in production):
// cgroup v2's memory.max or v1's memory.limit_in_bytes, the smallest from
// the process's cgroup up to the hierarchy's root (a parent's limit binds
// too; inside a container the process's cgroup is usually the root).
func cgroupMemoryLimit(root string) int64 {
	f, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return 0
	}
	var limit int64
	sc := bufio.NewScanner(bytes.NewReader(f))
	for sc.Scan() {
		// hierarchy-ID:controller-list:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var base, file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			base, file = filepath.Join(root, "sys/fs/cgroup"), "memory.max"
		case hasController(parts[1], "memory"):
			base, file = filepath.Join(root, "sys/fs/cgroup/memory"), "memory.limit_in_bytes"
		default:
			continue
		}
		if l := smallestLimit(base, parts[2], file); l > 0 && (limit == 0 || l < limit) {
			limit = l
		}
	}
	return limit
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// smallestLimit reads file in base/path and each of its parents up to
// base, and returns the smallest limit found (0: none).
func smallestLimit(base, path, file string) int64 {
	var limit int64
	rel := filepath.Clean("/" + path)
	for {
		if l := readLimit(filepath.Join(base, rel, file)); l > 0 && (limit == 0 || l < limit) {
			limit = l
		}
		if rel == "/" {
			return limit
		}
		rel = filepath.Dir(rel)
	}
}

// readLimit parses a cgroup limit file: a number of bytes, "max" (v2) or
// a huge number (v1) for none; a missing or unreadable file is none.
func readLimit(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n >= unlimitedCgroup {
		return 0
	}
	return n
}
