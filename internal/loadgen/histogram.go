package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// Histogram is a fixed-size log-linear latency histogram, in the manner of
// HdrHistogram: values below 256 ns are exact, above that every power of two
// is split into 128 equal buckets, so a reported value is within 0.4% of the
// true one (bucket midpoint; at most 1/256 relative error). Record never
// allocates. A Histogram is not safe for concurrent use: give each worker
// its own and Merge them.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    float64 // nanoseconds
	min    int64
	max    int64
}

const (
	histSubBits  = 7
	histSub      = 1 << histSubBits // buckets per power of two
	histExact    = 2 * histSub      // values below this have their own bucket
	histBuckets  = (64 - histSubBits) * histSub
	histMaxValue = math.MaxInt64
)

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{min: histMaxValue}
}

func bucketOf(v int64) int {
	if v < histExact {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - (histSubBits + 1)
	mantissa := int(v >> shift) // in [histSub, 2*histSub)
	return (shift+1)*histSub + mantissa - histSub
}

// bucketRange returns the smallest and largest value of bucket i.
func bucketRange(i int) (lo, hi int64) {
	if i < histExact {
		return int64(i), int64(i)
	}
	shift := i/histSub - 1
	mantissa := int64(histSub + i%histSub)
	lo = mantissa << shift
	return lo, lo + (int64(1) << shift) - 1
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += float64(v)
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest recorded value (exact), or 0 when empty.
func (h *Histogram) Max() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.max)
}

// Mean returns the mean of the recorded values (exact), or 0 when empty.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the value below or at which a fraction q (0 < q ≤ 1) of
// the recorded values lie: the value of rank ceil(q·n), as the midpoint of
// its bucket, clamped to the exact min and max. It returns 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketRange(i)
			v := lo + (hi-lo)/2
			return time.Duration(min(max(v, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}
