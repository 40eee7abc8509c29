package policytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/token"
)

// Input kinds of EvalConfig.InputKind.
const (
	InputAuto         = "auto"
	InputCheckRequest = "check_request"
	InputDocument     = "input"
)

// EvalConfig configures an offline evaluation (`gatehouse eval`).
type EvalConfig struct {
	// Policies is the policy folder, loaded as serve loads it (no
	// *_test.rego).
	Policies string
	// Decision is the decision rule (default envoy/authz/allow).
	Decision string
	// Data is a tenancy data file (ReadTenancyFile); "" = no tenancy data.
	Data string
	// Input is the request: an Envoy CheckRequest (protojson) or a ready
	// input document, per InputKind.
	Input []byte
	// InputKind is auto (default: a JSON object whose only key is
	// "attributes" is a CheckRequest), check_request or input.
	InputKind string
	// Issuers verify the bearer token of a CheckRequest (serve's issuers:).
	Issuers []token.IssuerConfig
	// Explain traces the evaluation and explains the decision.
	Explain bool
	// Logger receives engine logs; nil discards them.
	Logger *slog.Logger
	// AuthZENDecision is the AuthZEN decision rule for an AuthZEN request
	// (default authzen/allow).
	AuthZENDecision string
	// AuthZENEndpoint is the API path an AuthZEN request is answered as
	// ("": the evaluations endpoint for a body with "evaluations", else the
	// evaluation endpoint).
	AuthZENEndpoint string
}

// Evaluation is the result of Eval.
type Evaluation struct {
	// InputKind is check_request or input.
	InputKind string
	// Decision is the engine's decision.
	Decision *authz.Decision
	// Response is the CheckResponse serve would send.
	Response *authv3.CheckResponse
	// Explanation is set with EvalConfig.Explain.
	Explanation *Explanation
	// AuthZEN is the answer to an AuthZEN request (InputKind authzen); the
	// fields above are then unset.
	AuthZEN *AuthZENAnswer
}

// shimPackage holds the rule Eval adds for ready input documents carrying
// a token: the engine always sets input.token from the Authorization
// header, so the document's own token is put back with `with`.
const shimPackage = "gatehouse_eval_shim"

// Eval decides one request offline, as serve would: a CheckRequest goes
// through the input builder, token verification (cfg.Issuers), the engine
// and the response mapping; a ready input document is evaluated as it is
// (its token is used unverified; without one, input.token is "missing").
// Errors wrap ErrInput or ErrUsage, or are *CompileError; a "cannot decide"
// error of the engine is returned as it is.
func Eval(ctx context.Context, cfg EvalConfig) (ev *Evaluation, err error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Decision == "" {
		cfg.Decision = authz.DefaultDecision
	}
	kind, req, doc, err := parseInput(cfg.Input, cfg.InputKind)
	if err != nil {
		return nil, err
	}
	src, err := authz.LoadDir(cfg.Policies, ast.RegoV1)
	if err != nil {
		return nil, loadDirError(err)
	}
	if kind == InputAuthZEN {
		return evalAuthZEN(ctx, cfg, src, logger)
	}
	decision := cfg.Decision
	if doc != nil {
		if tok := doc.Get(ast.InternedTerm("token")); tok != nil {
			ref, err := authz.DecisionRef(cfg.Decision)
			if err != nil {
				return nil, usagef("--decision: %v", err)
			}
			shim, err := ast.ParseModuleWithOpts(shimPackage+".rego", fmt.Sprintf(
				"package %s\n\ndecision := x if {\n\tx := %v with input.token as %v\n}\n", shimPackage, ref, tok),
				ast.ParserOptions{RegoVersion: ast.RegoV1})
			if err != nil {
				return nil, fmt.Errorf("%w: token: %v", ErrInput, err)
			}
			src.Modules[shimPackage+".rego"] = shim
			decision = shimPackage + "/decision"
		}
	}
	ps, err := authz.Compile(src, cfg.Decision, replica.Builtins()...)
	if err == nil && decision != cfg.Decision {
		ps, err = authz.Compile(src, decision, replica.Builtins()...)
	}
	if err != nil {
		return nil, evalCompileError(err)
	}

	store, closeStore, err := openData(cfg.Data, logger)
	if err != nil {
		return nil, err
	}
	defer closeStore()
	verifier, err := token.NewVerifier(token.VerifierConfig{Issuers: cfg.Issuers, CacheSize: -1}, logger)
	if err != nil {
		return nil, usagef("%v", err)
	}
	sc := NewSidecar(SidecarConfig{Policy: ps, Verifier: verifier, Store: store, Logger: logger})

	var tracer *ruleTracer
	if cfg.Explain {
		tracer = &ruleTracer{seen: map[*ast.Rule]int{}}
	}
	ev = &Evaluation{InputKind: kind}
	var ans *Answer
	if req != nil {
		if tracer != nil {
			ans, err = sc.Check(ctx, req, tracer)
		} else {
			ans, err = sc.Check(ctx, req, nil)
		}
	} else {
		ans, err = sc.checkInput(ctx, doc, tracer)
	}
	if errors.Is(err, envoy.ErrMalformedRequest) {
		return nil, fmt.Errorf("%w: --input: %v", ErrInput, err)
	}
	if err != nil {
		return nil, err
	}
	ev.Decision, ev.Response = ans.Decision, ans.Response
	if doc != nil {
		// The document's own token decided, not the engine's "missing".
		ev.Decision.Subject, ev.Decision.TokenError = "", ""
		if tok := doc.Get(ast.InternedTerm("token")); tok != nil {
			if v, ok := lookup(tok.Value, "valid").(ast.Boolean); ok && bool(v) {
				sub, _ := lookup(tok.Value, "subject").(ast.String)
				ev.Decision.Subject = string(sub)
			} else {
				code, _ := lookup(tok.Value, "error").(ast.String)
				ev.Decision.TokenError = token.TokenError(code)
			}
		} else {
			ev.Decision.TokenError = token.TokenMissing
		}
	}
	if tracer != nil {
		ev.Explanation = sc.explain(ctx, tracer, ans, inputOf(req, doc))
	}
	return ev, nil
}

