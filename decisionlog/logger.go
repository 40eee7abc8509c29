package decisionlog

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Reasons of gatehouse_decision_logs_dropped_total.
const (
	DropQueueFull   = "queue_full"   // the queue of decisions was full
	DropBufferFull  = "buffer_full"  // the upload buffer was full (oldest dropped)
	DropRejected    = "rejected"     // the service refused an upload with a 4xx
	DropShutdown    = "shutdown"     // not uploaded before shutdown ended
	DropEncodeError = "encode_error" // the record could not be built or encoded
	DropWriteError  = "write_error"  // the console or file write failed
)

// batchInterval is how often the writer takes the queued answers (at
// most queue_size of them wait: 10000 per 5 ms is 2 million a second).
const batchInterval = 5 * time.Millisecond

// Logger turns answers into decision-log records. See the package
// documentation.
type Logger struct {
	cfg    Config
	engine *authz.Engine
	logger *slog.Logger
	queue  chan Entry
	queued atomic.Int64      // Entry.Size of the queued entries
	labels map[string]string // shared by every record: read only

	// reused by the one writing goroutine
	inBuf, lineBuf []byte
	in, out        *JSON
	withToken      bool                 // the input written gets the decision's token
	rootFn         func(k, t *ast.Term) // l.rootItem, bound once
	lastAuth       string               // the Authorization value of lastSecrets
	lastSecrets    []string             // secretsOf(lastAuth)
	line           bytes.Buffer
	enc            *json.Encoder
	mask           *masker
	reqID          atomic.Uint64
	labelsJSON     string // the labels, encoded once

	console *bufio.Writer
	file    *lumberjack.Logger
	fileBuf *bufio.Writer
	upload  *uploader

	dropped *prometheus.CounterVec
	skipped *prometheus.CounterVec
	written *prometheus.CounterVec
	// resolved children: the Check's path must not hash labels
	dropQueueFull, skipSample prometheus.Counter
	sampleAllow, sampleDeny   float64
}

// New returns a Logger for cfg (SetDefaults and Validate are applied);
// engine is where the mask and drop policies are read (the active policy
// set). Call Run to start writing.
func New(cfg Config, engine *authz.Engine, logger *slog.Logger) (*Logger, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Logger{cfg: cfg, engine: engine, logger: logger, queue: make(chan Entry, max(1, cfg.QueueSize)), mask: newMasker(),
		sampleAllow: 1, sampleDeny: 1}
	l.enc, l.in, l.out = json.NewEncoder(&l.line), newJSON(), newJSON()
	l.rootFn = l.rootItem
	l.labels = make(map[string]string, len(cfg.Labels)+2)
	for k, v := range cfg.Labels {
		l.labels[k] = v
	}
	l.labels["id"], l.labels["version"] = cfg.ID, cfg.Version
	lj, err := json.Marshal(l.labels)
	if err != nil {
		return nil, err
	}
	l.labelsJSON = string(lj)
	if cfg.Sample.Allow != nil {
		l.sampleAllow = *cfg.Sample.Allow
	}
	if cfg.Sample.Deny != nil {
		l.sampleDeny = *cfg.Sample.Deny
	}
	l.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_decision_logs_dropped_total",
		Help: "Decision-log records lost, by reason (queue_full, buffer_full, rejected, shutdown, encode_error, write_error).",
	}, []string{"reason"})
	l.skipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_decision_logs_skipped_total",
		Help: "Decisions not logged on purpose: sample (sampling), policy (data.system.log.drop).",
	}, []string{"reason"})
	l.written = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_decision_logs_written_total",
		Help: "Decision-log records delivered, by sink (console, file, service).",
	}, []string{"sink"})
	for _, r := range []string{DropQueueFull, DropBufferFull, DropRejected, DropShutdown, DropEncodeError, DropWriteError} {
		l.dropped.WithLabelValues(r)
	}
	l.dropQueueFull, l.skipSample = l.dropped.WithLabelValues(DropQueueFull), l.skipped.WithLabelValues("sample")
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(l.dropped, l.skipped, l.written)
	}
	if cfg.Console {
		out := cfg.Stdout
		if out == nil {
			out = os.Stdout
		}
		l.console = bufio.NewWriterSize(out, 64<<10)
	}
	if f := cfg.File; f != nil {
		l.file = &lumberjack.Logger{Filename: f.Path, MaxSize: f.MaxSizeMB, MaxBackups: f.MaxBackups}
		l.fileBuf = bufio.NewWriterSize(l.file, 64<<10)
	}
	if cfg.Service != nil {
		l.upload = newUploader(cfg, l.dropped, l.written.WithLabelValues("service"), logger)
	}
	return l, nil
}

