package main

import (
	"bytes"
	"log/slog"
	"math"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

func TestResolveMemoryLimit(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	tests := map[string]struct {
		mb         int
		gomemlimit string
		cgroup     int64
		want       int64
	}{
		"default, no cgroup limit: none":         {want: 0},
		"default, cgroup limit: 90% of it":       {cgroup: gib, want: gib * 9 / 10},
		"default, GOMEMLIMIT set: the runtime's": {gomemlimit: "300MiB", cgroup: gib, want: 0},
		"configured: that many MiB":              {mb: 200, cgroup: gib, want: 200 << 20},
		"configured wins over GOMEMLIMIT":        {mb: 200, gomemlimit: "300MiB", want: 200 << 20},
		"-1: none, even under a cgroup limit":    {mb: -1, cgroup: gib, gomemlimit: "300MiB", want: math.MaxInt64},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got := resolveMemoryLimit(tc.mb, tc.gomemlimit, tc.cgroup)
			if got.Bytes != tc.want || got.Source == "" {
				t.Fatalf("got %+v, want %d bytes", got, tc.want)
			}
		})
	}
}

// TestCgroupMemoryLimit reads real files laid out as /proc and /sys/fs/cgroup
// are, for cgroup v2, v1 and hybrid hosts.
func TestCgroupMemoryLimit(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		files map[string]string
		want  int64
	}{
		"v2 container: the root's memory.max": {
			files: map[string]string{"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "268435456\n"},
			want:  256 << 20,
		},
		"v2 max: none": {
			files: map[string]string{"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "max\n"},
		},
		"v2 host view: a parent's smaller limit binds": {
			files: map[string]string{
				"proc/self/cgroup":                           "0::/kubepods/pod1/c1\n",
				"sys/fs/cgroup/kubepods/pod1/c1/memory.max":  "max\n",
				"sys/fs/cgroup/kubepods/pod1/memory.max":     "134217728\n",
				"sys/fs/cgroup/kubepods/memory.max":          "1073741824\n",
				"sys/fs/cgroup/memory.max":                   "max\n",
				"sys/fs/cgroup/kubepods/pod1/c1/memory.high": "1\n",
			},
			want: 128 << 20,
		},
		"v2 path not visible (namespaced): the root": {
			files: map[string]string{"proc/self/cgroup": "0::/elsewhere\n", "sys/fs/cgroup/memory.max": "536870912\n"},
			want:  512 << 20,
		},
		"v1: memory.limit_in_bytes": {
			files: map[string]string{
				"proc/self/cgroup": "5:cpu,cpuacct:/\n4:memory:/docker/abc\n",
				"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "209715200\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n",
			},
			want: 200 << 20,
		},
		"v1 unlimited (the largest page-aligned int64): none": {
			files: map[string]string{
				"proc/self/cgroup":                           "4:memory:/\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
			},
		},
		"hybrid: the v1 memory controller's limit": {
			files: map[string]string{
				"proc/self/cgroup":                           "4:memory:/\n0::/\n",
				"sys/fs/cgroup/memory/memory.limit_in_bytes": "104857600\n",
			},
			want: 100 << 20,
		},
		"garbage and missing files: none": {
			files: map[string]string{"proc/self/cgroup": "nonsense\n0::/\n4:memory:/x\n", "sys/fs/cgroup/memory.max": "lots\n"},
		},
		"no /proc/self/cgroup: none": {files: map[string]string{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			for p, content := range tc.files {
				testutil.WriteFile(t, filepath.Join(root, p), content)
			}
			if got := cgroupMemoryLimit(root); got != tc.want {
				t.Fatalf("cgroupMemoryLimit = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestApplyMemoryLimit: the configured limit reaches the runtime and the
// log. Not parallel: the limit is process-wide (restored after).
func TestApplyMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	var buf bytes.Buffer
	applyMemoryLimit(300, slog.New(slog.NewTextHandler(&buf, nil)))
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Fatalf("memory limit %d, want %d", got, 300<<20)
	}
	if !strings.Contains(buf.String(), "limit_mb=300") || !strings.Contains(buf.String(), "limits.memory_limit_mb") {
		t.Fatalf("log: %s", buf.String())
	}
	applyMemoryLimit(-1, slog.New(slog.DiscardHandler))
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Fatalf("memory limit %d after -1, want none", got)
	}
}