// checkInput decides a ready input document.
func (s *Sidecar) checkInput(ctx context.Context, doc ast.Object, tracer *ruleTracer) (*Answer, error) {
	areq := &authz.Request{Input: doc.Copy()}
	if tracer != nil {
		areq.Tracer = tracer
	}
	d, reads, err := s.decide(ctx, areq)
	if err != nil {
		return nil, err
	}
	return &Answer{Decision: d, Response: responseFor(d, doc), Reads: reads}, nil
}

// decide evaluates areq, recording tenancy reads when it is traced.
func (s *Sidecar) decide(ctx context.Context, areq *authz.Request) (*authz.Decision, []storage.Path, error) {
	if areq.Tracer == nil {
		d, err := s.engine.Decide(ctx, areq)
		return d, nil, err
	}
	s.reads.start()
	d, err := s.engine.Decide(ctx, areq)
	return d, s.reads.stop(), err
}

// parseInput tells a CheckRequest from an input document.
func parseInput(raw []byte, kind string) (string, *authv3.CheckRequest, ast.Object, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return "", nil, nil, fmt.Errorf("%w: --input: want a JSON object: %v", ErrInput, err)
	}
	switch kind {
	case "", InputAuto:
		_, ok := top["attributes"]
		_, subject := top["subject"]
		kind = InputDocument
		switch {
		case ok && len(top) == 1:
			kind = InputCheckRequest
		case subject && !ok:
			kind = InputAuthZEN
		}
	case InputCheckRequest, InputDocument, InputAuthZEN:
	default:
		return "", nil, nil, usagef("--input-kind %q: want auto, check_request, input or authzen", kind)
	}
	if kind == InputAuthZEN {
		return kind, nil, nil, nil
	}
	if kind == InputCheckRequest {
		req := &authv3.CheckRequest{}
		if err := protojson.Unmarshal(raw, req); err != nil {
			return "", nil, nil, fmt.Errorf("%w: --input: not an Envoy CheckRequest (protojson): %v", ErrInput, err)
		}
		if req.GetAttributes().GetRequest().GetHttp() == nil {
			return "", nil, nil, fmt.Errorf("%w: --input: the CheckRequest has no attributes.request.http", ErrInput)
		}
		return kind, req, nil, nil
	}
	var v any
	if err := util.NewJSONDecoder(bytes.NewReader(raw)).Decode(&v); err != nil {
		return "", nil, nil, fmt.Errorf("%w: --input: %v", ErrInput, err)
	}
	val, err := ast.InterfaceToValue(v)
	if err != nil {
		return "", nil, nil, fmt.Errorf("%w: --input: %v", ErrInput, err)
	}
	return kind, nil, val.(ast.Object), nil
}

