package envoy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the check counters and latency histogram of a Server.
type Metrics struct {
	checks   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// the label children, resolved once: the hot path must not hash labels
	counts    [2][3]prometheus.Counter
	durations [2]prometheus.Observer
}

// transport and outcome index the resolved metric children.
type (
	transport int
	outcome   int
)

const (
	transportGRPC transport = iota
	transportHTTP
)

const (
	outcomeAllow outcome = iota
	outcomeDeny
	outcomeError
)

var (
	transportNames = [...]string{"grpc", "http"}
	outcomeNames   = [...]string{"allow", "deny", "error"}
)

func (t transport) String() string { return transportNames[t] }

// NewMetrics registers the check metrics on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_checks_total",
			Help: "Checks answered, by transport (grpc, http) and outcome (allow, deny, error).",
		}, []string{"transport", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatehouse_check_duration_seconds",
			Help:    "Time from receiving a check to answering it, by transport.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"transport"}),
	}
	for t, tn := range transportNames {
		m.durations[t] = m.duration.WithLabelValues(tn)
		for o, on := range outcomeNames {
			m.counts[t][o] = m.checks.WithLabelValues(tn, on)
		}
	}
	if reg != nil {
		reg.MustRegister(m.checks, m.duration)
	}
	return m
}

func (m *Metrics) observe(t transport, o outcome, seconds float64) {
	m.counts[t][o].Inc()
	m.durations[t].Observe(seconds)
}
