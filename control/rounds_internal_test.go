package control

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// WriteRate runs the writes 0..n-1 from c concurrent writers (writer g
// takes g, g+c, ...) and returns writes per second. The group-commit
// benchmarks (bbolt in control_test, etcd here) share it.
func WriteRate(c, n int, write func(i int)) float64 {
	start := time.Now()
	var wg sync.WaitGroup
	for g := range c {
		wg.Go(func() {
			for i := g; i < n; i += c {
				write(i)
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// ReportSpeedup reports a group-commit benchmark's rounds: the median
// writes/s at c=1 and c=16, and the median, lowest and highest of the
// rounds' own c16/c1 ratios (a burst of load elsewhere lands in one
// round's ratio, not in the median).
func ReportSpeedup(b *testing.B, c1, c16, ratios []float64) {
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(median(c1), "c1_writes/s")
	b.ReportMetric(median(c16), "c16_writes/s")
	b.ReportMetric(median(ratios), "speedup")
	b.ReportMetric(slices.Min(ratios), "speedup_min")
	b.ReportMetric(slices.Max(ratios), "speedup_max")
	b.ReportMetric(0, "ns/op")
}
