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
	"golang.org/x/sync/errgroup"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
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
	decision   string
	logLevel   string
	logFormat  string
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
	fl.StringVar(&f.controlURL, "control-url", "", "control endpoint to sync tenancy data from (data.control_url)")
	fl.StringVar(&f.grpcAddr, "grpc-addr", "", "ext_authz gRPC address, host:port or unix:///path (listen.grpc, default 127.0.0.1:9191)")
	fl.StringVar(&f.httpAddr, "http-addr", "", "ext_authz HTTP service address (listen.http, default 127.0.0.1:9192)")
	fl.StringVar(&f.opsAddr, "ops-addr", "", "ops address (listen.ops, default 127.0.0.1:8181)")
	fl.StringVar(&f.decision, "decision", "", "decision rule path (policies.decision, default envoy/authz/allow)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (log.level)")
	fl.StringVar(&f.logFormat, "log-format", "", "json or text (log.format)")
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
	set("control-url", &cfg.Data.ControlURL, f.controlURL)
	set("grpc-addr", &cfg.Listen.GRPC, f.grpcAddr)
	set("http-addr", &cfg.Listen.HTTP, f.httpAddr)
	set("ops-addr", &cfg.Listen.Ops, f.opsAddr)
	set("decision", &cfg.Policies.Decision, f.decision)
	set("log-level", &cfg.Log.Level, f.logLevel)
	set("log-format", &cfg.Log.Format, f.logFormat)
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
	logger   *slog.Logger
	registry *prometheus.Registry
	verifier *token.Verifier
	engine   *authz.Engine
	policies policySource
	syncer   *replica.Syncer
	ext      *envoy.Server
	ops      *ops.Server
	closers  []io.Closer
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
			ControlURL:     cfg.Data.ControlURL,
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
	ext, err := envoy.New(envoy.Config{
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
	if err := ext.Listen(); err != nil {
		return nil, err
	}
	opened = append(opened, ext)
	if err := opsSrv.Listen(); err != nil {
		return nil, err
	}
	return &sidecar{logger: logger, registry: reg, verifier: verifier, engine: engine, policies: src, syncer: syncer, ext: ext, ops: opsSrv, closers: closers}, nil
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
// shutdown timeout) with the ops listener; then the background work stops
// (policy source, JWKS refresh, syncer); last the cache file closes.
func (s *sidecar) Run(ctx context.Context) error {
	s.logger.Info("gatehouse serve starting", "version", version, "grpc", s.ext.GRPCAddr(), "http", s.ext.HTTPAddr(), "ops", s.ops.Addr())
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()

	var serving, background errgroup.Group
	serve := func(run func(context.Context) error) {
		serving.Go(func() error {
			defer stopServing() // one listener failing stops the other
			return run(serveCtx)
		})
	}
	serve(s.ext.Serve)
	serve(s.ops.Serve)
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
	work(s.verifier.Run)
	if s.syncer != nil {
		work(s.syncer.Run)
	}
	work(func(ctx context.Context) error { s.logReady(ctx); return nil })

	err := serving.Wait() // 1. drained: no check in flight any more
	stopBackground()      // 2. then the work that feeds the checks
	err = errors.Join(err, background.Wait())
	for _, c := range s.closers { // 3. last, the cache file
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
