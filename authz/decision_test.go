package authz_test

import (
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// engineWith returns a ready engine serving the policy files (relative path
// → content) with the default decision rule and no token issuers.
func engineWith(tb testing.TB, files map[string]string, cfg authz.Config) (*authz.Engine, *testutil.LogBuffer) {
	tb.Helper()
	return engineOn(tb, files, cfg, nil)
}

// engineOn is engineWith on a tenancy store. It logs at Info, as in
// production, so that decisions go through the decision cache.
func engineOn(tb testing.TB, files map[string]string, cfg authz.Config, tenancy authz.Tenancy) (*authz.Engine, *testutil.LogBuffer) {
	tb.Helper()
	logger, logs := testutil.LoggerAt(tb, slog.LevelInfo)
	e := authz.New(cfg, nil, tenancy, logger)
	loadDir(tb, e, testutil.PolicyDir(tb, files))
	return e, logs
}

func loadDir(tb testing.TB, e *authz.Engine, dir string) {
	tb.Helper()
	loadDirVersion(tb, e, dir, ast.RegoV1)
}

func loadDirVersion(tb testing.TB, e *authz.Engine, dir string, v ast.RegoVersion) {
	tb.Helper()
	src, err := authz.LoadDir(dir, v)
	if err != nil {
		tb.Fatal(err)
	}
	ps, err := e.Compile(src, authz.DefaultDecision)
	if err != nil {
		tb.Fatalf("load policies: %v", err)
	}
	e.SetPolicy(ps)
}

// decide evaluates input (a JSON-like value) with the Authorization header
// authorization.
func decide(tb testing.TB, e *authz.Engine, input map[string]any, authorization string) (*authz.Decision, error) {
	tb.Helper()
	var in ast.Object = ast.NewObject()
	if input != nil {
		v, err := ast.InterfaceToValue(input)
		if err != nil {
			tb.Fatal(err)
		}
		in = v.(ast.Object)
	}
	return e.Decide(tb.Context(), &authz.Request{Input: in, Authorization: authorization})
}

func policy(rule string) map[string]string {
	return map[string]string{"policy.rego": "package envoy.authz\n" + rule + "\n"}
}

// TestDecisionShape: every field of an object decision (SPEC §4) reaches
// the Decision, in opa-envoy-plugin's forms.
func TestDecisionShape(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		rule  string
		check func(t *testing.T, d *authz.Decision)
	}{
		"boolean true": {`allow := true`, func(t *testing.T, d *authz.Decision) {
			if !d.Allowed || !d.Defined || d.Object || d.Status() != 200 {
				t.Errorf("decision %+v", d)
			}
		}},
		"boolean false": {`allow := false`, func(t *testing.T, d *authz.Decision) {
			if d.Allowed || !d.Defined || d.Object || d.Status() != 403 || d.Body != "" || d.Headers != nil {
				t.Errorf("decision %+v", d)
			}
		}},
		"undefined": {`allow if false`, func(t *testing.T, d *authz.Decision) {
			if d.Allowed || d.Defined || d.Status() != 403 {
				t.Errorf("decision %+v", d)
			}
		}},
		"headers object with string and array values": {`allow := {"allowed": true, "headers": {"x-b": "2", "x-a": ["1", "3"]}}`, func(t *testing.T, d *authz.Decision) {
			want := []authz.Pair{{Key: "x-a", Value: "1"}, {Key: "x-a", Value: "3"}, {Key: "x-b", Value: "2"}}
			if !slices.Equal(d.Headers, want) {
				t.Errorf("headers %v, want %v", d.Headers, want)
			}
		}},
		"headers array of objects keeps its order": {`allow := {"allowed": true, "headers": [{"x-z": "1"}, {"x-a": ["2", "3"]}, {"x-z": "4"}]}`, func(t *testing.T, d *authz.Decision) {
			want := []authz.Pair{{Key: "x-z", Value: "1"}, {Key: "x-a", Value: "2"}, {Key: "x-a", Value: "3"}, {Key: "x-z", Value: "4"}}
			if !slices.Equal(d.Headers, want) {
				t.Errorf("headers %v, want %v", d.Headers, want)
			}
		}},
		"every allow field": {`allow := {
			"allowed": true,
			"response_headers_to_add": {"x-rate": "10"},
			"request_headers_to_remove": ["authorization", "cookie"],
			"query_parameters_to_set": {"user": "alice", "tag": ["a", "b"]},
			"query_parameters_to_remove": {"debug"},
			"dynamic_metadata": {"team": "payments", "n": 3, "ok": true, "list": [1, "a"]},
			"reason": "ok",
			"http_status": 299,
			"unknown_field": "ignored, as opa-envoy-plugin does",
		}`, func(t *testing.T, d *authz.Decision) {
			if !d.Allowed || d.Status() != 200 {
				t.Errorf("allowed %v status %d", d.Allowed, d.Status())
			}
			if want := []authz.Pair{{Key: "x-rate", Value: "10"}}; !slices.Equal(d.ResponseHeadersToAdd, want) {
				t.Errorf("response_headers_to_add %v", d.ResponseHeadersToAdd)
			}
			if want := []string{"authorization", "cookie"}; !slices.Equal(d.RequestHeadersToRemove, want) {
				t.Errorf("request_headers_to_remove %v", d.RequestHeadersToRemove)
			}
			if want := []authz.Pair{{Key: "tag", Value: "a"}, {Key: "tag", Value: "b"}, {Key: "user", Value: "alice"}}; !slices.Equal(d.QueryParametersToSet, want) {
				t.Errorf("query_parameters_to_set %v", d.QueryParametersToSet)
			}
			if want := []string{"debug"}; !slices.Equal(d.QueryParametersToRemove, want) {
				t.Errorf("query_parameters_to_remove %v", d.QueryParametersToRemove)
			}
			if b, _ := json.Marshal(d.DynamicMetadata); string(b) != `{"list":[1,"a"],"n":3,"ok":true,"team":"payments"}` {
				t.Errorf("dynamic_metadata %s", b)
			}
			if d.Reason != "ok" {
				t.Errorf("reason %q", d.Reason)
			}
		}},
		"every deny field": {`allow := {"allowed": false, "http_status": 401, "body": "{\"error\":\"login\"}", "headers": {"www-authenticate": "Bearer"}, "reason": "missing_token"}`, func(t *testing.T, d *authz.Decision) {
			if d.Allowed || d.Status() != 401 || d.HTTPStatus != 401 || d.Body != `{"error":"login"}` || d.Reason != "missing_token" {
				t.Errorf("decision %+v", d)
			}
			if want := []authz.Pair{{Key: "www-authenticate", Value: "Bearer"}}; !slices.Equal(d.Headers, want) {
				t.Errorf("headers %v", d.Headers)
			}
		}},
		"deny object without status": {`allow := {"allowed": false}`, func(t *testing.T, d *authz.Decision) {
			if d.Status() != 403 || !d.Object {
				t.Errorf("decision %+v", d)
			}
		}},
		"status bounds": {`allow := {"allowed": false, "http_status": 599}`, func(t *testing.T, d *authz.Decision) {
			if d.Status() != 599 {
				t.Errorf("status %d", d.Status())
			}
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e, _ := engineWith(t, policy(tc.rule), authz.Config{})
			d, err := decide(t, e, nil, "")
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			tc.check(t, d)
		})
	}
}

