package loadgen_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
)

// spinEnv makes TestHostSpinner, run in a child process, burn a core.
const spinEnv = "GATEHOUSE_LOADGEN_SPIN"

// TestHostSpinner is not a test: in a child process started by
// TestRunSeesOtherProcesses it keeps one core busy for at most 20 s (it is
// killed long before).
func TestHostSpinner(t *testing.T) {
	if os.Getenv(spinEnv) != "1" {
		t.Skip("the child process of TestRunSeesOtherProcesses")
	}
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); {
		for range 1 << 20 {
		}
	}
}

// A run records the machine beside the two processes it measures: another
// process burning a core during the window shows in Host.OtherCores.
func TestRunSeesOtherProcesses(t *testing.T) {
	if _, err := loadgen.ReadHostTimes(); err != nil {
		t.Skip("no /proc/stat:", err)
	}
	spin := exec.Command(os.Args[0], "-test.run=^TestHostSpinner$")
	spin.Env = append(os.Environ(), spinEnv+"=1")
	if err := spin.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = spin.Process.Kill()
		_ = spin.Wait()
	})
	key, _ := testKeys(t)
	allow := loadgen.Allow
	res, err := loadgen.Run(t.Context(), loadgen.Config{
		Addr:        serve(t, nil),
		Plan:        plan(t, testScenario, key, &allow),
		Concurrency: 1,
		Conns:       1,
		Rate:        200, // light: the spinner keeps a core whatever the scheduler does
		Warmup:      300 * time.Millisecond,
		Duration:    time.Second,
		PID:         os.Getpid(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Host == nil {
		t.Fatal("no host figures")
	}
	// The spinner alone is most of a core; the machine may run more.
	if res.Host.OtherCores < 0.5 || res.Host.StealPct < 0 || res.Host.StealPct > 100 {
		t.Errorf("host = %+v with a spinning process beside the run: want >= 0.5 other cores", *res.Host)
	}
}

// The bench table says which runs were disturbed, and only those.
func TestBenchTableNotesDisturbedRuns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(server, file string, r loadgen.Result) {
		b, _ := json.Marshal(r)
		writeServerFile(t, dir, server, file, string(b))
	}
	run := func(h *loadgen.HostStats) loadgen.Result {
		return loadgen.Result{ChecksPerSec: 1000, Checks: 100, OK: true, Host: h,
			Server: &loadgen.ProcStats{CPUMicrosPerCheck: 50, RSSMiB: 20}}
	}
	write("noop", "c16.json", run(&loadgen.HostStats{StealPct: 0.4, OtherCores: 0.05}))
	write("noop", "c1.json", run(&loadgen.HostStats{StealPct: 6.5, OtherCores: 0.01}))
	write("gh", "c16.json", run(&loadgen.HostStats{StealPct: 0.1, OtherCores: 0.45}))
	write("gh", "c1.json", run(nil))
	_, out := benchTable(t, dir, "", "noop", "gh")
	for _, want := range []string{
		"- noop c=1: disturbed: the hypervisor took 6.5% of the machine's CPU time (steal) and other processes used 0.01 cores",
		"- gh c=16: disturbed: the hypervisor took 0.1% of the machine's CPU time (steal) and other processes used 0.45 cores",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "disturbed"); n != 2 {
		t.Errorf("%d runs noted as disturbed, want 2:\n%s", n, out)
	}
}
