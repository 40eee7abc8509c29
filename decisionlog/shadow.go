package decisionlog

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Observer receives entries (a Logger, or nothing).
type Observer interface {
	Observe(Entry)
}

// ShadowConfig configures a Shadow.
type ShadowConfig struct {
	// QueueSize bounds the decisions waiting for the shadow policy
	// (default 1000); beyond it they are not shadowed (counted).
	QueueSize int
	// QueueBytes bounds the requests the queued decisions hold
	// (Entry.Size; default 16 MiB); beyond it they are not shadowed.
	QueueBytes int64
	// Timeout bounds one shadow evaluation (default 1s).
	Timeout time.Duration
	// Registerer receives the metrics (nil: none).
	Registerer prometheus.Registerer
}

// Shadow evaluates a candidate policy set (its own Engine, over the same
// tenancy data and verifier) for the input of each evaluated decision, on
// one goroutine behind a bounded queue: Checks never wait for it and its
// answers never reach Envoy. A disagreement (allowed or status differ) is
// logged at info level with both results and counted
// (gatehouse_shadow_total{result="agree|disagree|error"}); the entry then
// goes on to the decision log with the shadow's answer in
// gatehouse.shadow. When the queue is full the entry goes on unshadowed
// (gatehouse_shadow_skipped_total).
type Shadow struct {
	cfg    ShadowConfig
	engine *authz.Engine
	next   Observer
	logger *slog.Logger
	queue  chan Entry
	queued atomic.Int64 // Entry.Size of the queued entries

	total   *prometheus.CounterVec
	skipped prometheus.Counter
}

// NewShadow returns a Shadow evaluating engine's policy; next (nil: none)
// receives every entry, shadowed or not. Call Run.
func NewShadow(cfg ShadowConfig, engine *authz.Engine, next Observer, logger *slog.Logger) *Shadow {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1000
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 16 << 20
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	s := &Shadow{cfg: cfg, engine: engine, next: next, logger: logger, queue: make(chan Entry, cfg.QueueSize)}
	s.total = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_shadow_total",
		Help: "Shadow policy evaluations, by result: agree, disagree (allowed or status differ from the active policy), error.",
	}, []string{"result"})
	for _, r := range []string{"agree", "disagree", "error"} {
		s.total.WithLabelValues(r)
	}
	s.skipped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gatehouse_shadow_skipped_total",
		Help: "Decisions not shadowed because the shadow queue was full (or at shutdown).",
	})
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.total, s.skipped)
	}
	return s
}

// Observe queues an evaluated decision for the shadow policy without
// blocking; anything else goes straight on.
func (s *Shadow) Observe(e Entry) {
	if e.Decision == nil || e.Decision.Token == nil || e.Input == nil {
		s.forward(e)
		return
	}
	if s.queued.Add(e.Size) > s.cfg.QueueBytes {
		s.queued.Add(-e.Size)
		s.skipped.Inc()
		s.forward(e)
		return
	}
	select {
	case s.queue <- e:
	default:
		s.queued.Add(-e.Size)
		s.skipped.Inc()
		s.forward(e)
	}
}

func (s *Shadow) forward(e Entry) {
	if s.next != nil {
		s.next.Observe(e)
	}
}

// drainTimeout bounds evaluating what is queued at shutdown.
const drainTimeout = 2 * time.Second

// Run evaluates queued decisions until ctx is done, then what is still
// queued for at most drainTimeout; the rest goes on unshadowed.
func (s *Shadow) Run(ctx context.Context) error {
	for {
		select {
		case e := <-s.queue:
			s.queued.Add(-e.Size)
			s.evaluate(ctx, &e)
			s.forward(e)
			continue
		case <-ctx.Done():
		}
		break
	}
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	for {
		select {
		case e := <-s.queue:
			s.queued.Add(-e.Size)
			if dctx.Err() == nil {
				s.evaluate(dctx, &e)
			} else {
				s.skipped.Inc()
			}
			s.forward(e)
		default:
			return nil
		}
	}
}

// evaluate decides e's input with the shadow policy and compares.
func (s *Shadow) evaluate(ctx context.Context, e *Entry) {
	ectx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	d, err := s.engine.Decide(ectx, &authz.Request{Build: e.Input, Token: e.Decision.Token})
	res := &ShadowResult{Decision: d, Err: err}
	active := e.Decision
	switch {
	case err != nil:
		s.total.WithLabelValues("error").Inc()
		s.logger.Warn("shadow policy cannot decide", "decision_id", active.ID, "err", err)
	case d.Allowed == active.Allowed && d.Status() == active.Status():
		res.Agree = true
		s.total.WithLabelValues("agree").Inc()
	default:
		s.total.WithLabelValues("disagree").Inc()
		s.logger.Info("shadow policy disagrees", "decision_id", active.ID,
			"active_allowed", active.Allowed, "active_status", active.Status(), "active_reason", active.Reason,
			"shadow_allowed", d.Allowed, "shadow_status", d.Status(), "shadow_reason", d.Reason,
			"policy_revision", active.PolicyRevision, "shadow_policy_revision", d.PolicyRevision)
	}
	e.Shadow = res
}
