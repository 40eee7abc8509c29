package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Config is what Run sends, to whom and for how long.
type Config struct {
	// Addr is the server's address: host:port, or any grpc target such as
	// unix:///path.
	Addr string
	// Plan holds the requests to send.
	Plan *Plan
	// Concurrency is the number of workers, and so the most calls in
	// flight at once; default 1.
	Concurrency int
	// Conns is the number of grpc connections the workers are spread
	// over (worker i uses connection i mod Conns); default 1, as Envoy
	// multiplexes a cluster's calls over few HTTP/2 connections.
	Conns int
	// Warmup is sent but not recorded; it precedes the recorded window.
	Warmup time.Duration
	// Prime, when true, sends every distinct request of the plan once
	// before the warm-up (unrecorded, Concurrency at a time): a hot
	// workload's server then answers from its caches, however slowly it
	// went through the first pass.
	Prime bool
	// Duration is the length of the recorded window; required.
	Duration time.Duration
	// Rate, when positive, makes an open loop: calls are scheduled at this
	// many per second in total, whatever the answers' latency, and latency
	// is measured from each call's scheduled send time. Zero makes a
	// closed loop: each worker sends its next call when the last returns.
	Rate float64
	// PID, when positive, is the server process whose CPU time and
	// resident memory are sampled over the recorded window.
	PID int
	// MetricsURL, when set, is the server's Prometheus /metrics; its
	// decision and token cache counters are read at the start and the end
	// of the recorded window (see CacheStats).
	MetricsURL string
	// Timeout is how long calls still in flight after the window may take
	// before they count as errors; default 10 s.
	Timeout time.Duration
	// DialTimeout bounds connecting before the run; default 5 s.
	DialTimeout time.Duration
}

// SetDefaults fills the zero fields that have defaults.
func (c *Config) SetDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.Conns == 0 {
		c.Conns = 1
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
}

// Validate reports every setting out of range, joined.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.Addr == "" {
		bad("addr is required")
	}
	if c.Plan == nil || len(c.Plan.order) == 0 {
		bad("no requests to send")
	}
	if c.Concurrency < 1 || c.Concurrency > 10_000 {
		bad("concurrency %d is not in 1..10000", c.Concurrency)
	}
	if c.Conns < 1 || c.Conns > c.Concurrency {
		bad("conns %d is not in 1..concurrency (%d)", c.Conns, c.Concurrency)
	}
	if c.Duration <= 0 {
		bad("duration %s must be positive", c.Duration)
	}
	if c.Warmup < 0 {
		bad("warmup %s is negative", c.Warmup)
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		bad("rate %v must be a positive number of requests per second, or 0 for a closed loop", c.Rate)
	}
	if c.PID < 0 {
		bad("pid %d is negative", c.PID)
	}
	if c.Timeout < 0 || c.DialTimeout < 0 {
		bad("timeouts must not be negative")
	}
	return errors.Join(errs...)
}

// drainLimit is how long an open loop that has fallen behind may go on
// sending calls scheduled inside the window after the window has ended.
// Calls not sent by then are reported as missed.
const drainLimit = 2 * time.Second

