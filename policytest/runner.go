package policytest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
)

// Config configures a run of `gatehouse test`.
type Config struct {
	// Paths are the files and folders to discover (default ".").
	Paths []string
	// Ignore are globs of files and folders to leave out.
	Ignore []string
	// Run filters tests (by data.pkg.test_name) and fixture cases (by
	// folder/case name) with a regular expression.
	Run string
	// Timeout bounds each test and case (default 5s).
	Timeout time.Duration
	// Coverage computes line coverage of the Rego tests.
	Coverage bool
	// Threshold fails the run when coverage is below it (0-100); it
	// implies Coverage.
	Threshold float64
	// Decision is the decision rule of fixtures (default envoy/authz/allow).
	Decision string
	// Logger receives engine logs of fixtures; nil discards them.
	Logger *slog.Logger
}

// Run discovers, loads and runs the Rego tests and fixtures under
// cfg.Paths. The error is nil whenever the tests ran, whatever their
// results (see Report.Passed); it wraps ErrUsage, ErrFixture, or is a
// *CompileError when they could not run.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Decision == "" {
		cfg.Decision = authz.DefaultDecision
	}
	if cfg.Threshold < 0 || cfg.Threshold > 100 {
		return nil, usagef("--threshold %v is not between 0 and 100", cfg.Threshold)
	}
	if cfg.Threshold > 0 {
		cfg.Coverage = true
	}
	var re *regexp.Regexp
	if cfg.Run != "" {
		var err error
		if re, err = regexp.Compile(cfg.Run); err != nil {
			return nil, usagef("--run: %v", err)
		}
	}
	if _, err := authz.DecisionRef(cfg.Decision); err != nil {
		return nil, usagef("%v", err)
	}
	files, err := Discover(cfg.Paths, cfg.Ignore)
	if err != nil {
		return nil, err
	}
	if len(files.Rego) == 0 && len(files.Fixtures) == 0 {
		return nil, usagef("no .rego files or fixtures under %v", files.Paths)
	}
	loaded, err := Load(files, ast.RegoV1)
	if err != nil {
		return nil, err
	}
	fixtures := make([]*Fixture, 0, len(files.Fixtures))
	for _, dir := range files.Fixtures {
		fx, err := ReadFixture(dir)
		if err != nil {
			return nil, err
		}
		fixtures = append(fixtures, fx)
	}

	rep := &Report{Tests: []*Result{}, Fixtures: []*Result{}}
	if len(loaded.Modules) > 0 {
		rr := &regoRun{modules: loaded.Modules, data: loaded.Data, filter: cfg.Run, timeout: cfg.Timeout, coverage: cfg.Coverage}
		results, cov, err := rr.run(ctx)
		if err != nil {
			return nil, err
		}
		rep.Tests = results
		if cov != nil {
			rep.Coverage = coverage(cov, cfg.Threshold)
		}
	} else if cfg.Coverage {
		rep.Coverage = &Coverage{Files: []*FileCoverage{}, Threshold: cfg.Threshold, BelowThreshold: cfg.Threshold > 0}
	}
	if len(fixtures) > 0 {
		fr := &fixtureRun{cfg: cfg, loaded: loaded, filter: re, compiled: map[string]*authz.PolicySet{}}
		defer fr.close()
		for _, fx := range fixtures {
			results, err := fr.run(ctx, fx)
			if err != nil {
				return nil, err
			}
			rep.Fixtures = append(rep.Fixtures, results...)
		}
	}
	rep.finish()
	return rep, nil
}

// fixtureRun runs fixture folders; it shares the minted key and the
// compiled policy sets between them.
type fixtureRun struct {
	cfg      Config
	loaded   *Loaded
	filter   *regexp.Regexp
	compiled map[string]*authz.PolicySet // by policy folder and decision
	dir      string                      // temporary folder of the run
	minter   *minter
}

func (r *fixtureRun) close() {
	if r.dir != "" {
		_ = os.RemoveAll(r.dir)
	}
}

