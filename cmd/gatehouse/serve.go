package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/authzen"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/ops"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/token"
)

// serveFlags are the flags of `serve` that override the configuration file.
type serveFlags struct {
	config     string
	policies   string
	dataDir    string
	controlURL string
	grpcAddr   string
	httpAddr   string
	opsAddr    string
	authzAddr  string
	decision   string
	logLevel   string
	logFormat  string
	id         string
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ext_authz sidecar (gRPC :9191, HTTP :9192, ops :8181)",
		Long: `Run the sidecar: Envoy ext_authz over gRPC (envoy.service.auth.v3.Authorization)
and the HTTP service mode, ops endpoints (/healthz /readyz /metrics /v1/status),
policies from a directory (hot reloaded) or a signed bundle, and tenancy data
synced from a control endpoint into a local bbolt cache.

Configuration comes from --config (YAML), overridden by GATEHOUSE_* environment
variables (GATEHOUSE_CONTROL_URL for --control-url, ...), overridden by flags.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return configErr(err)
			}
			cfg, err := loadServeConfig(cmd, f)
			if err != nil {
				return configErr(err)
			}
			logger := newLogger(cfg.Log, cmd.ErrOrStderr())
			applyMemoryLimit(cfg.Limits.MemoryLimitMB, logger)
			sc, err := newSidecar(cfg, logger)
			if err != nil {
				return configErr(err)
			}
			if err := sc.Run(cmd.Context()); err != nil {
				return failureErr(err)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML configuration file (paths in it are relative to its folder)")
	fl.StringVar(&f.policies, "policies", "", "policy directory (policies.dir)")
	fl.StringVar(&f.dataDir, "data-dir", "", "folder of the bbolt cache file (data.dir)")
	fl.StringVar(&f.controlURL, "control-url", "", "control endpoint to sync tenancy data from, or its replicas comma-separated (data.control_url)")
	fl.StringVar(&f.grpcAddr, "grpc-addr", "", "ext_authz gRPC address, host:port or unix:///path (listen.grpc, default 127.0.0.1:9191)")
	fl.StringVar(&f.httpAddr, "http-addr", "", "ext_authz HTTP service address (listen.http, default 127.0.0.1:9192)")
	fl.StringVar(&f.opsAddr, "ops-addr", "", "ops address (listen.ops, default 127.0.0.1:8181)")
	fl.StringVar(&f.authzAddr, "authzen-addr", "", "AuthZEN API address (listen.authzen; off unless set)")
	fl.StringVar(&f.decision, "decision", "", "decision rule path (policies.decision, default envoy/authz/allow)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (log.level)")
	fl.StringVar(&f.logFormat, "log-format", "", "json or text (log.format)")
	fl.StringVar(&f.id, "id", "", "the sidecar's id in decision logs and status reports (id, default the host name)")
	return cmd
}

// loadServeConfig reads the file, applies the flags (and the environment,
// already folded into them), fills defaults and validates.
func loadServeConfig(cmd *cobra.Command, f serveFlags) (ServeConfig, error) {
	var cfg ServeConfig
	if f.config != "" {
		if err := decodeYAMLFile(f.config, &cfg); err != nil {
			return cfg, err
		}
		cfg.resolvePaths(filepath.Dir(f.config))
	}
	set := func(flag string, dst *string, v string) {
		if cmd.Flags().Changed(flag) {
			*dst = v
		}
	}
	set("policies", &cfg.Policies.Dir, f.policies)
	set("data-dir", &cfg.Data.Dir, f.dataDir)
	set("control-url", (*string)(&cfg.Data.ControlURL), f.controlURL)
	set("grpc-addr", &cfg.Listen.GRPC, f.grpcAddr)
	set("http-addr", &cfg.Listen.HTTP, f.httpAddr)
	set("ops-addr", &cfg.Listen.Ops, f.opsAddr)
	set("authzen-addr", &cfg.Listen.AuthZEN, f.authzAddr)
	set("decision", &cfg.Policies.Decision, f.decision)
	set("log-level", &cfg.Log.Level, f.logLevel)
	set("log-format", &cfg.Log.Format, f.logFormat)
	set("id", &cfg.ID, f.id)
	if cmd.Flags().Changed("policies") {
		cfg.Policies.Bundle = bundle.BundleSourceConfig{}
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// sidecar is the assembled `serve` process.
type sidecar struct {
	logger    *slog.Logger
	registry  *prometheus.Registry
	verifier  *token.Verifier
	engine    *authz.Engine
	policies  policySource
	syncer    *replica.Syncer
	ext       *envoy.Server
	ops       *ops.Server
	declog    *decisionlog.Logger // nil: no decision logs
	shadow    *decisionlog.Shadow // nil: no shadow policy
	shadowSrc policySource
	reporter  *ops.Reporter            // nil without a control endpoint
	tracer    *sdktrace.TracerProvider // nil without tracing
	authzen   *authzen.Listener        // nil: listen.authzen not set
	closers   []io.Closer
}

// newSidecar builds every component and opens the listeners. When a step
// fails, what the earlier steps opened (the cache file, listeners) is
// closed before it returns.
func newSidecar(cfg ServeConfig, logger *slog.Logger) (_ *sidecar, err error) {
	var opened []io.Closer // closed, last first, when a later step fails
	defer func() {
		if err != nil {
			for i := len(opened) - 1; i >= 0; i-- {
				_ = opened[i].Close()
			}
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	verifier, err := token.NewVerifier(token.VerifierConfig{
		Issuers: cfg.Issuers, CacheSize: cfg.Cache.Tokens, CacheBytes: bytesOfMB(cfg.Cache.TokensMB), Registerer: reg,
	}, logger)
	if err != nil {
		return nil, err
	}
	var tenancy authz.Tenancy = authz.EmptyTenancy()
	var syncer *replica.Syncer
	var closers []io.Closer
	if cfg.Data.ControlURL != "" {
		store, err := replica.OpenStore(replica.StoreConfig{Dir: cfg.Data.Dir, CacheEntries: cfg.Cache.Documents}, logger)
		if err != nil {
			return nil, err
		}
		closers = append(closers, store)
		opened = append(opened, store)
		tenancy = store
		syncer = replica.NewSyncer(replica.SyncConfig{
			ControlURL:     string(cfg.Data.ControlURL),
			TokenFile:      cfg.Data.TokenFile,
			MaxBackoff:     cfg.Data.ReconnectMaxBackoff,
			CheckOnStart:   cfg.Data.VerifyOnStart == nil || *cfg.Data.VerifyOnStart,
			CheckMaxBytes:  verifyLimit(cfg.Data.VerifyOnStart),
			ResidentBudget: int64(cfg.Data.ResidentBudgetMB) << 20,
			Registerer:     reg,
		}, store, logger)
	}
	ecfg := cfg.engineConfig()
	ecfg.Registerer, ecfg.Builtins = reg, replica.Builtins()
	engine := authz.New(ecfg, verifier, tenancy, logger)
	src, err := newPolicySource(cfg, engine, reg, logger)
	if err != nil {
		return nil, err
	}
	var observer envoy.Observer
	var declog *decisionlog.Logger
	if cfg.DecisionLogs != nil {
		dl := *cfg.DecisionLogs
		dl.ID, dl.Version, dl.Labels, dl.Path, dl.Registerer = cfg.ID, version, cfg.Labels, cfg.Policies.Decision, reg
		if declog, err = decisionlog.New(dl, engine, logger); err != nil {
			return nil, err
		}
		observer = declog
	}
	var shadow *decisionlog.Shadow
	var shadowSrc policySource
	if cfg.Policies.Shadow != nil {
		slog := logger.With("shadow", true)
		sengine := authz.New(authz.Config{
			MaxStaleness: cfg.Data.MaxStaleness, MinRevisionWait: cfg.Data.MinRevisionWait,
			DecisionCacheEntries: cfg.Cache.Decisions, DecisionCacheBytes: bytesOfMB(cfg.Cache.DecisionsMB),
			Builtins: replica.Builtins(),
		}, verifier, tenancy, slog)
		scfg := cfg
		scfg.Policies = *cfg.Policies.Shadow
		scfg.Data.Dir = filepath.Join(cfg.Data.Dir, "shadow") // its own persisted bundle
		if shadowSrc, err = newPolicySource(scfg, sengine, nil, slog); err != nil {
			return nil, fmt.Errorf("policies.shadow: %w", err)
		}
		var next decisionlog.Observer
		if declog != nil {
			next = declog
		}
		shadow = decisionlog.NewShadow(decisionlog.ShadowConfig{Registerer: reg}, sengine, next, logger)
		observer = shadow
	}
	var tp *sdktrace.TracerProvider
	var tracer trace.Tracer
	if cfg.Tracing != nil {
		if tp, err = newTracerProvider(context.Background(), *cfg.Tracing, cfg.ID); err != nil {
			return nil, err
		}
		tracer = tp.Tracer("github.com/gatehouse-dev/gatehouse/envoy")
	}
	ext, err := envoy.New(envoy.Config{
		Tracer:           tracer,
		Observer:         observer,
		DryRun:           cfg.DryRun,
		GRPCAddr:         cfg.Listen.GRPC,
		HTTPAddr:         cfg.Listen.HTTP,
		TLS:              cfg.Listen.TLS,
		HTTPPathPrefix:   cfg.Listen.HTTPPathPrefix,
		Registerer:       reg,
		Reflection:       cfg.Listen.GRPCReflection,
		MaxRequestBytes:  cfg.Limits.MaxRequestBytes,
		MaxInflight:      cfg.Limits.MaxInflight,
		MaxInflightBytes: cfg.Limits.MaxInflightBytes,
	}, engine, logger)
	if err != nil {
		return nil, err
	}
	opsSrv := ops.New(ops.Config{Addr: cfg.Listen.Ops, Pprof: cfg.Listen.Pprof, Gatherer: reg, Registerer: reg}, engine, logger)
	var reporter *ops.Reporter
	if cfg.Data.ControlURL != "" {
		reporter = ops.NewReporter(ops.ReporterConfig{
			ControlURLs: cfg.Data.ControlURL.URLs(), TokenFile: cfg.Data.TokenFile, ID: cfg.ID, Version: version,
			Labels: cfg.Labels, Interval: cfg.Data.StatusInterval, Watch: engine.WatchReadiness,
		}, opsSrv.Snapshot, logger)
	}
	if err := ext.Listen(); err != nil {
		return nil, err
	}
	opened = append(opened, ext)
	if err := opsSrv.Listen(); err != nil {
		return nil, err
	}
	var az *authzen.Listener
	if cfg.Listen.AuthZEN != "" {
		azc := cfg.authzenConfig()
		azc.Registerer = reg
		if declog != nil {
			azc.Observer = declog // AuthZEN answers are decisions too (SPEC §10)
		}
		srv, err := authzen.New(azc, engine, logger)
		if err != nil {
			return nil, err
		}
		if az, err = authzen.NewListener(srv, cfg.Listen.AuthZEN, cfg.Listen.TLS, logger); err != nil {
			return nil, err
		}
		if err := az.Listen(); err != nil {
			return nil, err
		}
	}
	return &sidecar{logger: logger, registry: reg, verifier: verifier, engine: engine, policies: src, syncer: syncer, ext: ext, ops: opsSrv, declog: declog, shadow: shadow, shadowSrc: shadowSrc, reporter: reporter, tracer: tp, authzen: az, closers: closers}, nil
}

// policySource keeps the engine's policy set current: a directory
// (bundle.DirSource) or a signed bundle URL (bundle.PolicySource).
type policySource interface {
	Run(ctx context.Context) error
}

// newPolicySource builds the policy source of cfg.Policies and loads what
// is at hand before the listeners open: the directory, or the persisted
// copy of the last applied bundle (the download starts with Run). A broken
// policy at start is reported; the sidecar stays unready and keeps trying.
func newPolicySource(cfg ServeConfig, engine *authz.Engine, reg prometheus.Registerer, logger *slog.Logger) (policySource, error) {
	if cfg.Policies.Bundle.URL != "" {
		src, err := bundle.NewPolicySource(bundle.PolicySourceConfig{
			Policies:   cfg.Policies,
			DataDir:    cfg.Data.Dir,
			Registerer: reg,
		}, engine, logger)
		if err != nil {
			return nil, err
		}
		_ = src.Restore()
		return src, nil
	}
	src, err := bundle.NewDirSource(cfg.Policies, engine, logger)
	if err != nil {
		return nil, err
	}
	_ = src.Load()
	return src, nil
}

// verifyLimit: unset verify_on_start checks cache files up to 1 GiB after a
// restart; true checks any size.
func verifyLimit(v *bool) int64 {
	if v == nil {
		return 1 << 30
	}
	return 0
}

// processStart is when the process started (for the "ready" log line).
var processStart = time.Now()

// logReady logs, once, when the sidecar becomes ready and how long after
// the process started (a restart serves from the cache file at once).
func (s *sidecar) logReady(ctx context.Context) {
	for {
		w := s.engine.WatchReadiness()
		if err := s.engine.Ready(); err == nil {
			st := s.engine.Tenancy().State()
			s.logger.Info("ready", "since_start", time.Since(processStart).Round(time.Millisecond).String(),
				"policy_revision", s.engine.PolicyStatus().Revision, "tenancy_revision", st.Revision)
			return
		}
		if w.Wait(ctx) != nil {
			return
		}
	}
}

// Run serves until ctx is done (or a component fails), then shuts down in
// order: ext_authz drains (health NOT_SERVING, GracefulStop bounded by its
// shutdown timeout) with the ops and AuthZEN listeners; the shadow policy
// and the decision logs flush what was answered; then the background work
// stops (policy sources, status reports, JWKS refresh, syncer); spans are
// exported; last the cache file closes.
func (s *sidecar) Run(ctx context.Context) error {
	s.logger.Info("gatehouse serve starting", "version", version, "grpc", s.ext.GRPCAddr(), "http", s.ext.HTTPAddr(), "ops", s.ops.Addr())
	// The shadow policy, then decision logs, stop after the listeners have
	// drained: the answers they drain are logged too.
	logDone, shadowDone := make(chan struct{}), make(chan struct{})
	lctx, lcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer lcancel()
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	defer scancel()
	if s.declog != nil {
		go func() { _ = s.declog.Run(lctx); close(logDone) }()
	} else {
		close(logDone)
	}
	if s.shadow != nil {
		go func() { _ = s.shadow.Run(sctx); close(shadowDone) }()
	} else {
		close(shadowDone)
	}

	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()

	var serving, background errgroup.Group
	serve := func(run func(context.Context) error) {
		serving.Go(func() error {
			defer stopServing() // one listener failing stops the others
			return run(serveCtx)
		})
	}
	serve(s.ext.Serve)
	serve(s.ops.Serve)
	if s.authzen != nil {
		s.logger.Info("authzen API listening", "addr", s.authzen.Addr())
		serve(s.authzen.Serve)
	}
	work := func(run func(context.Context) error) {
		background.Go(func() error {
			err := run(bgCtx)
			if err != nil {
				stopServing() // a failed component stops the sidecar
			}
			return err
		})
	}
	work(s.policies.Run)
	if s.shadowSrc != nil {
		work(s.shadowSrc.Run)
	}
	if s.reporter != nil {
		work(s.reporter.Run)
	}
	work(s.verifier.Run)
	if s.syncer != nil {
		work(s.syncer.Run)
	}
	work(func(ctx context.Context) error { s.logReady(ctx); return nil })

	err := serving.Wait() // 1. drained: no check in flight any more
	scancel()             // 2. the shadow policy, then the decision logs
	<-shadowDone
	lcancel()
	<-logDone
	stopBackground() // 3. then the work that feeds the checks
	err = errors.Join(err, background.Wait())
	if s.tracer != nil {
		tctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if terr := s.tracer.Shutdown(tctx); terr != nil {
			s.logger.Warn("tracing: spans not exported at shutdown", "err", terr)
		}
		cancel()
	}
	for _, c := range s.closers { // 4. last, the cache file
		if cerr := c.Close(); cerr != nil {
			s.logger.Warn("close", "err", cerr)
		}
	}
	s.logger.Info("gatehouse serve stopped")
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
