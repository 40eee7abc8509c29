package loadgen

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// BenchFile is the record of one bench/bench.sh run: every server measured
// (the floor first) with its three runs.
type BenchFile struct {
	// Timestamp is when the bench ran (RFC 3339).
	Timestamp string `json:"timestamp"`
	// Pinned is true when server and load generator ran on separate cores.
	Pinned bool `json:"pinned"`
	// Note says anything that qualifies the numbers (e.g. not pinned).
	Note string `json:"note,omitempty"`
	// Servers are the servers measured, in order.
	Servers []BenchServer `json:"servers"`
}

// BenchServer is one server's runs in a bench.
type BenchServer struct {
	// Name names the server ("noop", "gatehouse").
	Name string `json:"name"`
	// Label is the row's name in the table (default: Name).
	Label string `json:"label,omitempty"`
	// Workload names the load sent: "hot" (few distinct questions, asked
	// again and again), "cold" (mostly first-seen questions).
	Workload string `json:"workload,omitempty"`
	// Notes are facts about the server's run printed under the table
	// (e.g. how long it took to become ready).
	Notes []string `json:"notes,omitempty"`
	// Floor marks the no-op server the others are compared with.
	Floor bool `json:"floor,omitempty"`
	// Skipped is why the server was not measured (not built, not ready).
	Skipped string `json:"skipped,omitempty"`
	// Failed is why a run could not be made after the server started.
	Failed string `json:"failed,omitempty"`
	// C16 is the closed loop at concurrency 16: peak throughput.
	C16 *Result `json:"c16,omitempty"`
	// C1 is the closed loop at concurrency 1: latency without queueing.
	C1 *Result `json:"c1,omitempty"`
	// HalfPeak is the open loop at half of C16's throughput.
	HalfPeak *Result `json:"half_peak,omitempty"`
}

// Files CollectBenchServer reads from a server's folder.
const (
	benchC16      = "c16.json"
	benchC1       = "c1.json"
	benchHalfPeak = "half_peak.json"
	benchSkipped  = "skipped"
	benchFailed   = "failed"
	benchFloor    = "floor"
	benchLabel    = "label"
	benchWorkload = "workload"
	benchNotes    = "notes"
)

// CollectBenchServer reads what bench/bench.sh left in dir for one server:
// c16.json, c1.json and half_peak.json (each the output of `loadgen run
// --json`, any of them may be missing), and the text files "skipped" and
// "failed" (a reason), "floor" (a marker), "label" (the row's name),
// "workload" (hot, cold) and "notes" (one note a line). The server's name
// is the folder's name.
func CollectBenchServer(dir string) (BenchServer, error) {
	s := BenchServer{Name: filepath.Base(dir)}
	text := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return strings.TrimSpace(string(b)), err
	}
	result := func(name string) (*Result, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) || err == nil && len(strings.TrimSpace(string(b))) == 0 {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var r Result
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
		}
		return &r, nil
	}
	var errs [9]error
	s.Label, errs[6] = text(benchLabel)
	s.Workload, errs[7] = text(benchWorkload)
	var notes string
	notes, errs[8] = text(benchNotes)
	for line := range strings.Lines(notes) {
		if line = strings.TrimSpace(line); line != "" {
			s.Notes = append(s.Notes, line)
		}
	}
	s.Skipped, errs[0] = text(benchSkipped)
	s.Failed, errs[1] = text(benchFailed)
	_, err := os.Stat(filepath.Join(dir, benchFloor))
	s.Floor = err == nil
	s.C16, errs[2] = result(benchC16)
	s.C1, errs[3] = result(benchC1)
	s.HalfPeak, errs[4] = result(benchHalfPeak)
	if _, err := os.Stat(dir); err != nil {
		errs[5] = err
	}
	return s, errors.Join(errs[:]...)
}

