package envoy_test

import (
	"reflect"
	"slices"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
)

const (
	overwrite = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	appendH   = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
)

type hv struct {
	key, value string
	action     corev3.HeaderValueOption_HeaderAppendAction
}

func headerValues(opts []*corev3.HeaderValueOption) []hv {
	var out []hv
	for _, o := range opts {
		out = append(out, hv{o.GetHeader().GetKey(), o.GetHeader().GetValue(), o.GetAppendAction()})
	}
	return out
}

// TestResponseMapsEveryDecisionField maps hand-built decisions to
// CheckResponses: every field of SPEC §4 lands where Envoy reads it.
func TestResponseMapsEveryDecisionField(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		decision      authz.Decision
		incoming      map[string]string
		wantCode      code.Code
		wantStatus    int // denied HTTP status, 0 for allow
		wantBody      string
		wantHeaders   []hv
		wantResponse  []hv
		wantRemove    []string
		wantQuerySet  [][2]string
		wantQueryDrop []string
	}{
		"allow with repeated header names": {
			decision: authz.Decision{Allowed: true, Defined: true, Object: true, Headers: []authz.Pair{
				{Key: "x-user", Value: "alice"}, {Key: "x-role", Value: "reader"}, {Key: "X-Role", Value: "writer"}, {Key: "x-role", Value: "admin"},
			}},
			wantCode: code.Code_OK,
			wantHeaders: []hv{
				{"x-user", "alice", overwrite}, {"x-role", "reader", overwrite},
				{"X-Role", "writer", appendH}, {"x-role", "admin", appendH},
			},
		},
		"allow strips spoofed gatehouse headers the decision does not set": {
			decision: authz.Decision{Allowed: true, Defined: true, Object: true,
				Headers:                []authz.Pair{{Key: "x-gatehouse-user", Value: "alice"}},
				RequestHeadersToRemove: []string{"Authorization", "x-gatehouse-user", "x-gatehouse-tenant"},
			},
			incoming: map[string]string{
				"x-gatehouse-user": "mallory", "x-gatehouse-tenant": "evil", "x-gatehouse-roles": "admin",
				"x-gatehouse-": "empty suffix is not a gatehouse header", "x-other": "kept", "authorization": "Bearer t",
			},
			wantCode:    code.Code_OK,
			wantHeaders: []hv{{"x-gatehouse-user", "alice", overwrite}},
			// The set header is never removed (Envoy removes after mutating),
			// even though the policy listed it.
			wantRemove: []string{"authorization", "x-gatehouse-tenant", "x-gatehouse-roles"},
		},
		"allow with response headers and query rewrites": {
			decision: authz.Decision{Allowed: true, Defined: true, Object: true,
				ResponseHeadersToAdd:    []authz.Pair{{Key: "x-rate", Value: "1"}, {Key: "x-rate", Value: "2"}},
				QueryParametersToSet:    []authz.Pair{{Key: "tag", Value: "a"}, {Key: "tag", Value: "b"}, {Key: "user", Value: "alice"}},
				QueryParametersToRemove: []string{"debug", "trace"},
				HTTPStatus:              418, // ignored on allow
				Body:                    "ignored on allow",
			},
			wantCode:      code.Code_OK,
			wantResponse:  []hv{{"x-rate", "1", overwrite}, {"x-rate", "2", appendH}},
			wantQuerySet:  [][2]string{{"tag", "a"}, {"tag", "b"}, {"user", "alice"}},
			wantQueryDrop: []string{"debug", "trace"},
		},
		"deny 401 is UNAUTHENTICATED": {
			decision: authz.Decision{Defined: true, Object: true, HTTPStatus: 401, Body: `{"error":"login"}`,
				Headers: []authz.Pair{{Key: "www-authenticate", Value: "Bearer"}}},
			incoming:    map[string]string{"x-gatehouse-user": "mallory"},
			wantCode:    code.Code_UNAUTHENTICATED,
			wantStatus:  401,
			wantBody:    `{"error":"login"}`,
			wantHeaders: []hv{{"www-authenticate", "Bearer", overwrite}},
		},
		"deny 429 is PERMISSION_DENIED": {
			decision:   authz.Decision{Defined: true, Object: true, HTTPStatus: 429, Body: "slow down"},
			wantCode:   code.Code_PERMISSION_DENIED,
			wantStatus: 429,
			wantBody:   "slow down",
		},
		"deny object without status is 403": {
			decision:   authz.Decision{Defined: true, Object: true, Body: "no"},
			wantCode:   code.Code_PERMISSION_DENIED,
			wantStatus: 403,
			wantBody:   "no",
		},
		"false is a plain 403": {
			decision:   authz.Decision{Defined: true},
			incoming:   map[string]string{"x-gatehouse-user": "mallory"},
			wantCode:   code.Code_PERMISSION_DENIED,
			wantStatus: 403,
		},
		"undefined is a plain 403": {
			decision:   authz.Decision{},
			wantCode:   code.Code_PERMISSION_DENIED,
			wantStatus: 403,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tc.decision.ID = "4b0c7f0e-2f2a-4c1e-9a55-1f6f5d1b6a10"
			resp := envoy.Response(&tc.decision, tc.incoming)
			if got := code.Code(resp.GetStatus().GetCode()); got != tc.wantCode {
				t.Fatalf("status %v, want %v", got, tc.wantCode)
			}
			if tc.wantStatus == 0 {
				ok := resp.GetOkResponse()
				if ok == nil {
					t.Fatalf("no ok_response: %v", protojson.Format(resp))
				}
				if got := headerValues(ok.GetHeaders()); !slices.Equal(got, tc.wantHeaders) {
					t.Errorf("headers %v, want %v", got, tc.wantHeaders)
				}
				if got := headerValues(ok.GetResponseHeadersToAdd()); !slices.Equal(got, tc.wantResponse) {
					t.Errorf("response_headers_to_add %v, want %v", got, tc.wantResponse)
				}
				if got := ok.GetHeadersToRemove(); !sameSet(got, tc.wantRemove) {
					t.Errorf("headers_to_remove %q, want %q", got, tc.wantRemove)
				}
				var qs [][2]string
				for _, q := range ok.GetQueryParametersToSet() {
					qs = append(qs, [2]string{q.GetKey(), q.GetValue()})
				}
				if !slices.Equal(qs, tc.wantQuerySet) {
					t.Errorf("query_parameters_to_set %v, want %v", qs, tc.wantQuerySet)
				}
				if got := ok.GetQueryParametersToRemove(); !slices.Equal(got, tc.wantQueryDrop) {
					t.Errorf("query_parameters_to_remove %q, want %q", got, tc.wantQueryDrop)
				}
				return
			}
			denied := resp.GetDeniedResponse()
			if denied == nil {
				t.Fatalf("no denied_response: %v", protojson.Format(resp))
			}
			if got := int(denied.GetStatus().GetCode()); got != tc.wantStatus {
				t.Errorf("denied status %d, want %d", got, tc.wantStatus)
			}
			if denied.GetBody() != tc.wantBody {
				t.Errorf("body %q, want %q", denied.GetBody(), tc.wantBody)
			}
			if got := headerValues(denied.GetHeaders()); !slices.Equal(got, tc.wantHeaders) {
				t.Errorf("denied headers %v, want %v", got, tc.wantHeaders)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestResponseDynamicMetadata: the policy's metadata is merged with the
// decision id and revisions, which a policy cannot overwrite.
func TestResponseDynamicMetadata(t *testing.T) {
	t.Parallel()
	for name, allowed := range map[string]bool{"allow": true, "deny": false} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := &authz.Decision{
				ID: "4b0c7f0e-2f2a-4c1e-9a55-1f6f5d1b6a10", Allowed: allowed, Defined: true, Object: true,
				PolicyRevision: "abc123", TenancyRevision: 42,
			}
			md, err := authz.MetadataOf(map[string]any{
				"decision_id": "spoofed", "tenancy_revision": "spoofed",
				"team": "payments", "nested": map[string]any{"n": 1.5, "list": []any{"a", true, nil}},
			})
			if err != nil {
				t.Fatal(err)
			}
			d.DynamicMetadata = md
			got := envoy.Response(d, nil).GetDynamicMetadata()
			want, err := structpb.NewStruct(map[string]any{
				"decision_id": d.ID, "policy_revision": "abc123", "tenancy_revision": 42,
				"team": "payments", "nested": map[string]any{"n": 1.5, "list": []any{"a", true, nil}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("dynamic_metadata\n got %v\nwant %v", got, want)
			}
		})
	}
}

// TestResponseDynamicMetadataShapes: the policy's metadata reaches Envoy as
// its JSON values, whatever it holds. String keys and values are converted
// straight from the evaluated object; other shapes (non-string keys, sets,
// numbers, nesting) through their JSON values, as before: a number key
// becomes its JSON text, a set an array in Rego's order.
func TestResponseDynamicMetadataShapes(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		md   string
		want map[string]any
	}{
		"strings":        {`{"team": "payments", "user": input.parsed_path[0]}`, map[string]any{"team": "payments", "user": "x"}},
		"mixed values":   {`{"n": 1.5, "ok": true, "none": null, "l": ["a", 2], "s": {"b", "a"}, "o": {"k": {"z": 1}}}`, map[string]any{"n": 1.5, "ok": true, "none": nil, "l": []any{"a", 2.0}, "s": []any{"a", "b"}, "o": map[string]any{"k": map[string]any{"z": 1.0}}}},
		"non-string key": {`{1: "one", "a": "b"}`, map[string]any{"1": "one", "a": "b"}},
		"array key":      {`{["k"]: "v"}`, map[string]any{`["k"]`: "v"}},
		"empty":          {`{}`, map[string]any{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sc := startPolicy(t, "package envoy.authz\nallow := {\"allowed\": true, \"dynamic_metadata\": "+tc.md+"}\n", testutil.Options{})
			resp, err := sc.Check(t.Context(), testutil.Request{Path: "/x/y"})
			if err != nil {
				t.Fatal(err)
			}
			got := resp.GetDynamicMetadata().AsMap()
			for _, k := range []string{"decision_id", "policy_revision", "tenancy_revision"} {
				if _, ok := got[k]; !ok {
					t.Errorf("no %s in %v", k, got)
				}
				delete(got, k)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("dynamic_metadata = %#v, want %#v", got, tc.want)
			}
		})
	}
}
