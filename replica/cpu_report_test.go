package replica_test

import (
	"testing"
	"time"
)

// cpuMeter reports the process CPU time per operation of a benchmark loop
// as cpu-ns/op (wall time per op moves with the machine's other load; CPU
// time much less). It includes the GC's work, and in a gRPC benchmark the
// client's.
type cpuMeter struct{ start time.Duration }

func startCPU() *cpuMeter { return &cpuMeter{start: processCPU()} }

func (m *cpuMeter) report(b *testing.B, ops int) {
	if d := processCPU() - m.start; d > 0 && ops > 0 {
		b.ReportMetric(float64(d.Nanoseconds())/float64(ops), "cpu-ns/op")
	}
}
