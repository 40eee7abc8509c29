package testutil

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Eventually polls cond every 10ms until it reports true or timeout passes,
// then fails the test with cond's last message.
func Eventually(tb testing.TB, timeout time.Duration, cond func() (ok bool, msg string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not within %v: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// LogBuffer collects log output; it is safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything logged so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger returns a JSON logger at Debug level writing into a LogBuffer. The
// logs are printed when the test fails. Note that the engine bypasses its
// decision cache while debug logging is on: tests of the production path
// use LoggerAt(tb, slog.LevelInfo).
func Logger(tb testing.TB) (*slog.Logger, *LogBuffer) {
	tb.Helper()
	return LoggerAt(tb, slog.LevelDebug)
}

// LoggerAt is Logger at level.
func LoggerAt(tb testing.TB, level slog.Level) (*slog.Logger, *LogBuffer) {
	tb.Helper()
	buf := &LogBuffer{}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("logs:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: level})), buf
}

// MetricValue returns the value of the counter or gauge name with exactly
// the given labels (others may exist), 0 when absent.
func MetricValue(tb testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	tb.Helper()
	mfs, err := g.Gather()
	if err != nil {
		tb.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsMatch(m, labels) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, lp := range m.GetLabel() {
		have[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