// ReadBenchFile reads a saved BenchFile.
func ReadBenchFile(path string) (*BenchFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f BenchFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

// OK reports whether every server that was measured produced valid runs:
// no failures, errors, mismatches or missed calls. Skipped servers count
// as OK.
func (f *BenchFile) OK() bool {
	for _, s := range f.Servers {
		if s.Skipped != "" {
			continue
		}
		if s.Failed != "" || s.C16 == nil {
			return false
		}
		for _, r := range s.runs() {
			if r.res != nil && (!r.res.OK || r.res.Missed > 0) {
				return false
			}
		}
	}
	return true
}

// clientBusy is the load generator's CPU use (share of its core) above
// which a run's numbers, its tail latency first, may show the client's
// limits rather than the server's.
const clientBusy = 0.7

// A run is noted as disturbed when the hypervisor took at least
// disturbedSteal percent of the machine's CPU time over its window, or
// other processes used at least disturbedOthers cores: its CPU per check
// and latency then include someone else's work.
const (
	disturbedSteal  = 2.0
	disturbedOthers = 0.1
)

type namedRun struct {
	name string
	res  *Result
}

func (s *BenchServer) runs() []namedRun {
	return []namedRun{{"c=16", s.C16}, {"c=1", s.C1}, {"half peak", s.HalfPeak}}
}

// Columns of the comparison table.
var tableHeader = []string{
	"server", "workload", "checks/s c=16", "ratio to floor", "server CPU µs/check", "CPU vs floor",
	"p50 c=16", "p99 c=16", "p99 c=1", "p99 @ half peak", "RSS anon MiB", "RSS file MiB", "peak RSS MiB",
	"decision cache hits", "token cache hits",
}

// Table writes the comparison table (Markdown) and, below it, the notes
// that qualify it: invalid runs, missed calls, a saturated load generator,
// and each server's own notes. Throughput and CPU per check are compared
// with the floor's c=16 run of the same bench.
func (f *BenchFile) Table(w io.Writer) error {
	var floor *Result
	for _, s := range f.Servers {
		if s.Floor && s.C16 != nil && s.C16.ChecksPerSec > 0 {
			floor = s.C16
			break
		}
	}
	rows := [][]string{tableHeader}
	var notes []string
	for _, s := range f.Servers {
		name := s.Name
		if s.Label != "" {
			name = s.Label
		}
		if s.Floor {
			name += " (floor)"
		}
		row := make([]string, len(tableHeader))
		for i := range row {
			row[i] = "-"
		}
		row[0] = name
		if s.Workload != "" {
			row[1] = s.Workload
		}
		if s.Skipped != "" {
			row[2] = "skipped"
			rows = append(rows, row)
			notes = append(notes, fmt.Sprintf("%s: skipped (%s)", s.Name, s.Skipped))
			continue
		}
		if r := s.C16; r != nil {
			if r.DistinctRequests > 0 {
				row[1] = strings.TrimPrefix(fmt.Sprintf("%s %s req, %s tokens", s.Workload, thousands(float64(r.DistinctRequests)), thousands(float64(r.DistinctTokens))), " ")
			}
			row[2] = thousands(r.ChecksPerSec)
			if floor != nil {
				row[3] = fmt.Sprintf("%.2f", r.ChecksPerSec/floor.ChecksPerSec)
			}
			row[6] = fmt.Sprintf("%.2f ms", r.Latency.P50)
			row[7] = fmt.Sprintf("%.2f ms", r.Latency.P99)
			if r.Server != nil {
				row[4] = fmt.Sprintf("%.1f", r.Server.CPUMicrosPerCheck)
				if floor != nil && floor.Server != nil && floor.Server.CPUMicrosPerCheck > 0 {
					row[5] = fmt.Sprintf("%.2f×", r.Server.CPUMicrosPerCheck/floor.Server.CPUMicrosPerCheck)
				}
			}
			if c := r.DecisionCache; c != nil {
				row[13] = percent(c)
			}
			if c := r.TokenCache; c != nil {
				row[14] = percent(c)
			}
		}
		if r := s.C1; r != nil {
			row[8] = fmt.Sprintf("%.2f ms", r.Latency.P99)
		}
		if r := s.HalfPeak; r != nil {
			row[9] = fmt.Sprintf("%.2f ms", r.Latency.P99)
		}
		var mem *ProcStats // the sample with the largest RSS
		invalid := false
		for _, nr := range s.runs() {
			r := nr.res
			if r == nil {
				continue
			}
			if r.Server != nil && (mem == nil || r.Server.RSSMiB > mem.RSSMiB) {
				mem = r.Server
			}
			if !r.OK {
				invalid = true
				notes = append(notes, fmt.Sprintf("%s %s: INVALID, %d mismatches and %d errors in %d checks%s",
					s.Name, nr.name, r.Mismatches, r.Errors, r.Checks, firstProblem(r)))
			}
			if r.Missed > 0 {
				invalid = true
				notes = append(notes, fmt.Sprintf("%s %s: %d scheduled calls were never sent: the rate was not held", s.Name, nr.name, r.Missed))
			}
			if r.Client.CPUUtil >= clientBusy {
				notes = append(notes, fmt.Sprintf("%s %s: the load generator used %.0f%% of its core: its own queueing may be in these numbers",
					s.Name, nr.name, 100*r.Client.CPUUtil))
			}
			if h := r.Host; h != nil && (h.StealPct >= disturbedSteal || h.OtherCores >= disturbedOthers) {
				notes = append(notes, fmt.Sprintf("%s %s: disturbed: the hypervisor took %.1f%% of the machine's CPU time (steal) and other processes used %.2f cores over the window",
					s.Name, nr.name, h.StealPct, h.OtherCores))
			}
			if r.MetricsError != "" {
				notes = append(notes, fmt.Sprintf("%s %s: no cache figures: %s", s.Name, nr.name, r.MetricsError))
			}
		}
		if mem != nil && mem.RSSMiB > 0 {
			row[10], row[11] = fmt.Sprintf("%.1f", mem.RSSAnonMiB), fmt.Sprintf("%.1f", mem.RSSFileMiB)
			if mem.RSSAnonMiB == 0 && mem.RSSFileMiB == 0 { // an older result: VmRSS only
				row[10] = fmt.Sprintf("%.1f (total)", mem.RSSMiB)
				row[11] = "-"
			}
			peak := 0.0
			for _, nr := range s.runs() {
				if nr.res != nil && nr.res.Server != nil {
					peak = max(peak, nr.res.Server.PeakRSSMiB)
				}
			}
			if peak > 0 {
				row[12] = fmt.Sprintf("%.1f", peak)
			}
		}
		if s.Failed != "" {
			invalid = true
			notes = append(notes, fmt.Sprintf("%s: FAILED: %s", s.Name, s.Failed))
		}
		for _, n := range s.Notes {
			notes = append(notes, fmt.Sprintf("%s: %s", s.Name, n))
		}
		if invalid {
			row[0] += " INVALID"
		}
		rows = append(rows, row)
	}
	writeMarkdown(w, rows)
	if f.Note != "" {
		notes = append([]string{f.Note}, notes...)
	}
	for _, n := range notes {
		if _, err := fmt.Fprintf(w, "- %s\n", n); err != nil {
			return err
		}
	}
	return nil
}

// percent is a cache's hit rate as a percentage.
func percent(c *CacheStats) string {
	if c.Lookups == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*c.HitRate)
}

func firstProblem(r *Result) string {
	for _, rs := range r.Requests {
		if rs.Mismatches > 0 {
			return fmt.Sprintf(" (e.g. %s: expected %s, %d allowed, %d denied)", rs.Name, rs.Expect, rs.Allowed, rs.Denied)
		}
		if rs.Errors > 0 {
			return fmt.Sprintf(" (e.g. %s: %s)", rs.Name, rs.FirstError)
		}
	}
	return ""
}

// thousands formats a rate as an integer with comma separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// writeMarkdown writes rows as a Markdown table, the first row as header,
// with columns padded so the plain text reads as a table too.
func writeMarkdown(w io.Writer, rows [][]string) {
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", width[i]-len([]rune(c))))
		}
		fmt.Fprintln(w, b.String())
	}
	line(rows[0])
	sep := make([]string, len(width))
	for i, n := range width {
		sep[i] = strings.Repeat("-", n)
	}
	line(sep)
	for _, r := range rows[1:] {
		line(r)
	}
}
