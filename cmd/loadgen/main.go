package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/internal/keys"
	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
)

// exitError carries an exit code other than 2 up to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	if ee, ok := errors.AsType[*exitError](err); ok {
		os.Exit(ee.code)
	}
	os.Exit(2)
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "loadgen",
		Short:         "Load generator and no-op floor for ext_authz v3 gRPC servers",
		Long:          "Load generator and no-op floor for ext_authz v3 gRPC servers.\n\nExit codes: 0 success; 1 wrong answers or gRPC errors (report --check: invalid bench); 2 usage or setup error.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newNoopCmd(), newKeysCmd(), newRunCmd(), newReportCmd())
	return root
}

func newNoopCmd() *cobra.Command {
	addr := "127.0.0.1:9391"
	cmd := &cobra.Command{
		Use:   "noop",
		Short: "Serve an ext_authz v3 server that allows everything (the floor) until SIGINT/SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lis, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "noop ext_authz server listening on %s\n", lis.Addr())
			return loadgen.ServeNoop(cmd.Context(), lis)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", addr, "listen address (host:port)")
	return cmd
}

func newKeysCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keys --out DIR",
		Short: "Write an RSA-2048 signing key (signing.pem) and its public key (public.pem) to DIR",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			signing, public, err := keys.WriteRSA(out)
			if err != nil {
				return err
			}
			fmt.Printf("wrote %s and %s\n", signing, public)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "folder to write the keys to (required)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func newRunCmd() *cobra.Command {
	var (
		cfg                                                    loadgen.Config
		scenario, signingKey, expectAll, out, tokenCache, hmac string
		jsonOut                                                bool
	)
	cmd := &cobra.Command{
		Use:   "run --addr ADDR --scenario FILE",
		Short: "Send a scenario's requests and report throughput, latency and correctness",
		Long: `Send a scenario's CheckRequests to an ext_authz v3 gRPC server.

Closed loop by default: --concurrency workers send back to back over --conns
shared connections. With --rate, an open loop: calls are scheduled at that
total rate (at most --concurrency in flight) and latency is measured from each
call's scheduled send time.

Every answer is checked against the scenario's expect; any mismatch or gRPC
error is reported and makes the command exit 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sc, err := loadgen.LoadScenario(scenario)
			if err != nil {
				return err
			}
			opts := loadgen.PlanOptions{TokenCache: tokenCache}
			if signingKey != "" {
				if opts.SigningKey, err = keys.LoadRSA(signingKey); err != nil {
					return err
				}
			}
			if hmac != "" {
				b, err := os.ReadFile(hmac)
				if err != nil {
					return err
				}
				if opts.HMACSecret = []byte(strings.TrimSpace(string(b))); len(opts.HMACSecret) < 32 {
					return fmt.Errorf("--hs256-secret %s: want at least 32 bytes", hmac)
				}
			}
			if expectAll != "" {
				o, err := loadgen.ParseOutcome(expectAll)
				if err != nil || o == loadgen.Error {
					return fmt.Errorf("--expect-all %q: must be allow or deny", expectAll)
				}
				opts.ExpectAll = &o
			}
			if cfg.Plan, err = loadgen.NewPlan(sc, opts); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "plan: %d requests (%d distinct), %d distinct tokens, %d signed\n",
				len(cfg.Plan.Requests), cfg.Plan.DistinctRequests, cfg.Plan.DistinctTokens, cfg.Plan.MintedTokens)
			res, err := loadgen.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			b, err := json.Marshal(res)
			if err != nil {
				return err
			}
			if out != "" {
				if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			if jsonOut {
				fmt.Println(string(b))
			} else {
				fmt.Println(res)
			}
			if err := res.Check(); err != nil {
				return &exitError{code: 1, err: err}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", "127.0.0.1:9191", "server address (host:port or a grpc target)")
	f.StringVar(&scenario, "scenario", "", "scenario file (JSON; required)")
	f.IntVar(&cfg.Concurrency, "concurrency", 16, "workers, i.e. most calls in flight")
	f.IntVar(&cfg.Conns, "conns", 1, "grpc connections to spread the workers over")
	f.DurationVar(&cfg.Duration, "duration", 10*time.Second, "recorded window")
	f.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "unrecorded warm-up before the window")
	f.BoolVar(&cfg.Prime, "prime", false, "send every distinct request once before the warm-up (a hot workload starts hot)")
	f.Float64Var(&cfg.Rate, "rate", 0, "open loop at this many requests/s in total (0: closed loop)")
	f.StringVar(&signingKey, "signing-key", "", "RSA private key (PEM) to mint the scenario's tokens with")
	f.IntVar(&cfg.PID, "pid", 0, "server process to sample CPU time and RSS of (/proc)")
	f.StringVar(&cfg.MetricsURL, "metrics", "", "server's Prometheus /metrics URL: report its decision and token cache hit rates over the window")
	f.StringVar(&hmac, "hs256-secret", "", "file holding a shared secret: sign tokens with HS256 instead of --signing-key")
	f.StringVar(&tokenCache, "token-cache", "", "file to reuse valid tokens from and add minted ones to (saves re-signing across runs)")
	f.StringVar(&expectAll, "expect-all", "", "override every request's expect (allow|deny), e.g. for the no-op floor")
	f.BoolVar(&jsonOut, "json", false, "print one JSON object instead of a line")
	f.StringVar(&out, "out", "", "also write the JSON object to this file")
	_ = cmd.MarkFlagRequired("scenario")
	return cmd
}

func newReportCmd() *cobra.Command {
	var (
		out, note     string
		pinned, check bool
	)
	cmd := &cobra.Command{
		Use:   "report (RESULTS.json | SERVER_DIR...)",
		Short: "Print the bench table from a saved results file, or collect one from per-server folders",
		Long: `Print the comparison table of bench/bench.sh.

Given one .json file, it reads a saved bench result. Given folders (one per
server, named after it, in table order), it collects c16.json, c1.json and
half_peak.json (outputs of run --json) and the text files "skipped", "failed"
and "floor" from each, writes the result to --out and prints the table.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var f *loadgen.BenchFile
			if len(args) == 1 && strings.HasSuffix(args[0], ".json") {
				var err error
				if f, err = loadgen.ReadBenchFile(args[0]); err != nil {
					return err
				}
			} else {
				f = &loadgen.BenchFile{Timestamp: time.Now().Format(time.RFC3339), Pinned: pinned, Note: note}
				for _, dir := range args {
					s, err := loadgen.CollectBenchServer(dir)
					if err != nil {
						return err
					}
					f.Servers = append(f.Servers, s)
				}
				if out != "" {
					b, err := json.MarshalIndent(f, "", "  ")
					if err != nil {
						return err
					}
					if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
						return err
					}
					if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
						return err
					}
				}
			}
			if err := f.Table(os.Stdout); err != nil {
				return err
			}
			if check && !f.OK() {
				return &exitError{code: 1, err: errors.New("bench results are invalid (see the notes above)")}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write the collected results here (JSON)")
	cmd.Flags().StringVar(&note, "note", "", "a note that qualifies the results (e.g. not pinned)")
	cmd.Flags().BoolVar(&pinned, "pinned", false, "server and load generator ran on separate cores")
	cmd.Flags().BoolVar(&check, "check", false, "exit 1 when a measured server's runs are invalid")
	return cmd
}
