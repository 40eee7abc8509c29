package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure; for test/check: failing tests or findings
	exitUsage   = 2 // bad flags, configuration or policy compile errors
)

// exitError carries a process exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(err error) error { return &exitError{code: exitUsage, err: err} }

// configErr is a configuration problem: exit 2, every problem on one line.
func configErr(err error) error { return usageErr(oneLine(err)) }

func failureErr(err error) error { return &exitError{code: exitFailure, err: err} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "gatehouse:", ee.err)
		}
		return ee.code
	}
	// cobra's own errors: unknown command or flag, bad arguments.
	fmt.Fprintln(stderr, "gatehouse:", err)
	return exitUsage
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "gatehouse",
		Short: "Policy decision point for Envoy: ext_authz over Rego and multi-tenant data",
		Long: `Gatehouse answers Envoy's ext_authz checks (gRPC v3 and HTTP service mode) by
evaluating Rego policies over verified tokens and multi-tenant authorization data.

Exit codes: 0 success; 1 runtime failure (or failing tests/findings for test,
check and fmt --fail); 2 usage, configuration or policy compile error.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newServeCmd(),
		newDevCmd(),
		newControlCmd(),
		newVersionCmd(),
		newBundleCmd(),
		newTestCmd(),
		newEvalCmd(),
		newCheckCmd(),
		newFmtCmd(),
		newCapabilitiesCmd(),
	)
	return root
}

// newLogger builds the process logger from a LogConfig.
func newLogger(cfg LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// oneLine joins the lines of a (joined) error, so that a configuration
// problem is reported on one line: "a:\nb\nc" becomes "a: b; c".
func oneLine(err error) error {
	var b strings.Builder
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		if s := b.String(); s != "" {
			if strings.HasSuffix(s, ":") {
				b.WriteString(" ")
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(l)
	}
	return errors.New(b.String())
}