// Run connects to the server, sends the plan's requests as cfg says and
// returns what it measured. It returns an error only when the run could not
// be made (bad configuration, no connection, unreadable /proc, interrupted);
// mismatched answers and failed calls are in the Result (see Result.Check).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PID > 0 {
		if _, err := ProcCPU(cfg.PID); err != nil {
			return nil, fmt.Errorf("pid %d: %w", cfg.PID, err)
		}
	}
	conns, err := dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, cc := range conns {
			_ = cc.Close()
		}
	}()

	if cfg.Prime {
		if err := prime(ctx, cfg, conns); err != nil {
			return nil, err
		}
	}

	r := &runner{cfg: cfg, plan: cfg.Plan, recStart: cfg.Warmup, end: cfg.Warmup + cfg.Duration}
	if cfg.Rate > 0 {
		r.interval = float64(time.Second) / cfg.Rate
	}
	callCtx, cancel := context.WithTimeout(ctx, r.end+cfg.Timeout)
	defer cancel()

	workers := make([]*worker, cfg.Concurrency)
	for i := range workers {
		workers[i] = newWorker(len(r.plan.Names), cfg.Rate > 0)
	}
	var samples sampler
	var wg sync.WaitGroup
	r.base = time.Now()
	wg.Go(func() { samples.run(ctx, r.base, r.recStart, r.end, cfg.PID, cfg.MetricsURL) })
	var tickets chan int64
	if cfg.Rate > 0 {
		tickets = make(chan int64)
		wg.Go(func() { r.pace(ctx, tickets) })
	}
	for i, w := range workers {
		cc := conns[i%len(conns)]
		wg.Go(func() {
			if cfg.Rate > 0 {
				r.openLoop(ctx, callCtx, cc, w, tickets)
			} else {
				r.closedLoop(ctx, callCtx, cc, w, i)
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("run interrupted: %w", err)
	}
	return r.result(workers, &samples)
}

// dial opens cfg.Conns connections and waits until each is ready.
func dial(ctx context.Context, cfg Config) ([]*grpc.ClientConn, error) {
	// A TCP probe first: "connection refused" is clearer than a grpc
	// connectivity state.
	if !strings.Contains(cfg.Addr, "://") {
		d := net.Dialer{Timeout: cfg.DialTimeout}
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", cfg.Addr, err)
		}
		_ = c.Close()
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	var conns []*grpc.ClientConn
	fail := func(err error) ([]*grpc.ClientConn, error) {
		for _, cc := range conns {
			_ = cc.Close()
		}
		return nil, err
	}
	for range cfg.Conns {
		cc, err := grpc.NewClient(cfg.Addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})),
		)
		if err != nil {
			return fail(fmt.Errorf("connect to %s: %w", cfg.Addr, err))
		}
		conns = append(conns, cc)
		cc.Connect()
		for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
			if !cc.WaitForStateChange(dctx, s) {
				return fail(fmt.Errorf("connect to %s: not ready after %s (%s)", cfg.Addr, cfg.DialTimeout, s))
			}
		}
	}
	return conns, nil
}

// prime sends each of the plan's requests once, cfg.Concurrency at a time.
// Answers are not checked (the recorded window checks them all).
func prime(ctx context.Context, cfg Config, conns []*grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout+time.Duration(len(cfg.Plan.wire))*time.Second/10)
	defer cancel()
	next := make(chan int)
	var wg sync.WaitGroup
	for i := range cfg.Concurrency {
		cc := conns[i%len(conns)]
		wg.Go(func() {
			var reply checkReply
			for idx := range next {
				_ = cc.Invoke(ctx, authv3.Authorization_Check_FullMethodName, &cfg.Plan.wire[idx], &reply)
			}
		})
	}
	for idx := range cfg.Plan.wire {
		select {
		case next <- idx:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("priming: %w", err)
	}
	return nil
}

// runner holds what all workers of one run share. Times are offsets from
// base (monotonic clock).
type runner struct {
	cfg      Config
	plan     *Plan
	base     time.Time
	recStart time.Duration // start of the recorded window
	end      time.Duration // end of the recorded window
	interval float64       // open loop: nanoseconds between scheduled calls
	missed   int64         // open loop: calls in the window never sent (pace)
}

// worker is one sender's private record of its calls.
type worker struct {
	lat      *Histogram // from the (scheduled) send to the answer
	svc      *Histogram // open loop: from the actual send to the answer
	counts   []requestCounts
	firstErr []string
	reply    checkReply
}

type requestCounts struct {
	allow, deny, errors, mismatches int64
}

func newWorker(requests int, open bool) *worker {
	w := &worker{
		lat:      NewHistogram(),
		counts:   make([]requestCounts, requests),
		firstErr: make([]string, requests),
	}
	if open {
		w.svc = NewHistogram()
	}
	return w
}

// record classifies one recorded call.
func (w *worker) record(p *Plan, idx int, err error, code int32) {
	c := &w.counts[idx]
	got := Allow
	switch {
	case err != nil:
		got = Error
		c.errors++
		if w.firstErr[idx] == "" {
			st := status.Convert(err)
			w.firstErr[idx] = st.Code().String() + ": " + st.Message()
		}
	case code == 0:
		c.allow++
	default:
		got = Deny
		c.deny++
	}
	if got != Error && got != p.Expect[idx] {
		c.mismatches++
	}
}