// inputOf returns the input document's request-side fields the
// explanation needs: the route project and the token.
func inputOf(req *authv3.CheckRequest, doc ast.Object) evalInput {
	if req != nil {
		return evalInput{project: req.GetAttributes().GetContextExtensions()["project"]}
	}
	in := evalInput{}
	if t := doc.Get(ast.InternedTerm("token")); t != nil {
		if sub, ok := lookup(t.Value, "subject").(ast.String); ok {
			in.subject = string(sub)
		}
	}
	if p, ok := lookup(doc, "attributes", "contextExtensions", "project").(ast.String); ok {
		in.project = string(p)
	}
	return in
}

type evalInput struct{ subject, project string }

// lookup walks objects by keys; nil when a key is missing.
func lookup(v ast.Value, keys ...string) ast.Value {
	for _, k := range keys {
		obj, ok := v.(ast.Object)
		if !ok {
			return nil
		}
		t := obj.Get(ast.StringTerm(k))
		if t == nil {
			return nil
		}
		v = t.Value
	}
	return v
}

// loadDirError turns authz.LoadDir's errors into *CompileError (parse
// errors) or usage errors.
func loadDirError(err error) error {
	if ce, ok := loadError(err).(*CompileError); ok {
		return ce
	}
	return usagef("%v", err)
}

// responseFor builds the CheckResponse of a decision on an input document
// (the incoming headers are the document's, for spoofed-header removal).
func responseFor(d *authz.Decision, doc ast.Object) *authv3.CheckResponse {
	headers := map[string]string{}
	if h, ok := lookup(doc, "attributes", "request", "http", "headers").(ast.Object); ok {
		h.Foreach(func(k, v *ast.Term) {
			ks, ok1 := k.Value.(ast.String)
			vs, ok2 := v.Value.(ast.String)
			if ok1 && ok2 {
				headers[strings.ToLower(string(ks))] = string(vs)
			}
		})
	}
	return envoy.Response(d, headers)
}

// evalAuthZEN answers an AuthZEN request offline as the sidecar's AuthZEN
// listener would, over cfg.Data.
func evalAuthZEN(ctx context.Context, cfg EvalConfig, src authz.Source, logger *slog.Logger) (*Evaluation, error) {
	ps, err := authz.Compile(src, compileDecision(cfg.AuthZENDecision), replica.Builtins()...)
	if err != nil {
		return nil, evalCompileError(err)
	}
	store, closeStore, err := openData(cfg.Data, logger)
	if err != nil {
		return nil, err
	}
	defer closeStore()
	sc := NewSidecar(SidecarConfig{Policy: ps, Store: store, Logger: logger})
	ans, err := sc.AuthZEN(ctx, cfg.AuthZENDecision, cfg.AuthZENEndpoint, cfg.Input)
	if err != nil {
		return nil, err
	}
	return &Evaluation{InputKind: InputAuthZEN, AuthZEN: ans}, nil
}

// openData opens the tenancy data file of --data in a temporary cache
// (nil without one); closeStore closes it and removes the folder.
func openData(data string, logger *slog.Logger) (store *replica.Store, closeStore func(), err error) {
	if data == "" {
		return nil, func() {}, nil
	}
	ops, err := ReadTenancyFile(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: --data: %v", ErrInput, err)
	}
	dir, err := os.MkdirTemp("", "gatehouse-eval-")
	if err != nil {
		return nil, nil, err
	}
	if store, err = OpenTenancy(dir, ops, logger); err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("%w: --data %s: %v", ErrInput, data, err)
	}
	return store, func() {
		_ = store.Close()
		_ = os.RemoveAll(dir)
	}, nil
}

// evalCompileError is eval's error for a policy set that does not
// compile: a *CompileError, or a usage error.
func evalCompileError(err error) error {
	if ce, ok := compileError(err).(*CompileError); ok {
		return ce
	}
	return usagef("%v", err)
}