// Observe logs an answer: sampled, then queued without blocking (a full
// queue drops it and counts it).
func (l *Logger) Observe(e Entry) {
	if e.Decision != nil {
		f := l.sampleDeny
		if e.Decision.Allowed {
			f = l.sampleAllow
		}
		if f < 1 && rand.Float64() >= f {
			l.skipSample.Inc()
			return
		}
	}
	if e.Size > 0 && l.queued.Add(e.Size) > l.cfg.QueueBytes {
		l.queued.Add(-e.Size)
		l.dropQueueFull.Inc()
		return
	}
	select {
	case l.queue <- e:
	default:
		l.queued.Add(-e.Size)
		l.dropQueueFull.Inc()
	}
}

// take removes one queued entry (there is one).
func (l *Logger) take() Entry {
	e := <-l.queue
	l.queued.Add(-e.Size)
	return e
}

// Run writes records until ctx is done, then writes what is queued, makes
// a last upload (bounded) and closes the sinks. Stop the ext_authz server
// first: answers observed after Run returns are not logged.
func (l *Logger) Run(ctx context.Context) error {
	upDone := make(chan struct{})
	uctx, ucancel := context.WithCancel(context.Background())
	if l.upload != nil {
		go func() { l.upload.run(uctx); close(upDone) }()
	} else {
		close(upDone)
	}
	// The writer wakes every batchInterval and writes what is queued,
	// rather than being woken by every answer: a Check's send then never
	// readies a parked goroutine.
	tick := time.NewTicker(batchInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			for n := len(l.queue); n > 0; n-- {
				l.write(ctx, l.take())
			}
			l.flush()
			continue
		case <-ctx.Done():
		}
		break
	}
	for {
		select {
		case e := <-l.queue:
			l.queued.Add(-e.Size)
			l.write(context.Background(), e)
			continue
		default:
		}
		break
	}
	l.flush()
	ucancel()
	<-upDone
	if l.file != nil {
		_ = l.file.Close()
	}
	return nil
}

// flush writes the buffered lines out (when the queue is empty, and
// before a line would not fit: a rotation never splits a line).
func (l *Logger) flush() {
	if l.console != nil {
		if err := l.console.Flush(); err != nil {
			l.logger.Warn("decision log: console write failed", "err", err)
		}
	}
	l.flushFile()
}

func (l *Logger) flushFile() {
	if l.fileBuf == nil {
		return
	}
	if err := l.fileBuf.Flush(); err != nil {
		n := l.fileBuf.Buffered()
		l.fileBuf.Reset(l.file)
		l.dropped.WithLabelValues(DropWriteError).Inc()
		l.logger.Warn("decision log: file write failed", "err", err, "bytes_lost", n)
	}
}

// write builds, masks and encodes one record and hands it to the sinks.
func (l *Logger) write(ctx context.Context, e Entry) {
	secrets := l.secretsOf(e.Authorization)
	var line []byte
	if lp := l.mask.policy(l.engine.Policy()); lp == nil {
		line = l.appendRecord(l.lineBuf[:0], &e, secrets)
		l.lineBuf = line
	} else {
		var ok bool
		if line, ok = l.writeMasked(ctx, lp, e, secrets); !ok {
			return
		}
	}
	if l.console != nil {
		l.emit(l.console, "console", line)
	}
	if l.file != nil {
		if l.fileBuf.Available() < len(line) {
			l.flushFile()
		}
		l.emit(l.fileBuf, "file", line)
	}
	if l.upload != nil {
		l.upload.add(line[:len(line)-1]) // without the newline
	}
}

// secretsOf is secretsOf, remembering the last answer (a client sends the
// same credential many times in a row).
func (l *Logger) secretsOf(authorization string) []string {
	if authorization != l.lastAuth || l.lastSecrets == nil {
		l.lastAuth, l.lastSecrets = authorization, secretsOf(authorization)
		if l.lastSecrets == nil {
			l.lastSecrets = []string{}
		}
	}
	return l.lastSecrets
}

// writeMasked is the record of e through a mask or drop policy: built as
// a generic value the policy reads and edits, then encoded. ok is false
// when the record is dropped (counted).
func (l *Logger) writeMasked(ctx context.Context, lp *logPolicy, e Entry, secrets []string) ([]byte, bool) {
	rec, err := l.build(e, secrets)
	if err != nil {
		l.dropped.WithLabelValues(DropEncodeError).Inc()
		l.logger.Error("decision log: record not built", "err", err)
		return nil, false
	}
	drop, err := l.mask.apply(ctx, lp, rec)
	if err != nil {
		// The mask may have been meant to hide something: fail closed.
		l.dropped.WithLabelValues(DropEncodeError).Inc()
		l.logger.Error("decision log: mask policy failed; record dropped", "decision_id", rec.DecisionID, "err", err)
		return nil, false
	}
	if drop {
		l.skipped.WithLabelValues("policy").Inc()
		return nil, false
	}
	line, err := l.encode(rec)
	if err != nil {
		l.dropped.WithLabelValues(DropEncodeError).Inc()
		l.logger.Error("decision log: record not encoded", "decision_id", rec.DecisionID, "err", err)
		return nil, false
	}
	return line, true
}

