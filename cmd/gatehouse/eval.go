package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/policytest"
)

type evalFlags struct {
	config, policies, decision string
	data, input, inputKind     string
	format                     string
	authzenDecision, endpoint  string
	explain                    bool
}

func newEvalCmd() *cobra.Command {
	var f evalFlags
	cmd := &cobra.Command{
		Use:   "eval --policies DIR --input FILE [--data FILE] [--explain]",
		Short: "Decide one request offline, as the sidecar would, and explain why",
		Long: `Decide one request offline and print the answer the sidecar would give:
allowed or denied, status, headers, body, reason, decision id, policy and
tenancy revisions (and, with --format json, the CheckResponse in protojson).

--input is an Envoy CheckRequest in JSON (protojson names; a JSON object whose
only key is "attributes"), or a ready input document (anything else; used as it
is: its token is not verified, and without one input.token is "missing").
An AuthZEN request (SPEC §10: a JSON object with "subject" and without
"attributes") is answered as the sidecar's AuthZEN listener answers it: the
evaluations endpoint for a body with "evaluations", else the evaluation
endpoint (--authzen-endpoint /access/v1/search/subject etc. for another), with
the rule --authzen-decision (default authzen/allow); the API's JSON answer is
printed. --input-kind check_request|input|authzen overrides the detection.
"-" reads stdin.

A CheckRequest goes through the sidecar's path: input builder, bearer token
verification with the issuers of --config (a serve configuration file; without
it every token is unknown_issuer), engine, response mapping.

--data is tenancy data: a control API batch {"ops": [...]} (as POST /v1/batch
takes it) or entities per collection {"tenants": [...], "users": [...], ...},
JSON or YAML; it is applied with the control endpoint's invariants into a
temporary sidecar cache. Without --data there is no tenancy data (revision 0).

--explain traces the evaluation and prints the rules that produced a value
(with their file:line), the tenancy data the evaluation read, the identity
(which issuer may act as the token's data user, and why a user counts as
absent when the token's issuer may not) and, for a tenancy decision, the
chain user → user grants → project → project grants → tenant and its
ancestors (plus the user's home tenant for an external user).

Exit codes: 0 the request was decided (allowed or denied; an AuthZEN answer
of 200); 1 cannot decide (an AuthZEN 5xx)
(an evaluation error, a decision of the wrong shape); 2 usage error, unreadable
input or data (an AuthZEN 4xx), or policies that do not compile.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEval(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "serve configuration file: its issuers verify tokens; its policies.dir and policies.decision are defaults")
	fl.StringVar(&f.policies, "policies", "", "policy directory (as serve loads it: *_test.rego files are skipped)")
	fl.StringVar(&f.decision, "decision", "", "decision rule path (default envoy/authz/allow)")
	fl.StringVar(&f.data, "data", "", "tenancy data file: a control API batch or entities per collection (JSON or YAML)")
	fl.StringVar(&f.input, "input", "", `request file: an Envoy CheckRequest (JSON) or an input document; "-" for stdin`)
	fl.StringVar(&f.inputKind, "input-kind", policytest.InputAuto, "auto, check_request, input or authzen")
	fl.StringVar(&f.authzenDecision, "authzen-decision", "", "AuthZEN decision rule (default policies.authzen_decision of --config, else authzen/allow)")
	fl.StringVar(&f.endpoint, "authzen-endpoint", "", "AuthZEN endpoint to answer as, e.g. /access/v1/search/subject (default: by the body)")
	fl.StringVar(&f.format, "format", policytest.FormatPretty, "output format: pretty or json")
	fl.BoolVar(&f.explain, "explain", false, "explain the decision: rules that fired, tenancy data read, the identity, the tenancy chain")
	return cmd
}

func runEval(cmd *cobra.Command, f evalFlags) error {
	if f.format != policytest.FormatPretty && f.format != policytest.FormatJSON {
		return usageErr(fmt.Errorf("--format %q: want pretty or json", f.format))
	}
	cfg := policytest.EvalConfig{Policies: f.policies, Decision: f.decision, Data: f.data, InputKind: f.inputKind, Explain: f.explain,
		AuthZENDecision: f.authzenDecision, AuthZENEndpoint: f.endpoint}
	if f.config != "" {
		var sc ServeConfig
		if err := decodeYAMLFile(f.config, &sc); err != nil {
			return usageErr(err)
		}
		sc.resolvePaths(filepath.Dir(f.config))
		var errs []error
		for i := range sc.Issuers {
			sc.Issuers[i].SetDefaults()
			errs = append(errs, sc.Issuers[i].Validate())
		}
		if err := errors.Join(errs...); err != nil {
			return usageErr(err)
		}
		cfg.Issuers = sc.Issuers
		if cfg.Policies == "" {
			cfg.Policies = sc.Policies.Dir
		}
		if cfg.Decision == "" {
			cfg.Decision = sc.Policies.Decision
		}
		if cfg.AuthZENDecision == "" {
			cfg.AuthZENDecision = sc.Policies.AuthZENDecision
		}
	}
	if cfg.Decision == "" {
		cfg.Decision = authz.DefaultDecision
	}
	if cfg.Policies == "" {
		return usageErr(errors.New("--policies: required (or policies.dir in --config)"))
	}
	if f.input == "" {
		return usageErr(errors.New("--input: required (a CheckRequest or an input document; - for stdin)"))
	}
	var err error
	if f.input == "-" {
		cfg.Input, err = io.ReadAll(cmd.InOrStdin())
	} else {
		cfg.Input, err = os.ReadFile(f.input)
	}
	if err != nil {
		return usageErr(fmt.Errorf("--input: %w", err))
	}
	ev, err := policytest.Eval(cmd.Context(), cfg)
	if err != nil {
		var de *authz.DecideError
		if errors.As(err, &de) {
			return failureErr(err)
		}
		return policyErr(cmd.ErrOrStderr(), err)
	}
	if err := policytest.WriteEvaluation(cmd.OutOrStdout(), ev, f.format); err != nil {
		return failureErr(err)
	}
	if a := ev.AuthZEN; a != nil {
		switch {
		case a.Status >= 500:
			return failureErr(fmt.Errorf("AuthZEN %s: %d: cannot decide", a.Endpoint, a.Status))
		case a.Status != 200:
			return usageErr(fmt.Errorf("AuthZEN %s: %d", a.Endpoint, a.Status))
		}
	}
	return nil
}
