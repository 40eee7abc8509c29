package policytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/authzen"
)

// InputAuthZEN is the input kind of an AuthZEN request (SPEC §10): a JSON
// object with a "subject" and no "attributes".
const InputAuthZEN = "authzen"

// AuthZENAnswer is what the sidecar's AuthZEN listener answers a request.
type AuthZENAnswer struct {
	// Endpoint is the API path the request was answered as.
	Endpoint string `json:"endpoint"`
	// Status is the HTTP status.
	Status int `json:"status"`
	// Body is the JSON answer.
	Body json.RawMessage `json:"body"`
}

// AuthZENEndpoint picks the endpoint of an AuthZEN request body: the
// evaluations endpoint when it carries "evaluations", else the evaluation
// endpoint.
func AuthZENEndpoint(body map[string]any) string {
	if _, ok := body["evaluations"]; ok {
		return authzen.PathEvaluations
	}
	return authzen.PathEvaluation
}

// AuthZEN answers an AuthZEN request body as the sidecar's listener would
// for an authenticated PEP, over the sidecar's engine; decision is the
// AuthZEN decision rule (policies.authzen_decision, "" for authzen/allow)
// and endpoint one of the authzen.Path* paths ("" picks by the body).
func (s *Sidecar) AuthZEN(ctx context.Context, decision, endpoint string, body []byte) (*AuthZENAnswer, error) {
	srv, err := authzen.NewOffline(authzen.Config{Decision: decision}, s.engine, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, usagef("%v", err)
	}
	if endpoint == "" {
		var top map[string]any
		if err := json.Unmarshal(body, &top); err != nil {
			return nil, fmt.Errorf("%w: the AuthZEN request is not a JSON object: %v", ErrInput, err)
		}
		endpoint = AuthZENEndpoint(top)
	}
	code, out := srv.Answer(ctx, http.MethodPost, endpoint, body)
	return &AuthZENAnswer{Endpoint: endpoint, Status: code, Body: json.RawMessage(bytes.TrimSpace(out))}, nil
}

// authzenDecision returns the AuthZEN answer's decision and reason
// (context.reason) for a single evaluation.
func (a *AuthZENAnswer) decision() (decided bool, allowed bool, reason string) {
	var v struct {
		Decision *bool `json:"decision"`
		Context  struct {
			Reason string `json:"reason"`
		} `json:"context"`
	}
	if a.Status != http.StatusOK || json.Unmarshal(a.Body, &v) != nil || v.Decision == nil {
		return false, false, ""
	}
	return true, *v.Decision, v.Context.Reason
}

// decisions returns a batch answer's decisions.
func (a *AuthZENAnswer) decisions() []bool {
	var v struct {
		Evaluations []struct {
			Decision bool `json:"decision"`
		} `json:"evaluations"`
	}
	if json.Unmarshal(a.Body, &v) != nil {
		return nil
	}
	out := make([]bool, len(v.Evaluations))
	for i, e := range v.Evaluations {
		out[i] = e.Decision
	}
	return out
}

// compileDecision is the rule an AuthZEN evaluation needs defined.
func compileDecision(decision string) string {
	if decision == "" {
		return authz.DefaultAuthZENDecision
	}
	return decision
}
