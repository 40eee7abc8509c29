package loadgen

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Modes of a run.
const (
	// ModeClosed: each worker sends its next call when the last returns.
	ModeClosed = "closed"
	// ModeOpen: calls are scheduled at a fixed rate.
	ModeOpen = "open"
)

// Result is what one run measured. Its JSON form is what `loadgen run
// --json` prints and bench/bench.sh collects.
type Result struct {
	// Addr is the server's address.
	Addr string `json:"addr"`
	// Mode is ModeClosed or ModeOpen.
	Mode string `json:"mode"`
	// Concurrency is the number of workers (most calls in flight).
	Concurrency int `json:"concurrency"`
	// Conns is the number of grpc connections.
	Conns int `json:"conns"`
	// TargetRate is the open loop's scheduled calls per second.
	TargetRate float64 `json:"target_rate,omitempty"`
	// Primed is true when every distinct request was sent once before the
	// warm-up (Config.Prime).
	Primed bool `json:"primed,omitempty"`
	// WarmupSeconds is the unrecorded lead-in.
	WarmupSeconds float64 `json:"warmup_s"`
	// DurationSeconds is the recorded window.
	DurationSeconds float64 `json:"duration_s"`
	// Checks is the number of calls sent (open loop: scheduled) inside the
	// recorded window and answered or failed.
	Checks int64 `json:"checks"`
	// ChecksPerSec is Checks over the recorded window.
	ChecksPerSec float64 `json:"checks_per_sec"`
	// Latency is measured from the send to the answer; in an open loop,
	// from the scheduled send time, so queueing behind a slow answer
	// counts (no coordinated omission).
	Latency Latency `json:"latency"`
	// ServiceLatency (open loop only) is measured from the actual send:
	// the difference to Latency is time spent waiting for a free worker,
	// or the load generator's own lateness.
	ServiceLatency *Latency `json:"service_latency,omitempty"`
	// Missed (open loop only) counts calls scheduled inside the window
	// that were never sent because the loop fell too far behind.
	Missed int64 `json:"missed,omitempty"`
	// Errors counts calls that failed with a gRPC error.
	Errors int64 `json:"errors"`
	// Mismatches counts answers that contradict the scenario's expect.
	Mismatches int64 `json:"mismatches"`
	// DistinctRequests and DistinctTokens describe the plan sent (see
	// Plan): how many different questions, with how many different
	// bearer tokens.
	DistinctRequests int `json:"distinct_requests,omitempty"`
	DistinctTokens   int `json:"distinct_tokens,omitempty"`
	// DecisionCache and TokenCache are the server's cache counters over
	// the recorded window (Config.MetricsURL; nil when not asked for or
	// not exported by the server).
	DecisionCache *CacheStats `json:"decision_cache,omitempty"`
	TokenCache    *CacheStats `json:"token_cache,omitempty"`
	// MetricsError is why the server's metrics could not be read.
	MetricsError string `json:"metrics_error,omitempty"`
	// Requests breaks the counts down by scenario request.
	Requests []RequestStats `json:"requests"`
	// Server is the sampled server process, when a PID was given.
	Server *ProcStats `json:"server,omitempty"`
	// Client is the load generator process itself.
	Client ProcStats `json:"client"`
	// Host is the whole machine over the recorded window (nil where
	// /proc/stat cannot be read): how much else ran beside the two.
	Host *HostStats `json:"host,omitempty"`
	// OK is false when there were errors or mismatches.
	OK bool `json:"ok"`
}