func (r *runner) closedLoop(ctx, callCtx context.Context, cc *grpc.ClientConn, w *worker, i int) {
	order := r.plan.order
	pos := i * len(order) / r.cfg.Concurrency // workers start at different places
	for {
		start := time.Since(r.base)
		if start >= r.end {
			return
		}
		idx := order[pos]
		if pos++; pos == len(order) {
			pos = 0
		}
		err := cc.Invoke(callCtx, authv3.Authorization_Check_FullMethodName, &r.plan.wire[idx], &w.reply)
		done := time.Since(r.base)
		if err != nil && ctx.Err() != nil {
			return // interrupted: not the server's fault
		}
		if start < r.recStart {
			continue
		}
		w.lat.Record(done - start)
		w.record(r.plan, idx, err, w.reply.code)
	}
}

// pace is the open loop's clock: it hands out call k at base + k·interval
// to whichever worker is free. When every worker is busy it blocks, and the
// calls it then hands out are already late: their latency, measured from
// the scheduled time, includes that wait.
func (r *runner) pace(ctx context.Context, tickets chan<- int64) {
	defer close(tickets)
	s := newSleeper()
	defer s.close()
	for k := int64(0); ; k++ {
		sched := time.Duration(float64(k) * r.interval)
		if sched >= r.end {
			return
		}
		now := time.Since(r.base)
		if now >= r.end+drainLimit {
			// Hopelessly behind: what is left of the window is missed.
			for ; sched < r.end; k++ {
				if sched >= r.recStart {
					r.missed++
				}
				sched = time.Duration(float64(k+1) * r.interval)
			}
			return
		}
		if sched > now && !s.sleep(ctx, sched-now) {
			return
		}
		select {
		case tickets <- k:
		case <-ctx.Done():
			return
		}
	}
}

func (r *runner) openLoop(ctx, callCtx context.Context, cc *grpc.ClientConn, w *worker, tickets <-chan int64) {
	order := r.plan.order
	for k := range tickets {
		sched := time.Duration(float64(k) * r.interval)
		now := time.Since(r.base)
		idx := order[int(k%int64(len(order)))]
		err := cc.Invoke(callCtx, authv3.Authorization_Check_FullMethodName, &r.plan.wire[idx], &w.reply)
		done := time.Since(r.base)
		if err != nil && ctx.Err() != nil {
			return
		}
		if sched < r.recStart {
			continue
		}
		w.lat.Record(done - sched)
		w.svc.Record(done - now)
		w.record(r.plan, idx, err, w.reply.code)
	}
}

// sampler reads the server's CPU time and the load generator's own at the
// start and the end of the recorded window, the server's memory at the end,
// and its cache counters at both ends. The scrapes are made outside the
// CPU time window: before the first CPU sample, after the last.
type sampler struct {
	serverCPU0, serverCPU1 time.Duration
	selfCPU0, selfCPU1     time.Duration
	host0, host1           HostTimes
	hostErr                error
	mem                    Mem
	metrics0, metrics1     counters
	metricsErr             error
	err                    error
}

var scraped = []string{MetricDecisionCache, MetricTokenVerifications, MetricTokenCacheHits}