func (l *Logger) emit(w io.Writer, sink string, line []byte) {
	if _, err := w.Write(line); err != nil {
		l.dropped.WithLabelValues(DropWriteError).Inc()
		l.logger.Warn("decision log: write failed", "sink", sink, "err", err)
		return
	}
	l.written.WithLabelValues(sink).Inc()
}

// Build makes the record of an entry as a mask policy reads it (before
// masking and scrubbing).
func (l *Logger) Build(e Entry) (*Record, error) { return l.build(e, secretsOf(e.Authorization)) }

// build makes the record of e as a generic value (mask policies edit it),
// every string scrubbed of secrets.
func (l *Logger) build(e Entry, secrets []string) (*Record, error) {
	rec, err := l.record(e)
	if err != nil || len(secrets) == 0 {
		return rec, err
	}
	rec.Input = scrub(rec.Input, secrets)
	rec.Result = scrub(rec.Result, secrets)
	if rec.Error != nil {
		rec.Error.Message = scrubString(rec.Error.Message, secrets)
	}
	if s := rec.Gatehouse.Shadow; s != nil {
		s.Result = scrub(s.Result, secrets)
		s.Error = scrubString(s.Error, secrets)
		s.Reason = scrubString(s.Reason, secrets)
	}
	g := &rec.Gatehouse
	g.Reason, g.Subject, g.Tenant, g.Issuer = scrubString(g.Reason, secrets), scrubString(g.Subject, secrets), scrubString(g.Tenant, secrets), scrubString(g.Issuer, secrets)
	return rec, nil
}

func (l *Logger) record(e Entry) (*Record, error) {
	rec := &Record{
		Labels:    l.labels,
		Path:      l.cfg.Path,
		Timestamp: e.Start.UTC().Format(time.RFC3339Nano),
		ReqID:     l.reqID.Add(1),
		TraceID:   e.TraceID,
		SpanID:    e.SpanID,
		Metrics:   Metrics{ServerHandlerNS: e.Duration.Nanoseconds()},
	}
	d := e.Decision
	if d == nil {
		rec.DecisionID = e.ID
		if rec.DecisionID == "" {
			rec.DecisionID = authz.NewDecisionID()
		}
		rec.Error = &RecordError{Code: "cannot_decide", Message: errString(e.Err)}
		var de *authz.DecideError
		if errors.As(e.Err, &de) {
			rec.Error.Code = string(de.Code)
		}
		rec.Gatehouse.Cache = authz.CacheBypass
		rec.Gatehouse.DurationNS = e.Duration.Nanoseconds()
	} else {
		rec.DecisionID = d.ID
		rec.Result = result(d)
		rec.Gatehouse = gatehouseOf(d)
		if d.PolicyRevision != "" {
			rec.Bundles = map[string]Bundle{"policy": {Revision: d.PolicyRevision}}
		}
		if d.Duration > 0 {
			rec.Metrics.RegoEvalNS = d.Duration.Nanoseconds()
		}
	}
	if e.Path != "" {
		rec.Path = e.Path
	}
	if e.Result != nil {
		r, err := jsonLike(e.Result)
		if err != nil {
			return nil, err
		}
		rec.Result = r
	}
	rec.Gatehouse.BatchID = e.BatchID
	rec.Gatehouse.Transport = e.Transport
	rec.Gatehouse.DryRun = e.DryRun
	if s := e.Shadow; s != nil {
		rec.Gatehouse.Shadow = shadowOf(s)
	}
	if e.Input != nil {
		in, err := e.Input(authz.NeedAll)
		if err == nil && in != nil {
			// A copy: the value Input returned is never modified.
			v, err := ast.JSON(in)
			if err != nil {
				return nil, err
			}
			m, _ := v.(map[string]any)
			if m != nil && d != nil && d.Token != nil {
				tv, err := ast.JSON(d.Token.Value())
				if err != nil {
					return nil, err
				}
				m["token"], m["tenancy_revision"] = tv, d.TenancyRevision
			}
			rec.Erased = append(rec.Erased, eraseHeaders(m)...)
			rec.Input = m
		}
	}
	return rec, nil
}

// jsonLike is a copy of an Entry.Result as a JSON-like value (mask
// policies edit it).
func jsonLike(v any) (any, error) {
	if av, ok := v.(ast.Value); ok {
		return ast.JSON(av)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out any
	err = dec.Decode(&out)
	return out, err
}

func shadowOf(s *ShadowResult) *ShadowRecord {
	out := &ShadowRecord{Agree: s.Agree}
	if s.Err != nil {
		out.Error = s.Err.Error()
		return out
	}
	d := s.Decision
	out.Allowed, out.HTTPStatus, out.Reason, out.PolicyRevision, out.Result = d.Allowed, d.Status(), d.Reason, d.PolicyRevision, result(d)
	return out
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// encode returns rec as one JSON line, valid until the next call (its
// buffer is reused).
func (l *Logger) encode(rec *Record) ([]byte, error) {
	l.line.Reset()
	if err := l.enc.Encode(rec); err != nil {
		return nil, err
	}
	return l.line.Bytes(), nil
}
