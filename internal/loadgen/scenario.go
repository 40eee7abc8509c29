package loadgen

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Token kinds a scenario request may ask for.
const (
	// TokenValid is a freshly minted RS256 JWT (needs a signing key).
	TokenValid = "valid"
	// TokenNone sends no Authorization header.
	TokenNone = "none"
	// TokenExpired is an RS256 JWT whose exp lies an hour in the past.
	TokenExpired = "expired"
	// TokenGarbage is a bearer token that is not a JWT at all.
	TokenGarbage = "garbage"
)

// maxTotalWeight bounds the sum of the request weights (the length of the
// precomputed send order).
const maxTotalWeight = 1_000_000

// Scenario is the load a run sends: a weighted mix of requests, each with the
// decision it must get. It is read from JSON:
//
//	{"issuer": "https://bench.gatehouse.test/", "audience": "api",
//	 "requests": [{"name": "alice-items", "weight": 8, "method": "GET",
//	   "path": "/t/acme/api/items?x=1", "host": "api.example.com",
//	   "headers": {"x-foo": "bar"}, "context_extensions": {"project": "p1"},
//	   "subject": "alice", "claims": {"tenant": "acme"},
//	   "token": "valid", "expect": "allow"}]}
type Scenario struct {
	// Issuer is the iss claim of minted tokens; required when a request
	// uses a "valid" or "expired" token.
	Issuer string `json:"issuer"`
	// Audience is the aud claim of minted tokens (omitted when empty).
	Audience string `json:"audience"`
	// Requests are the distinct requests of the mix; at least one.
	Requests []Request `json:"requests"`
}

// Request is one distinct request of a scenario.
type Request struct {
	// Name identifies the request in the report; unique, required.
	Name string `json:"name"`
	// Weight is the request's share of the mix relative to the others;
	// 0 (or omitted) counts as 1, negative is invalid.
	Weight int `json:"weight"`
	// Method is the HTTP method; default GET.
	Method string `json:"method"`
	// Path is the HTTP path with its query, as Envoy sends it; must start
	// with "/".
	Path string `json:"path"`
	// Host is the :authority; default "localhost".
	Host string `json:"host"`
	// Headers are extra request headers; keys are lowercased. The
	// generated headers (pseudo-headers, authorization for a token,
	// x-request-id) take precedence.
	Headers map[string]string `json:"headers"`
	// ContextExtensions are the route's context_extensions.
	ContextExtensions map[string]string `json:"context_extensions"`
	// Subject is the sub claim of the minted token.
	Subject string `json:"subject"`
	// Claims are added to the minted token; they may override the
	// registered claims (iss, aud, sub, exp, iat) to build bad tokens.
	Claims map[string]any `json:"claims"`
	// Token is "valid", "none" (the default), "expired" or "garbage".
	Token string `json:"token"`
	// Expect is the decision the server must make: "allow" or "deny".
	Expect string `json:"expect"`
}

// LoadScenario reads and validates the scenario file at path.
func LoadScenario(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	sc, err := ParseScenario(data)
	if err != nil {
		return nil, fmt.Errorf("scenario %q: %w", path, err)
	}
	return sc, nil
}

// ParseScenario decodes a JSON scenario (unknown fields are an error) and
// validates it.
func ParseScenario(data []byte) (*Scenario, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var sc Scenario
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrScenario, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: trailing data after the scenario object", ErrScenario)
	}
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	return &sc, nil
}

// Validate checks the rules of the format; every problem is reported, joined.
func (s *Scenario) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrScenario}, args...)...))
	}
	if len(s.Requests) == 0 {
		bad("no requests")
	}
	seen := make(map[string]bool, len(s.Requests))
	total := 0
	for i, r := range s.Requests {
		where := fmt.Sprintf("requests[%d]", i)
		if r.Name == "" {
			bad("%s: name is required", where)
		} else {
			where = fmt.Sprintf("requests[%d] %q", i, r.Name)
			if seen[r.Name] {
				bad("%s: duplicate name", where)
			}
			seen[r.Name] = true
		}
		if r.Weight < 0 {
			bad("%s: weight %d is negative", where, r.Weight)
		} else {
			total += max(r.Weight, 1)
		}
		if !strings.HasPrefix(r.Path, "/") {
			bad("%s: path %q must start with /", where, r.Path)
		}
		if strings.ContainsAny(r.Method, " \t\r\n") {
			bad("%s: method %q contains white space", where, r.Method)
		}
		switch r.Token {
		case "", TokenNone, TokenGarbage:
		case TokenValid, TokenExpired:
			if s.Issuer == "" {
				bad("%s: token %q needs the scenario's issuer", where, r.Token)
			}
		default:
			bad("%s: token %q is not one of valid, none, expired, garbage", where, r.Token)
		}
		if _, err := ParseOutcome(r.Expect); err != nil || r.Expect == "error" {
			bad("%s: expect %q is not allow or deny", where, r.Expect)
		}
		for k := range r.Headers {
			if k == "" || strings.ContainsAny(k, " \t\r\n") {
				bad("%s: header name %q is not valid", where, k)
			}
		}
	}
	if total > maxTotalWeight {
		bad("weights add up to %d, more than %d", total, maxTotalWeight)
	}
	return errors.Join(errs...)
}

// Outcome is how a Check call ended.
type Outcome uint8

// Outcomes of a Check call.
const (
	// Allow is a CheckResponse whose status code is OK.
	Allow Outcome = iota
	// Deny is a CheckResponse with any other status code.
	Deny
	// Error is a gRPC error instead of a CheckResponse.
	Error
)

// String returns "allow", "deny" or "error".
func (o Outcome) String() string {
	switch o {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Error:
		return "error"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// ParseOutcome parses "allow", "deny" or "error".
func ParseOutcome(s string) (Outcome, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	case "error":
		return Error, nil
	}
	return 0, fmt.Errorf("%w: outcome %q is not allow, deny or error", ErrScenario, s)
}
