package envoy

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Headers Gatehouse owns. No client may set them: on allow, incoming ones
// the decision does not set are removed before the request goes upstream.
const (
	// ReservedPrefix is the prefix of every Gatehouse header.
	ReservedPrefix = "x-gatehouse-"
	// HeaderDecisionID carries the decision id (HTTP service mode).
	HeaderDecisionID = "x-gatehouse-decision-id"
	// HeaderPolicyRevision carries the policy revision (HTTP service mode).
	HeaderPolicyRevision = "x-gatehouse-policy-revision"
	// HeaderTenancyRevision carries the tenancy revision (HTTP service mode).
	HeaderTenancyRevision = "x-gatehouse-tenancy-revision"
	// HeaderMinRevision asks for tenancy data at a minimum revision.
	HeaderMinRevision = "x-gatehouse-min-revision"
	// HeaderContextPrefix carries route context extensions in HTTP service
	// mode (Envoy's authorization_request.headers_to_add).
	HeaderContextPrefix = "x-gatehouse-context-"
)

// Metadata keys Gatehouse adds to every CheckResponse's dynamic_metadata.
const (
	MetaDecisionID      = "decision_id"
	MetaPolicyRevision  = "policy_revision"
	MetaTenancyRevision = "tenancy_revision"
)

// Response turns a decision into a CheckResponse. incoming are the request
// headers (lowercase names), used to strip spoofed x-gatehouse-* headers.
// Strings that are not valid UTF-8 (a policy may build them, e.g. with
// base64.decode of client input) have their bad bytes replaced by U+FFFD:
// protobuf refuses to marshal them, and a response that cannot be sent is
// a gRPC error, which Envoy's failure_mode_allow would turn into an allow.
func Response(d *authz.Decision, incoming map[string]string) *authv3.CheckResponse {
	resp := &authv3.CheckResponse{DynamicMetadata: dynamicMetadata(d)}
	if d.Allowed {
		resp.Status = &rpcstatus.Status{Code: int32(code.Code_OK)}
		resp.HttpResponse = &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:                 headerOptions(d.Headers),
			HeadersToRemove:         headersToRemove(d, incoming),
			ResponseHeadersToAdd:    headerOptions(d.ResponseHeadersToAdd),
			QueryParametersToSet:    queryParams(d.QueryParametersToSet),
			QueryParametersToRemove: utf8Strings(d.QueryParametersToRemove),
		}}
		return resp
	}
	st := d.Status()
	c := code.Code_PERMISSION_DENIED
	if st == 401 {
		c = code.Code_UNAUTHENTICATED
	}
	resp.Status = &rpcstatus.Status{Code: int32(c)}
	resp.HttpResponse = &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
		Status:  &typev3.HttpStatus{Code: typev3.StatusCode(st)},
		Headers: headerOptions(d.Headers),
		Body:    utf8String(d.Body),
	}}
	return resp
}

// headerOptions maps decision headers to Envoy mutations: the first value of
// a name overwrites what the request had, further values of the same name
// are appended, so every value the policy gave arrives.
func headerOptions(hs []authz.Pair) []*corev3.HeaderValueOption {
	if len(hs) == 0 {
		return nil
	}
	// the messages in two blocks: three allocations, not 2n+1
	out := make([]*corev3.HeaderValueOption, len(hs))
	opts := make([]corev3.HeaderValueOption, len(hs))
	vals := make([]corev3.HeaderValue, len(hs))
	for i, h := range hs {
		action := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		for _, prev := range hs[:i] {
			if strings.EqualFold(prev.Key, h.Key) {
				action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
				break
			}
		}
		vals[i].Key, vals[i].Value = utf8String(h.Key), utf8String(h.Value)
		opts[i].Header, opts[i].AppendAction = &vals[i], action
		out[i] = &opts[i]
	}
	return out
}

// headersToRemove is the policy's request_headers_to_remove plus every
// incoming x-gatehouse-* header, minus the headers the decision sets (Envoy
// applies removals after mutations, so removing one would drop it).
func headersToRemove(d *authz.Decision, incoming map[string]string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(name string) {
		n := strings.ToLower(name)
		if seen[n] || d.HeaderSet(n) {
			return
		}
		seen[n] = true
		out = append(out, utf8String(n))
	}
	for _, h := range d.RequestHeadersToRemove {
		add(h)
	}
	var spoofed []string
	for k := range incoming {
		if len(k) > len(ReservedPrefix) && strings.EqualFold(k[:len(ReservedPrefix)], ReservedPrefix) {
			spoofed = append(spoofed, k)
		}
	}
	slices.Sort(spoofed) // a deterministic answer: map order is random
	for _, k := range spoofed {
		add(k)
	}
	return out
}

