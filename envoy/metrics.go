package envoy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the check counters and latency histogram of a Server.
type Metrics struct {
	checks   *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

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
	if reg != nil {
		reg.MustRegister(m.checks, m.duration)
	}
	return m
}

// outcome labels
const (
	outcomeAllow = "allow"
	outcomeDeny  = "deny"
	outcomeError = "error"
)

func (m *Metrics) observe(transport, outcome string, seconds float64) {
	m.checks.WithLabelValues(transport, outcome).Inc()
	m.duration.WithLabelValues(transport).Observe(seconds)
}