// Latency summarizes a latency histogram, in milliseconds.
type Latency struct {
	// P50 is the median.
	P50 float64 `json:"p50_ms"`
	// P90 is the 90th percentile.
	P90 float64 `json:"p90_ms"`
	// P99 is the 99th percentile.
	P99 float64 `json:"p99_ms"`
	// P999 is the 99.9th percentile.
	P999 float64 `json:"p99_9_ms"`
	// Max is the largest latency.
	Max float64 `json:"max_ms"`
	// Mean is the average latency.
	Mean float64 `json:"mean_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func summarize(h *Histogram) Latency {
	return Latency{
		P50:  ms(h.Quantile(0.50)),
		P90:  ms(h.Quantile(0.90)),
		P99:  ms(h.Quantile(0.99)),
		P999: ms(h.Quantile(0.999)),
		Max:  ms(h.Max()),
		Mean: ms(h.Mean()),
	}
}

// RequestStats are the outcomes of one scenario request's recorded calls.
type RequestStats struct {
	// Name is the scenario request's name.
	Name string `json:"name"`
	// Expect is "allow" or "deny".
	Expect string `json:"expect"`
	// Count is Allowed + Denied + Errors.
	Count int64 `json:"count"`
	// Allowed counts CheckResponses with status OK.
	Allowed int64 `json:"allowed"`
	// Denied counts CheckResponses with another status.
	Denied int64 `json:"denied"`
	// Errors counts gRPC errors.
	Errors int64 `json:"errors"`
	// Mismatches counts answers other than Expect (errors excluded).
	Mismatches int64 `json:"mismatches"`
	// FirstError is the first gRPC error seen, as "Code: message".
	FirstError string `json:"first_error,omitempty"`
}

// ProcStats is a process's resource use over the recorded window.
type ProcStats struct {
	// PID is the process id (0 for the load generator itself).
	PID int `json:"pid,omitempty"`
	// CPUMicrosPerCheck is CPU time (user + system) per recorded check.
	CPUMicrosPerCheck float64 `json:"cpu_us_per_check"`
	// CPUUtil is CPU time over the window's wall time (1 = one core busy).
	CPUUtil float64 `json:"cpu_util"`
	// RSSMiB is the resident set size (VmRSS) at the end of the window
	// (servers only); RSSAnonMiB, RSSFileMiB and RSSShmemMiB are its parts
	// (RssAnon: heap and stacks; RssFile: the binary and mapped files such
	// as the bbolt cache; RssShmem), PeakRSSMiB the largest RSS so far
	// (VmHWM).
	RSSMiB      float64 `json:"rss_mib,omitempty"`
	RSSAnonMiB  float64 `json:"rss_anon_mib,omitempty"`
	RSSFileMiB  float64 `json:"rss_file_mib,omitempty"`
	RSSShmemMiB float64 `json:"rss_shmem_mib,omitempty"`
	PeakRSSMiB  float64 `json:"peak_rss_mib,omitempty"`
}

// HostStats is what the machine's CPUs did over a recorded window, the
// measure of how disturbed a run was: on a shared virtual machine the
// server's CPU per check grows when the hypervisor or other processes take
// the core or its caches.
type HostStats struct {
	// StealPct is the share of the machine's CPU time the hypervisor gave
	// to something else (steal over busy + idle + steal), in percent.
	StealPct float64 `json:"steal_pct"`
	// OtherCores is the CPU the machine's other processes and the kernel's
	// own threads used, in cores: busy time less the server's and the load
	// generator's, over the window (when a server PID was given; else
	// everything but the load generator).
	OtherCores float64 `json:"other_cores"`
}

// Check returns nil when every recorded call got the expected answer, or an
// error wrapping ErrMismatch and/or ErrRPC that names the requests.
func (r *Result) Check() error {
	var errs []error
	if r.Mismatches > 0 {
		var names []string
		for _, rs := range r.Requests {
			if rs.Mismatches > 0 {
				names = append(names, fmt.Sprintf("%s (expected %s: %d allowed, %d denied)", rs.Name, rs.Expect, rs.Allowed, rs.Denied))
			}
		}
		errs = append(errs, fmt.Errorf("%w: %d of %d checks: %s", ErrMismatch, r.Mismatches, r.Checks, strings.Join(names, "; ")))
	}
	if r.Errors > 0 {
		var names []string
		for _, rs := range r.Requests {
			if rs.Errors > 0 {
				names = append(names, fmt.Sprintf("%s (%d, first: %s)", rs.Name, rs.Errors, rs.FirstError))
			}
		}
		errs = append(errs, fmt.Errorf("%w: %d of %d checks: %s", ErrRPC, r.Errors, r.Checks, strings.Join(names, "; ")))
	}
	return errors.Join(errs...)
}

// String is the one-line human summary of the run, followed by one line per
// request that got wrong answers or errors.
func (r *Result) String() string {
	var b strings.Builder
	if r.Mode == ModeOpen {
		fmt.Fprintf(&b, "open %.0f/s c=%d", r.TargetRate, r.Concurrency)
	} else {
		fmt.Fprintf(&b, "closed c=%d", r.Concurrency)
	}
	if r.Conns > 1 {
		fmt.Fprintf(&b, " conns=%d", r.Conns)
	}
	fmt.Fprintf(&b, " %gs: %.0f checks/s", r.DurationSeconds, r.ChecksPerSec)
	l := r.Latency
	fmt.Fprintf(&b, " | p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f max %.3f ms", l.P50, l.P90, l.P99, l.P999, l.Max)
	if r.ServiceLatency != nil {
		fmt.Fprintf(&b, " (from actual send: p99 %.3f ms)", r.ServiceLatency.P99)
	}
	if r.Missed > 0 {
		fmt.Fprintf(&b, " | MISSED %d scheduled calls", r.Missed)
	}
	if r.OK {
		b.WriteString(" | all answers as expected")
	} else {
		fmt.Fprintf(&b, " | FAILED: %d mismatches, %d errors", r.Mismatches, r.Errors)
	}
	if s := r.Server; s != nil {
		fmt.Fprintf(&b, " | server %.1f µs/check %.0f%% cpu %.1f MiB (anon %.1f, file %.1f)", s.CPUMicrosPerCheck, 100*s.CPUUtil, s.RSSMiB, s.RSSAnonMiB, s.RSSFileMiB)
	}
	if c := r.DecisionCache; c != nil {
		fmt.Fprintf(&b, " | decision cache %.1f%% hits", 100*c.HitRate)
	}
	if c := r.TokenCache; c != nil {
		fmt.Fprintf(&b, " | token cache %.1f%% hits", 100*c.HitRate)
	}
	if r.MetricsError != "" {
		fmt.Fprintf(&b, " | %s", r.MetricsError)
	}
	fmt.Fprintf(&b, " | client %.1f µs/check %.0f%% cpu", r.Client.CPUMicrosPerCheck, 100*r.Client.CPUUtil)
	if h := r.Host; h != nil {
		fmt.Fprintf(&b, " | host steal %.1f%%, others %.2f cores", h.StealPct, h.OtherCores)
	}
	for _, rs := range r.Requests {
		if rs.Mismatches == 0 && rs.Errors == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n  %s: expected %s, got %d allowed, %d denied, %d errors", rs.Name, rs.Expect, rs.Allowed, rs.Denied, rs.Errors)
		if rs.Mismatches > 0 {
			fmt.Fprintf(&b, " — MISMATCH x%d", rs.Mismatches)
		}
		if rs.FirstError != "" {
			fmt.Fprintf(&b, " (first error: %s)", rs.FirstError)
		}
	}
	return b.String()
}
