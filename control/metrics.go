package control

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Write results, the label of gatehouse_control_writes_total.
const (
	resultOK        = "ok"        // committed
	resultRefused   = "refused"   // 4xx: malformed, invalid, unknown id, invariant
	resultForbidden = "forbidden" // 403: outside the token's rights
	resultError     = "error"     // 5xx: storage failure
)

// Kinds of feed streams, the label of gatehouse_control_feed_streams.
const (
	streamSnapshot = "snapshot"
	streamChanges  = "changes"
)

// metrics are the control endpoint's Prometheus metrics.
type metrics struct {
	writes        *prometheus.CounterVec
	writeDuration prometheus.Histogram
	streams       *prometheus.GaugeVec
	bodiesBusy    prometheus.Counter
	commits       prometheus.Counter
	auditRecords  prometheus.Counter
	auditTrimmed  prometheus.Counter

	decisionsReceived *prometheus.CounterVec
	decisionsDropped  *prometheus.CounterVec
	decisionBytes     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, revision func() float64) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_control_writes_total",
			Help: "Tenancy writes (PUT, DELETE, batch) by result: ok, refused (4xx), forbidden (403), error (5xx).",
		}, []string{"result"}),
		writeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gatehouse_control_write_duration_seconds",
			Help:    "Duration of committed tenancy writes (transaction incl. fsync).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		bodiesBusy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_control_bodies_busy_total",
			Help: "Request bodies refused with 503 because body_budget_bytes stayed in use by other bodies for body_budget_wait.",
		}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_control_commits_total",
			Help: "Commits of tenancy writes to the store: concurrent writes share one (group commit), so this grows slower than the writes under load.",
		}),
		auditRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_control_audit_records_total",
			Help: "Audit records committed with admin writes (one per changed entity).",
		}),
		auditTrimmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_control_audit_trimmed_total",
			Help: "Audit records removed because they were older than audit.retention.",
		}),
		decisionsReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_control_decisions_received_total",
			Help: "Decision-log records received on POST /v1/logs by result: stored, or duplicate (a decision_id stored before).",
		}, []string{"result"}),
		decisionsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_control_decisions_dropped_total",
			Help: "Decision-log records dropped by reason: evicted (oldest, for decisions.max_mb), invalid, too_large.",
		}, []string{"reason"}),
		decisionBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gatehouse_control_decisions_bytes",
			Help: "Bytes the decision store holds (bounded by decisions.max_mb), as of the last upload.",
		}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatehouse_control_feed_streams",
			Help: "Open sync feed streams by kind (snapshot, changes).",
		}, []string{"kind"}),
	}
	for _, r := range []string{resultOK, resultRefused, resultForbidden, resultError} {
		m.writes.WithLabelValues(r)
	}
	for _, r := range []string{"stored", "duplicate"} {
		m.decisionsReceived.WithLabelValues(r)
	}
	for _, r := range []string{dropEvicted, dropInvalid, dropTooLarge} {
		m.decisionsDropped.WithLabelValues(r)
	}
	for _, k := range []string{streamSnapshot, streamChanges} {
		m.streams.WithLabelValues(k)
	}
	for _, c := range []prometheus.Collector{
		m.writes, m.writeDuration, m.streams, m.bodiesBusy, m.commits, m.auditRecords, m.auditTrimmed,
		m.decisionsReceived, m.decisionsDropped, m.decisionBytes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_control_revision",
			Help: "The last committed tenancy revision.",
		}, revision),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// metricsHandler serves the Gatherer, or 404 when the configured
// Registerer cannot be gathered.
func (s *Server) metricsHandler() http.Handler {
	if s.gatherer == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.writeError(w, r, notFound("metrics are gathered by the embedding program"))
		})
	}
	return promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})
}