func (s *sampler) run(ctx context.Context, base time.Time, start, end time.Duration, pid int, metricsURL string) {
	sleepUntil := func(t time.Time) bool {
		select {
		case <-time.After(time.Until(t)):
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !sleepUntil(base.Add(start)) {
		return
	}
	if metricsURL != "" {
		s.metrics0, s.metricsErr = scrapeMetrics(ctx, metricsURL, scraped...)
	}
	s.host0, s.hostErr = ReadHostTimes()
	s.selfCPU0 = selfCPU()
	if pid > 0 {
		s.serverCPU0, s.err = ProcCPU(pid)
	}
	if !sleepUntil(base.Add(end)) {
		return
	}
	s.selfCPU1 = selfCPU()
	if s.hostErr == nil {
		s.host1, s.hostErr = ReadHostTimes()
	}
	if pid > 0 && s.err == nil {
		if s.serverCPU1, s.err = ProcCPU(pid); s.err == nil {
			s.mem, s.err = ProcMem(pid)
		}
	}
	if metricsURL != "" && s.metricsErr == nil {
		s.metrics1, s.metricsErr = scrapeMetrics(ctx, metricsURL, scraped...)
	}
}

// result merges the workers' records.
func (r *runner) result(workers []*worker, s *sampler) (*Result, error) {
	if s.err != nil {
		return nil, fmt.Errorf("pid %d: %w", r.cfg.PID, s.err)
	}
	lat := NewHistogram()
	var svc *Histogram
	if r.cfg.Rate > 0 {
		svc = NewHistogram()
	}
	res := &Result{
		Addr:            r.cfg.Addr,
		Mode:            ModeClosed,
		Concurrency:     r.cfg.Concurrency,
		Conns:           r.cfg.Conns,
		WarmupSeconds:   r.cfg.Warmup.Seconds(),
		DurationSeconds: r.cfg.Duration.Seconds(),
	}
	res.Primed = r.cfg.Prime
	if r.cfg.Rate > 0 {
		res.Mode = ModeOpen
		res.TargetRate = r.cfg.Rate
	}
	res.Requests = make([]RequestStats, len(r.plan.Names))
	for i, name := range r.plan.Names {
		res.Requests[i] = RequestStats{Name: name, Expect: r.plan.Expect[i].String()}
	}
	for _, w := range workers {
		lat.Merge(w.lat)
		if svc != nil {
			svc.Merge(w.svc)
		}
		for i, c := range w.counts {
			rs := &res.Requests[i]
			rs.Allowed += c.allow
			rs.Denied += c.deny
			rs.Errors += c.errors
			rs.Mismatches += c.mismatches
			if rs.FirstError == "" {
				rs.FirstError = w.firstErr[i]
			}
		}
	}
	for i := range res.Requests {
		rs := &res.Requests[i]
		rs.Count = rs.Allowed + rs.Denied + rs.Errors
		res.Errors += rs.Errors
		res.Mismatches += rs.Mismatches
	}
	res.Missed = r.missed
	res.Checks = int64(lat.Count())
	res.ChecksPerSec = float64(res.Checks) / r.cfg.Duration.Seconds()
	res.Latency = summarize(lat)
	if svc != nil {
		l := summarize(svc)
		res.ServiceLatency = &l
	}
	window := r.cfg.Duration.Seconds()
	selfCPU := (s.selfCPU1 - s.selfCPU0).Seconds()
	res.Client = ProcStats{CPUUtil: selfCPU / window}
	if res.Checks > 0 {
		res.Client.CPUMicrosPerCheck = selfCPU * 1e6 / float64(res.Checks)
	}
	if r.cfg.PID > 0 {
		cpu := (s.serverCPU1 - s.serverCPU0).Seconds()
		res.Server = &ProcStats{PID: r.cfg.PID, CPUUtil: cpu / window, RSSMiB: mib(s.mem.RSS),
			RSSAnonMiB: mib(s.mem.RSSAnon), RSSFileMiB: mib(s.mem.RSSFile), RSSShmemMiB: mib(s.mem.RSSShmem), PeakRSSMiB: mib(s.mem.Peak)}
		if res.Checks > 0 {
			res.Server.CPUMicrosPerCheck = cpu * 1e6 / float64(res.Checks)
		}
	}
	if s.hostErr == nil {
		// no PID: both server samples are zero
		res.Host = hostStats(s.host0, s.host1, selfCPU+(s.serverCPU1-s.serverCPU0).Seconds(), window)
	}
	if r.cfg.MetricsURL != "" {
		if s.metricsErr != nil {
			res.MetricsError = s.metricsErr.Error()
		} else {
			res.DecisionCache, res.TokenCache = cacheStats(s.metrics0, s.metrics1)
		}
	}
	res.DistinctRequests, res.DistinctTokens = r.plan.DistinctRequests, r.plan.DistinctTokens
	res.OK = res.Errors == 0 && res.Mismatches == 0
	return res, nil
}

// hostStats is the machine's share of steal and the cores used by others
// between two readings a window apart; measured is the CPU seconds of the
// processes the run measures (the load generator's and the server's).
func hostStats(a, b HostTimes, measured, window float64) *HostStats {
	busy, idle, steal := float64(b.Busy-a.Busy), float64(b.Idle-a.Idle), float64(b.Steal-a.Steal)
	h := &HostStats{}
	if total := busy + idle + steal; total > 0 {
		h.StealPct = 100 * steal / total
	}
	others := busy/clockTicks - measured
	if window > 0 {
		h.OtherCores = max(0, others/window)
	}
	return h
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
