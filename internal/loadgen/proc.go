package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. The
// kernel exports it as 100 on every Linux architecture Go supports.
const clockTicks = 100

// ProcCPU returns the CPU time (user + system) the process pid has used,
// from /proc/PID/stat. Its resolution is 10 ms.
func ProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrProc, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself: fields are counted after the last ')'.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, fmt.Errorf("%w: /proc/%d/stat: no command name", ErrProc, pid)
	}
	fields := bytes.Fields(data[end+1:])
	// fields[0] is field 3 (state); utime is field 14, stime field 15.
	if len(fields) < 13 {
		return 0, fmt.Errorf("%w: /proc/%d/stat: %d fields", ErrProc, pid, len(fields)+2)
	}
	utime, err1 := strconv.ParseUint(string(fields[11]), 10, 64)
	stime, err2 := strconv.ParseUint(string(fields[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%w: /proc/%d/stat: utime %q stime %q", ErrProc, pid, fields[11], fields[12])
	}
	return time.Duration(utime+stime) * (time.Second / clockTicks), nil
}

// Mem is a process's memory, from /proc/PID/status, in bytes.
type Mem struct {
	// RSS is VmRSS: resident pages, RSSAnon + RSSFile + RSSShmem.
	RSS int64
	// RSSAnon is RssAnon: resident anonymous memory (the Go heap, stacks).
	RSSAnon int64
	// RSSFile is RssFile: resident file-backed pages (the binary, and the
	// pages of a memory-mapped file such as a bbolt database).
	RSSFile int64
	// RSSShmem is RssShmem: resident shared memory.
	RSSShmem int64
	// Peak is VmHWM: the largest RSS the process has had.
	Peak int64
}

// ProcMem returns the memory of the process pid from /proc/PID/status.
// VmRSS is required; the other fields are 0 when the kernel does not
// report them (RssAnon and RssFile appeared in Linux 4.5).
func ProcMem(pid int) (Mem, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Mem{}, fmt.Errorf("%w: %w", ErrProc, err)
	}
	return parseStatus(pid, data)
}

func parseStatus(pid int, data []byte) (Mem, error) {
	var m Mem
	fields := map[string]*int64{"VmRSS:": &m.RSS, "RssAnon:": &m.RSSAnon, "RssFile:": &m.RSSFile, "RssShmem:": &m.RSSShmem, "VmHWM:": &m.Peak}
	sawRSS := false
	for line := range bytes.Lines(data) {
		f := bytes.Fields(line) // "VmRSS:", "1234", "kB"
		if len(f) == 0 {
			continue
		}
		dst, ok := fields[string(f[0])]
		if !ok {
			continue
		}
		if len(f) != 3 || string(f[2]) != "kB" {
			return Mem{}, fmt.Errorf("%w: /proc/%d/status: %q is not in kB", ErrProc, pid, bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(f[1]), 10, 64)
		if err != nil || kb < 0 {
			return Mem{}, fmt.Errorf("%w: /proc/%d/status: %q", ErrProc, pid, bytes.TrimSpace(line))
		}
		*dst = kb * 1024
		sawRSS = sawRSS || dst == &m.RSS
	}
	if !sawRSS {
		return Mem{}, fmt.Errorf("%w: /proc/%d/status: no VmRSS", ErrProc, pid)
	}
	return m, nil
}

// ProcRSS returns the resident set size of the process pid in bytes, from
// VmRSS in /proc/PID/status.
func ProcRSS(pid int) (int64, error) {
	m, err := ProcMem(pid)
	return m.RSS, err
}

// HostTimes is the machine's CPU time summed over its CPUs, from the "cpu"
// line of /proc/stat, in clock ticks.
type HostTimes struct {
	// Busy is user + nice + system + irq + softirq: time the CPUs ran work
	// (guest time is counted inside user).
	Busy uint64
	// Idle is idle + iowait.
	Idle uint64
	// Steal is time the hypervisor ran something else while this
	// machine's virtual CPUs wanted to run.
	Steal uint64
}

// ReadHostTimes returns the machine's CPU times from /proc/stat.
func ReadHostTimes() (HostTimes, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return HostTimes{}, fmt.Errorf("%w: %w", ErrProc, err)
	}
	return parseHostTimes(data)
}

// parseHostTimes reads the aggregate "cpu" line of /proc/stat: user nice
// system idle iowait irq softirq steal [guest guest_nice]. Kernels before
// 2.6.11 had no steal field: it is 0 then.
func parseHostTimes(data []byte) (HostTimes, error) {
	for line := range bytes.Lines(data) {
		f := bytes.Fields(line)
		if len(f) == 0 || string(f[0]) != "cpu" {
			continue
		}
		if len(f) < 8 {
			return HostTimes{}, fmt.Errorf("%w: /proc/stat: cpu line with %d fields", ErrProc, len(f)-1)
		}
		var v [8]uint64
		for i := range v {
			if i+1 >= len(f) {
				break
			}
			n, err := strconv.ParseUint(string(f[i+1]), 10, 64)
			if err != nil {
				return HostTimes{}, fmt.Errorf("%w: /proc/stat: cpu field %d: %q", ErrProc, i+1, f[i+1])
			}
			v[i] = n
		}
		return HostTimes{Busy: v[0] + v[1] + v[2] + v[5] + v[6], Idle: v[3] + v[4], Steal: v[7]}, nil
	}
	return HostTimes{}, fmt.Errorf("%w: /proc/stat: no cpu line", ErrProc)
}
