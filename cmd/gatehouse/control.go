package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/control"
)

// ControlFile is the configuration file of `gatehouse control`: the
// control.Config keys at the top level, plus `log:`.
type ControlFile struct {
	control.Config `yaml:",inline"`
	// Log configures logging.
	Log LogConfig `yaml:"log"`
}

// controlFlags are the flags of `control` that override the file.
type controlFlags struct {
	config         string
	addr           string
	dataDir        string
	adminTokenFile string
	syncTokenFile  string
	history        int
	store          string
	etcdEndpoints  []string
	etcdPrefix     string
	etcdCAFile     string
	etcdCertFile   string
	etcdKeyFile    string
	etcdAdvertise  string
	logLevel       string
	logFormat      string
}

func newControlCmd() *cobra.Command {
	var f controlFlags
	cmd := &cobra.Command{
		Use:   "control",
		Short: "Run the control endpoint (admin API, sync feed, bundles; :8282)",
		Long: `Run the control endpoint: the admin API for tenancy data (tenants, users,
projects, project grants, user grants, memberships) with its invariants, the
revisioned change feed sidecars sync from (/v1/sync/snapshot, /v1/sync/changes),
and policy bundle hosting (/v1/bundles/{name}). The data lives in
<data-dir>/control.db; one process at a time may open it.

With --store etcd, several replicas share one history in an etcd v3 cluster
(--etcd-endpoints, --etcd-prefix, TLS with --etcd-ca-file, --etcd-cert-file,
--etcd-key-file): etcd orders and stores the revisions, each replica keeps its
own copy of the state in <data-dir>/control.db, built from etcd's log, and
serves the admin API, sync and bundles from it.

Configuration comes from --config (YAML, snake_case keys: addr, data_dir,
admin_token_file, sync_token_file, issuers, history, heartbeat, store, etcd,
max_entity_bytes, max_body_bytes, body_budget_bytes, body_budget_wait,
audit.retention, decisions.max_mb, sidecar_ttl, log),
overridden by GATEHOUSE_* environment variables (GATEHOUSE_ADMIN_TOKEN_FILE
for --admin-token-file, ...), overridden by flags. Paths in the file are
relative to its folder. Runs until SIGTERM or SIGINT.

Exit codes: 0 stopped by a signal; 1 runtime failure (e.g. the address or the
data file is in use); 2 bad flags or configuration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return configErr(err)
			}
			file, err := loadControlConfig(cmd, f)
			if err != nil {
				return configErr(err)
			}
			logger := newLogger(file.Log, cmd.ErrOrStderr())
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			cfg := file.Config
			cfg.Registerer = reg
			srv, err := control.New(cfg, logger)
			if errors.Is(err, control.ErrConfig) {
				return configErr(err)
			}
			if err != nil {
				return failureErr(err)
			}
			defer srv.Close()
			if err := srv.Listen(); err != nil {
				return failureErr(err)
			}
			logger.Info("gatehouse control starting", "version", version, "addr", srv.Addr().String())
			if err := srv.Serve(cmd.Context()); err != nil {
				return failureErr(err)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML configuration file (paths in it are relative to its folder)")
	fl.StringVar(&f.addr, "addr", "", "listen address, host:port or unix:///path (addr, default "+control.DefaultAddr+")")
	fl.StringVar(&f.dataDir, "data-dir", "", "folder of control.db (data_dir, default "+control.DefaultDataDir+")")
	fl.StringVar(&f.adminTokenFile, "admin-token-file", "", "file holding the admin bearer token (admin_token_file, required)")
	fl.StringVar(&f.syncTokenFile, "sync-token-file", "", "file holding the read-only sync token (sync_token_file)")
	fl.IntVar(&f.history, "history", 0, fmt.Sprintf("revisions of change history retained (history, default %d)", control.DefaultHistory))
	fl.StringVar(&f.store, "store", "", "where revisions are committed: bbolt (the local file) or etcd (replicas; store, default bbolt)")
	fl.StringSliceVar(&f.etcdEndpoints, "etcd-endpoints", nil, "etcd client endpoints, host:port,... (etcd.endpoints)")
	fl.StringVar(&f.etcdPrefix, "etcd-prefix", "", "key prefix of this control plane in etcd (etcd.prefix, default "+control.DefaultEtcdPrefix+")")
	fl.StringVar(&f.etcdCAFile, "etcd-ca-file", "", "CA certificates verifying the etcd members (etcd.ca_file; turns TLS on)")
	fl.StringVar(&f.etcdCertFile, "etcd-cert-file", "", "client certificate for etcd (etcd.cert_file, with --etcd-key-file)")
	fl.StringVar(&f.etcdKeyFile, "etcd-key-file", "", "client key for etcd (etcd.key_file)")
	fl.StringVar(&f.etcdAdvertise, "etcd-advertise-url", "", "URL other replicas reach this one at, to build a new replica from its snapshot (etcd.advertise_url)")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (log.level)")
	fl.StringVar(&f.logFormat, "log-format", "", "json or text (log.format)")
	return cmd
}

// loadControlConfig reads the file, applies the flags (and the environment,
// already folded into them), fills defaults and validates the log keys;
// control.New validates the rest, once.
func loadControlConfig(cmd *cobra.Command, f controlFlags) (ControlFile, error) {
	var file ControlFile
	if f.config != "" {
		if err := decodeYAMLFile(f.config, &file); err != nil {
			return file, err
		}
		file.resolvePaths(filepath.Dir(f.config))
	}
	set := func(flag string, dst *string, v string) {
		if cmd.Flags().Changed(flag) {
			*dst = v
		}
	}
	set("addr", &file.Addr, f.addr)
	set("data-dir", &file.DataDir, f.dataDir)
	set("admin-token-file", &file.AdminTokenFile, f.adminTokenFile)
	set("sync-token-file", &file.SyncTokenFile, f.syncTokenFile)
	set("store", &file.Store, f.store)
	set("etcd-prefix", &file.Etcd.Prefix, f.etcdPrefix)
	set("etcd-ca-file", &file.Etcd.CAFile, f.etcdCAFile)
	set("etcd-cert-file", &file.Etcd.CertFile, f.etcdCertFile)
	set("etcd-key-file", &file.Etcd.KeyFile, f.etcdKeyFile)
	set("etcd-advertise-url", &file.Etcd.AdvertiseURL, f.etcdAdvertise)
	if cmd.Flags().Changed("etcd-endpoints") {
		file.Etcd.Endpoints = f.etcdEndpoints
	}
	set("log-level", &file.Log.Level, f.logLevel)
	set("log-format", &file.Log.Format, f.logFormat)
	if cmd.Flags().Changed("history") {
		file.History = f.history
	}
	file.SetDefaults()
	file.Log.SetDefaults()
	// control.New validates file.Config (the one place); the log keys are
	// this command's.
	if err := file.Log.Validate(); err != nil {
		return file, err
	}
	return file, nil
}

// resolvePaths makes the file paths of a configuration file relative to the
// file's folder.
func (c *ControlFile) resolvePaths(base string) {
	for _, p := range []*string{&c.DataDir, &c.AdminTokenFile, &c.SyncTokenFile, &c.Etcd.CAFile, &c.Etcd.CertFile, &c.Etcd.KeyFile} {
		*p = resolve(base, *p)
	}
	for i := range c.Issuers {
		c.Issuers[i].JWKSFile = resolve(base, c.Issuers[i].JWKSFile)
		c.Issuers[i].PublicKeyFile = resolve(base, c.Issuers[i].PublicKeyFile)
	}
}