// TestDecisionWrongShape: a decision of the wrong type is "cannot decide"
// (internal), never an allow or a deny.
func TestDecisionWrongShape(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"string":                      `allow := "true"`,
		"number":                      `allow := 1`,
		"null":                        `allow := null`,
		"set":                         `allow := {true}`,
		"object without allowed":      `allow := {"http_status": 200}`,
		"allowed a string":            `allow := {"allowed": "yes"}`,
		"allowed null":                `allow := {"allowed": null}`,
		"http_status 700":             `allow := {"allowed": false, "http_status": 700}`,
		"http_status 0":               `allow := {"allowed": false, "http_status": 0}`,
		"http_status a string":        `allow := {"allowed": false, "http_status": "403"}`,
		"headers a number":            `allow := {"allowed": true, "headers": 5}`,
		"headers a string":            `allow := {"allowed": true, "headers": "x-a: 1"}`,
		"headers array of strings":    `allow := {"allowed": true, "headers": ["x-a"]}`,
		"header value an object":      `allow := {"allowed": true, "headers": {"x-a": {"v": 1}}}`,
		"header values mixed":         `allow := {"allowed": true, "headers": {"x-a": ["1", 2]}}`,
		"header name empty":           `allow := {"allowed": true, "headers": {"": "1"}}`,
		"response headers a list":     `allow := {"allowed": true, "response_headers_to_add": ["x"]}`,
		"headers to remove a string":  `allow := {"allowed": true, "request_headers_to_remove": "authorization"}`,
		"body an object":              `allow := {"allowed": false, "body": {"error": "x"}}`,
		"dynamic_metadata a string":   `allow := {"allowed": true, "dynamic_metadata": "x"}`,
		"query to set an array":       `allow := {"allowed": true, "query_parameters_to_set": [["a", "b"]]}`,
		"query to remove with number": `allow := {"allowed": true, "query_parameters_to_remove": [1]}`,
		"reason a number":             `allow := {"allowed": true, "reason": 1}`,
	}
	for name, rule := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e, _ := engineWith(t, policy(rule), authz.Config{})
			d, err := decide(t, e, nil, "")
			if !errors.Is(err, authz.ErrBadDecision) {
				t.Fatalf("Decide = %+v, %v; want ErrBadDecision", d, err)
			}
			var de *authz.DecideError
			if !errors.As(err, &de) || de.Code != authz.CodeInternal {
				t.Errorf("error %v is not an internal DecideError", err)
			}
		})
	}
}

// TestDecisionHeaderSet: HeaderSet matches names case-insensitively.
func TestDecisionHeaderSet(t *testing.T) {
	t.Parallel()
	d := &authz.Decision{Headers: []authz.Pair{{Key: "X-Gatehouse-User", Value: "a"}}}
	if !d.HeaderSet("x-gatehouse-user") || d.HeaderSet("x-gatehouse-tenant") {
		t.Error("HeaderSet is wrong")
	}
}
