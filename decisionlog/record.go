package decisionlog

import (
	"net/url"
	"slices"
	"strings"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Entry is one answer as the ext_authz server saw it; the record is built
// from it off the Check's path. It is authz.Answer, declared there so that
// envoy declares the Observer it calls (Logger and Shadow implement it)
// without importing this package.
type Entry = authz.Answer

// InputWriter writes an input document as JSON (authz.InputWriter).
type InputWriter = authz.InputWriter

var _ authz.JSONWriter = (*JSON)(nil)

// ShadowResult is a shadow policy's answer for the same input.
type ShadowResult = authz.ShadowResult

// Record is one decision-log event: OPA's schema plus "gatehouse".
type Record struct {
	Labels      map[string]string `json:"labels"`
	DecisionID  string            `json:"decision_id"`
	Bundles     map[string]Bundle `json:"bundles,omitempty"`
	Path        string            `json:"path"`
	Input       any               `json:"input,omitempty"`
	Result      any               `json:"result,omitempty"`
	Error       *RecordError      `json:"error,omitempty"`
	RequestedBy string            `json:"requested_by,omitempty"`
	Timestamp   string            `json:"timestamp"`
	Metrics     Metrics           `json:"metrics"`
	ReqID       uint64            `json:"req_id"`
	TraceID     string            `json:"trace_id,omitempty"`
	SpanID      string            `json:"span_id,omitempty"`
	Erased      []string          `json:"erased,omitempty"`
	Masked      []string          `json:"masked,omitempty"`
	Gatehouse   Gatehouse         `json:"gatehouse"`
}

// Metrics are OPA's timers of the decision, in nanoseconds.
type Metrics struct {
	ServerHandlerNS int64 `json:"timer_server_handler_ns"`
	RegoEvalNS      int64 `json:"timer_rego_query_eval_ns,omitempty"`
}

// Bundle is a bundles entry: the policy revision.
type Bundle struct {
	Revision string `json:"revision"`
}

// RecordError is a "cannot decide" answer.
type RecordError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Gatehouse is the record's "gatehouse" object (SPEC §9).
type Gatehouse struct {
	Tenant          string        `json:"tenant"`
	Subject         string        `json:"subject"`
	Issuer          string        `json:"issuer"`
	Allowed         bool          `json:"allowed"`
	HTTPStatus      int           `json:"http_status"`
	Reason          string        `json:"reason"`
	PolicyRevision  string        `json:"policy_revision"`
	TenancyRevision uint64        `json:"tenancy_revision"`
	Cache           string        `json:"cache"`
	DurationNS      int64         `json:"duration_ns"`
	Transport       string        `json:"transport,omitempty"`
	DryRun          bool          `json:"dry_run,omitempty"`
	Shadow          *ShadowRecord `json:"shadow,omitempty"`
	BatchID         string        `json:"batch_id,omitempty"`
}

// ShadowRecord is the shadow policy's answer in a record.
type ShadowRecord struct {
	Agree          bool   `json:"agree"`
	Allowed        bool   `json:"allowed"`
	HTTPStatus     int    `json:"http_status,omitempty"`
	Reason         string `json:"reason,omitempty"`
	PolicyRevision string `json:"policy_revision,omitempty"`
	Result         any    `json:"result,omitempty"`
	Error          string `json:"error,omitempty"`
}

// headersPath is where the request headers are in the input.
var headersPath = []string{"attributes", "request", "http", "headers"}

// secretHeaders are erased from every record's input.
var secretHeaders = []string{"authorization", "proxy-authorization"}

// minScrubLen: a raw token shorter than this is erased with its header
// only; replacing a few characters everywhere would garble the record.
const minScrubLen = 8

// result is the decision document as the policy returned it (nil when
// undefined): a boolean, or an object with the fields Gatehouse read.
func result(d *authz.Decision) any {
	if d == nil || !d.Defined {
		return nil
	}
	if !d.Object {
		return d.Allowed
	}
	m := map[string]any{"allowed": d.Allowed}
	if d.HTTPStatus != 0 {
		m["http_status"] = d.HTTPStatus
	}
	if len(d.Headers) > 0 {
		m["headers"] = headerMap(d.Headers)
	}
	if len(d.ResponseHeadersToAdd) > 0 {
		m["response_headers_to_add"] = headerMap(d.ResponseHeadersToAdd)
	}
	if len(d.RequestHeadersToRemove) > 0 {
		m["request_headers_to_remove"] = anySlice(d.RequestHeadersToRemove)
	}
	if d.Body != "" {
		m["body"] = d.Body
	}
	if d.Reason != "" {
		m["reason"] = d.Reason
	}
	if d.DynamicMetadata.Len() > 0 {
		m["dynamic_metadata"] = d.DynamicMetadata.Map() // a fresh copy
	}
	if len(d.QueryParametersToSet) > 0 {
		m["query_parameters_to_set"] = headerMap(d.QueryParametersToSet)
	}
	if len(d.QueryParametersToRemove) > 0 {
		m["query_parameters_to_remove"] = anySlice(d.QueryParametersToRemove)
	}
	return m
}

// anySlice copies strings into a JSON-like array (mask rules edit it).
func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// headerMap renders headers as the policy's object: a string, or an array
// when a name has several values.
func headerMap(hs []authz.Pair) map[string]any {
	m := make(map[string]any, len(hs))
	for _, h := range hs {
		switch prev := m[h.Key].(type) {
		case nil:
			m[h.Key] = h.Value
		case string:
			m[h.Key] = []any{prev, h.Value}
		case []any:
			m[h.Key] = append(prev, h.Value)
		}
	}
	return m
}

// gatehouseOf fills the gatehouse object from a decision.
func gatehouseOf(d *authz.Decision) Gatehouse {
	g := Gatehouse{
		Subject: d.Subject, Allowed: d.Allowed, HTTPStatus: d.Status(), Reason: d.Reason,
		PolicyRevision: d.PolicyRevision, TenancyRevision: d.TenancyRevision, Cache: d.Cache,
		DurationNS: d.Duration.Nanoseconds(),
	}
	if g.Cache == "" {
		g.Cache = authz.CacheBypass
	}
	if d.Token != nil {
		g.Issuer = d.Token.Issuer
		if g.Subject == "" {
			g.Subject = d.Token.Subject
		}
	}
	if t, ok := d.DynamicMetadata.String("tenant"); ok {
		g.Tenant = t
	} else if d.Token != nil && d.Token.TenantBinding != "" {
		g.Tenant = d.Token.TenantBinding
	}
	return g
}

// rawToken is the credential of an Authorization header value: what
// follows the scheme, or the whole value without one.
func rawToken(h string) string {
	h = strings.TrimSpace(h)
	if _, rest, ok := strings.Cut(h, " "); ok {
		return strings.TrimSpace(rest)
	}
	return h
}

// eraseHeaders removes the secret headers from the input's request headers
// (and Envoy's header_map form), returning the JSON pointers erased.
func eraseHeaders(input map[string]any) []string {
	var erased []string
	http := input
	for _, k := range headersPath[:3] {
		next, ok := http[k].(map[string]any)
		if !ok {
			return nil
		}
		http = next
	}
	if hs, ok := http["headers"].(map[string]any); ok {
		for k := range hs {
			for _, s := range secretHeaders {
				if strings.EqualFold(k, s) {
					delete(hs, k)
					erased = append(erased, "/input/attributes/request/http/headers/"+escapePointer(k))
				}
			}
		}
	}
	if _, ok := http["headerMap"]; ok {
		// Raw values would carry the secrets base64-encoded; http.headers
		// has the same headers.
		delete(http, "headerMap")
		erased = append(erased, "/input/attributes/request/http/headerMap")
	}
	return erased
}

func isSecretHeader(k string) bool {
	for _, s := range secretHeaders {
		if strings.EqualFold(k, s) {
			return true
		}
	}
	return false
}

// redacted replaces a raw token wherever a record would contain it.
const redacted = "[REDACTED]"

// secretsOf are the strings no string of a record may contain for an
// Authorization header value: its credential (what follows the scheme)
// when long enough to scrub, else the whole (trimmed) value when it is —
// each as it is, JSON-escaped (a JSON body or header carrying it) and
// URL-escaped (a query or path). Escaping goes character by character, so
// every form of the whole value contains the same form of the credential:
// scrubbing the credential's forms scrubs the value's. Strings are
// scrubbed before they are encoded, so a replacement never cuts an escape
// sequence.
func secretsOf(authorization string) []string {
	v := strings.TrimSpace(authorization)
	s := rawToken(v)
	if len(s) < minScrubLen {
		s = v
	}
	if len(s) < minScrubLen {
		return nil
	}
	out := []string{s}
	if unreserved(s) {
		return out // every escaped form is s (a JWT, an opaque token)
	}
	for _, f := range []string{jsonEscaped(s), url.QueryEscape(s), url.PathEscape(s)} {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// unreserved: s is made of URL-unreserved characters only (RFC 3986),
// which neither JSON nor URL escaping changes.
func unreserved(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~') {
			return false
		}
	}
	return true
}

// jsonEscaped is s as it appears inside a JSON string.
func jsonEscaped(s string) string {
	if !needsEscape(s) {
		return s
	}
	b := appendString(nil, s)
	return string(b[1 : len(b)-1])
}

// scrub replaces the secrets in every string of a JSON-like value (keys
// too), in place where it can, returning the new value.
func scrub(v any, secrets []string) any {
	switch x := v.(type) {
	case string:
		return scrubString(x, secrets)
	case map[string]any:
		for k, e := range x {
			ne := scrub(e, secrets)
			if nk := scrubString(k, secrets); nk != k {
				delete(x, k)
				k = nk
			}
			x[k] = ne
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = scrub(e, secrets)
		}
		return x
	}
	return v
}

// scrubString replaces every secret in s.
func scrubString(s string, secrets []string) string {
	for _, sec := range secrets {
		if strings.Contains(s, sec) {
			s = strings.ReplaceAll(s, sec, redacted)
		}
	}
	return s
}