func (r *fixtureRun) logger() *slog.Logger {
	if r.cfg.Logger != nil {
		return r.cfg.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// policy compiles (once) the policy set a fixture runs against.
func (r *fixtureRun) policy(fx *Fixture) (*authz.PolicySet, error) {
	decision := cmpOr(fx.Decision, r.cfg.Decision)
	dir := ""
	if fx.Policies != "" {
		dir = fx.path(fx.Policies)
	}
	key := dir + "\x00" + decision
	if ps, ok := r.compiled[key]; ok {
		return ps, nil
	}
	var src authz.Source
	if dir != "" {
		var err error
		if src, err = authz.LoadDir(dir, ast.RegoV1); err != nil {
			return nil, fmt.Errorf("%w: %s: policies: %v", ErrFixture, fx.File, err)
		}
	} else {
		mods := r.loaded.PolicyModules()
		if len(mods) == 0 {
			return nil, fmt.Errorf("%w: %s: no policies under test: pass the policy folder too, or set policies: in the fixture", ErrFixture, fx.File)
		}
		src = authz.Source{Modules: mods, Data: r.loaded.Data, Revision: "test", Origin: "gatehouse test"}
	}
	ps, err := authz.Compile(src, decision, bundle.Builtins()...)
	if err != nil {
		var aes ast.Errors
		if errors.As(err, &aes) {
			return nil, &CompileError{Errors: aes}
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrFixture, fx.File, err)
	}
	r.compiled[key] = ps
	return ps, nil
}

// run runs the cases of one fixture folder.
func (r *fixtureRun) run(ctx context.Context, fx *Fixture) ([]*Result, error) {
	ps, err := r.policy(fx)
	if err != nil {
		return nil, err
	}
	if r.dir == "" {
		if r.dir, err = os.MkdirTemp("", "gatehouse-test-"); err != nil {
			return nil, err
		}
		if r.minter, err = newMinter(r.dir); err != nil {
			return nil, err
		}
	}
	var store *bundle.Store
	if fx.Tenancy != "" {
		ops, err := ReadTenancyFile(fx.path(fx.Tenancy))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: tenancy: %v", ErrFixture, fx.File, err)
		}
		dir, err := os.MkdirTemp(r.dir, "tenancy-")
		if err != nil {
			return nil, err
		}
		if store, err = OpenTenancy(dir, ops, r.logger()); err != nil {
			return nil, fmt.Errorf("%w: %s: tenancy %s: %v", ErrFixture, fx.File, fx.Tenancy, err)
		}
		defer store.Close()
	}
	issuers := fx.issuers()
	verifier, err := authz.NewVerifier(authz.VerifierConfig{Issuers: r.minter.issuers(issuers), CacheSize: -1}, r.logger())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: issuers: %v", ErrFixture, fx.File, err)
	}
	sc := NewSidecar(SidecarConfig{Policy: ps, Verifier: verifier, Store: store, Logger: r.logger()})

	var out []*Result
	for _, c := range fx.Cases {
		res := &Result{
			Kind:     KindFixture,
			Package:  fx.Name,
			Name:     c.Name,
			Location: &Location{File: fx.File, Row: c.line},
		}
		if r.filter != nil && !r.filter.MatchString(res.FullName()) {
			continue
		}
		out = append(out, res)
		if c.Skip != "" {
			res.Result, res.Error = Skip, c.Skip
			continue
		}
		if c.AuthZEN != nil {
			r.runAuthZEN(ctx, fx, sc, c, res)
			continue
		}
		c = fx.withDefaults(c)
		req, err := c.request(r.minter, issuers, time.Now())
		if err != nil {
			return nil, fmt.Errorf("%w: %s:%d: case %q: %v", ErrFixture, fx.File, c.line, c.Name, err)
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		outcome, derr := sc.Check(cctx, req, nil)
		cancel()
		res.Duration = time.Since(start)
		res.DurationNS = res.Duration.Nanoseconds()
		got, diffs := c.Expect.compare(outcome, derr)
		res.Got = got
		switch {
		case len(diffs) == 0:
			res.Result = Pass
		case derr != nil && c.Expect.Error == "":
			res.Result = Error
			res.Error = derr.Error()
			if errors.Is(cctx.Err(), context.DeadlineExceeded) || topdown.IsCancel(errors.Unwrap(derr)) {
				res.Error = fmt.Sprintf("timed out after %s (--timeout): %v", r.cfg.Timeout, derr)
			}
		default:
			res.Result = Fail
			res.Failure = &Failure{Message: diffs[0], Details: diffs}
			if got != nil {
				res.Failure.Details = append(res.Failure.Details, "got: "+got.describe())
			}
		}
	}
	return out, nil
}

// describe is a one-line account of an answer.
func (g *Got) describe() string {
	s := g.short()
	if g.Allowed {
		s = "allowed, " + s
	} else {
		s = "denied, " + s
	}
	if g.Body != "" {
		s += " " + g.Body
	}
	return s
}

// runAuthZEN runs an authzen case: its request answered as the sidecar's
// AuthZEN listener would.
func (r *fixtureRun) runAuthZEN(ctx context.Context, fx *Fixture, sc *Sidecar, c Case, res *Result) {
	body, err := json.Marshal(c.AuthZEN)
	if err != nil {
		res.Result, res.Error = Error, fmt.Sprintf("authzen: %v", err)
		return
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	ans, err := sc.AuthZEN(cctx, fx.AuthZENDecision, c.AuthZENEndpoint, body)
	cancel()
	res.Duration = time.Since(start)
	res.DurationNS = res.Duration.Nanoseconds()
	if err != nil {
		res.Result, res.Error = Error, err.Error()
		return
	}
	got, diffs := c.Expect.compareAuthZEN(ans)
	res.Got = got
	if len(diffs) == 0 {
		res.Result = Pass
		return
	}
	res.Result = Fail
	res.Failure = &Failure{Message: diffs[0], Details: diffs}
}