func queryParams(ps []authz.Pair) []*corev3.QueryParameter {
	if len(ps) == 0 {
		return nil
	}
	out := make([]*corev3.QueryParameter, len(ps))
	for i, p := range ps {
		out[i] = &corev3.QueryParameter{Key: utf8String(p.Key), Value: utf8String(p.Value)}
	}
	return out
}

// dynamicMetadata merges the policy's dynamic metadata with the decision id
// and revisions (Gatehouse's keys win). The usual metadata, string keys
// with string values, is converted straight from the policy's object;
// anything else goes through its JSON values (Metadata.Map), which is how
// non-string keys get their JSON text.
func dynamicMetadata(d *authz.Decision) *structpb.Struct {
	md := d.DynamicMetadata
	fields := make(map[string]*structpb.Value, md.Len()+3)
	// string values in blocks: a few allocations instead of two per value
	strs := stringValues{vals: make([]structpb.Value, 0, md.Len()+2), kinds: make([]structpb.Value_StringValue, 0, md.Len()+2)}
	if obj := md.Object(); obj != nil {
		if !stringKeys(obj) {
			for k, v := range md.Map() {
				fields[utf8String(k)] = jsonValue(v)
			}
		} else {
			obj.Foreach(func(k, v *ast.Term) {
				key := utf8String(string(k.Value.(ast.String)))
				if s, ok := v.Value.(ast.String); ok {
					fields[key] = strs.value(utf8String(string(s)))
					return
				}
				x, err := ast.JSON(v.Value)
				if err != nil {
					return // unreachable: evaluation results are ground
				}
				fields[key] = jsonValue(x)
			})
		}
	}
	fields[MetaDecisionID] = strs.value(d.ID)
	fields[MetaPolicyRevision] = strs.value(utf8String(d.PolicyRevision))
	fields[MetaTenancyRevision] = structpb.NewNumberValue(float64(d.TenancyRevision))
	return &structpb.Struct{Fields: fields}
}

// stringKeys reports whether every key of obj is a string.
func stringKeys(obj ast.Object) bool {
	ok := true
	obj.Foreach(func(k, _ *ast.Term) {
		if _, isStr := k.Value.(ast.String); !isStr {
			ok = false
		}
	})
	return ok
}

// stringValues hands out string Values from preallocated blocks (new
// ones past their capacity: earlier Values keep pointing into the old).
type stringValues struct {
	vals  []structpb.Value
	kinds []structpb.Value_StringValue
}

func (b *stringValues) value(s string) *structpb.Value {
	if len(b.vals) == cap(b.vals) {
		return structpb.NewStringValue(s)
	}
	b.vals = b.vals[:len(b.vals)+1]
	b.kinds = b.kinds[:len(b.kinds)+1]
	k := &b.kinds[len(b.kinds)-1]
	k.StringValue = s
	v := &b.vals[len(b.vals)-1]
	v.Kind = k
	return v
}

// jsonValue converts a decoded JSON value (numbers as json.Number) to a
// protobuf Value.
func jsonValue(v any) *structpb.Value {
	switch v := v.(type) {
	case nil:
		return structpb.NewNullValue()
	case bool:
		return structpb.NewBoolValue(v)
	case string:
		return structpb.NewStringValue(utf8String(v))
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return structpb.NewStringValue(v.String())
		}
		return structpb.NewNumberValue(f)
	case float64:
		return structpb.NewNumberValue(v)
	case []any:
		vals := make([]*structpb.Value, len(v))
		for i, x := range v {
			vals[i] = jsonValue(x)
		}
		return structpb.NewListValue(&structpb.ListValue{Values: vals})
	case map[string]any:
		fields := make(map[string]*structpb.Value, len(v))
		for k, x := range v {
			fields[utf8String(k)] = jsonValue(x)
		}
		return structpb.NewStructValue(&structpb.Struct{Fields: fields})
	}
	return structpb.NewStringValue(utf8String(fmt.Sprint(v)))
}

// utf8String is s with invalid UTF-8 replaced by U+FFFD.
func utf8String(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// utf8Strings is utf8String on every element (ss itself when all are
// valid).
func utf8Strings(ss []string) []string {
	for i, s := range ss {
		if !utf8.ValidString(s) {
			out := slices.Clone(ss)
			for j := i; j < len(out); j++ {
				out[j] = utf8String(out[j])
			}
			return out
		}
	}
	return ss
}
