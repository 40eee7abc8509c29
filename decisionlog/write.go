package decisionlog

import (
	"errors"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// The record of an entry, written straight as JSON when no mask or drop
// policy needs it as a value (the usual case): the input document is
// encoded from the OPA value its front end built (or written by the
// front end itself, Entry.InputJSON) with the secret headers left out as
// they are met, every string scrubbed of the credential only when it is
// long enough to hold it, the result from the Decision's fields, and no
// intermediate maps. It is the same JSON, member for member, as the
// generic Record encodes (TestFastRecordEqualsGeneric).

// appendRecord appends e's record as one JSON line to b; secrets are the
// credential's forms (secretsOf).
func (l *Logger) appendRecord(b []byte, e *Entry, secrets []string) []byte {
	d := e.Decision
	input, erased := l.appendInput(e, secrets)
	w := l.out
	w.reset(b, secrets, false)
	w.BeginObject()
	w.Key("labels")
	w.Raw(l.labelsJSON)
	w.Key("decision_id")
	switch {
	case d != nil:
		w.String(d.ID)
	case e.ID != "":
		w.String(e.ID)
	default:
		w.String(authz.NewDecisionID())
	}
	if d != nil && d.PolicyRevision != "" {
		w.Key("bundles")
		w.BeginObject()
		w.Key("policy")
		w.BeginObject()
		w.Key("revision")
		w.String(d.PolicyRevision)
		w.EndObject()
		w.EndObject()
	}
	w.Key("path")
	if e.Path != "" {
		w.String(e.Path)
	} else {
		w.String(l.cfg.Path)
	}
	if input != nil {
		w.Key("input")
		w.RawBytes(input)
	}
	switch r := e.Result.(type) {
	case nil:
		if d != nil && d.Defined {
			w.Key("result")
			writeResult(w, d)
		}
	case ast.Value:
		w.Key("result")
		w.Value(r)
	default:
		w.Key("result")
		w.Any(r)
	}
	if d == nil {
		code := "cannot_decide"
		var de *authz.DecideError
		if errors.As(e.Err, &de) {
			code = string(de.Code)
		}
		w.Key("error")
		w.BeginObject()
		w.Key("code")
		w.String(code)
		w.Key("message")
		w.String(errString(e.Err))
		w.EndObject()
	}
	w.Key("timestamp")
	w.Time(e.Start)
	w.Key("metrics")
	w.BeginObject()
	w.Key("timer_server_handler_ns")
	w.Int(e.Duration.Nanoseconds())
	if d != nil && d.Duration > 0 {
		w.Key("timer_rego_query_eval_ns")
		w.Int(d.Duration.Nanoseconds())
	}
	w.EndObject()
	w.Key("req_id")
	w.Uint(l.reqID.Add(1))
	if e.TraceID != "" {
		w.Key("trace_id")
		w.String(e.TraceID)
	}
	if e.SpanID != "" {
		w.Key("span_id")
		w.String(e.SpanID)
	}
	if len(erased) > 0 {
		w.Key("erased")
		w.BeginArray()
		for _, p := range erased {
			w.String(p)
		}
		w.EndArray()
	}
	w.Key("gatehouse")
	var g Gatehouse
	if d != nil {
		g = gatehouseOf(d)
	} else {
		g.Cache, g.DurationNS = authz.CacheBypass, e.Duration.Nanoseconds()
	}
	w.BeginObject()
	w.Key("tenant")
	w.String(g.Tenant)
	w.Key("subject")
	w.String(g.Subject)
	w.Key("issuer")
	w.String(g.Issuer)
	w.Key("allowed")
	w.Bool(g.Allowed)
	w.Key("http_status")
	w.Int(int64(g.HTTPStatus))
	w.Key("reason")
	w.String(g.Reason)
	w.Key("policy_revision")
	w.String(g.PolicyRevision)
	w.Key("tenancy_revision")
	w.Uint(g.TenancyRevision)
	w.Key("cache")
	w.String(g.Cache)
	w.Key("duration_ns")
	w.Int(g.DurationNS)
	if e.Transport != "" {
		w.Key("transport")
		w.String(e.Transport)
	}
	if e.DryRun {
		w.Key("dry_run")
		w.Bool(true)
	}
	if s := e.Shadow; s != nil {
		w.Key("shadow")
		writeShadow(w, s)
	}
	if e.BatchID != "" {
		w.Key("batch_id")
		w.String(e.BatchID)
	}
	w.EndObject()
	w.EndObject()
	return append(w.b, '\n')
}

// appendInput writes e's input document (nil when there is none or it
// cannot be built) into the Logger's input buffer, with input.token and
// input.tenancy_revision from the decision, and returns it with the JSON
// pointers of what was erased; both are valid until the next call.
func (l *Logger) appendInput(e *Entry, secrets []string) ([]byte, []string) {
	d := e.Decision
	w := l.in
	l.withToken = d != nil && d.Token != nil
	switch {
	case e.InputJSON != nil:
		w.reset(l.inBuf[:0], secrets, true)
		w.BeginObject()
		if err := e.InputJSON.WriteInput(w); err != nil {
			return nil, nil
		}
	case e.Input != nil:
		in, err := e.Input(authz.NeedAll)
		if err != nil || in == nil {
			return nil, nil
		}
		w.reset(l.inBuf[:0], secrets, true)
		w.BeginObject()
		in.Foreach(l.rootFn)
	default:
		return nil, nil
	}
	if l.withToken {
		w.Key("token")
		w.Value(d.Token.Value())
		w.Key("tenancy_revision")
		w.Uint(d.TenancyRevision)
	}
	w.EndObject()
	l.inBuf = w.b
	return w.b, w.erased
}

// rootItem writes a member of the input document, but for those the
// record sets from the decision.
func (l *Logger) rootItem(k, t *ast.Term) {
	if l.withToken {
		if s, ok := k.Value.(ast.String); ok && (s == "token" || s == "tenancy_revision") {
			return
		}
	}
	l.in.item(k, t)
}

// writeResult writes the decision document as the policy returned it (see
// result): a boolean, or an object with the fields Gatehouse read.
func writeResult(w *JSON, d *authz.Decision) {
	if !d.Object {
		w.Bool(d.Allowed)
		return
	}
	w.BeginObject()
	w.Key("allowed")
	w.Bool(d.Allowed)
	if d.HTTPStatus != 0 {
		w.Key("http_status")
		w.Int(int64(d.HTTPStatus))
	}
	if len(d.Headers) > 0 {
		w.Key("headers")
		writePairs(w, d.Headers)
	}
	if len(d.ResponseHeadersToAdd) > 0 {
		w.Key("response_headers_to_add")
		writePairs(w, d.ResponseHeadersToAdd)
	}
	if len(d.RequestHeadersToRemove) > 0 {
		w.Key("request_headers_to_remove")
		w.Any(d.RequestHeadersToRemove)
	}
	if d.Body != "" {
		w.Key("body")
		w.String(d.Body)
	}
	if d.Reason != "" {
		w.Key("reason")
		w.String(d.Reason)
	}
	if d.DynamicMetadata.Len() > 0 {
		w.Key("dynamic_metadata")
		w.Any(d.DynamicMetadata.Map())
	}
	if len(d.QueryParametersToSet) > 0 {
		w.Key("query_parameters_to_set")
		writePairs(w, d.QueryParametersToSet)
	}
	if len(d.QueryParametersToRemove) > 0 {
		w.Key("query_parameters_to_remove")
		w.Any(d.QueryParametersToRemove)
	}
	w.EndObject()
}

// writePairs writes headers as the policy's object (see headerMap): a
// string, or an array when a name has several values. Names keep their
// first position.
func writePairs(w *JSON, hs []authz.Pair) {
	w.BeginObject()
	for i, h := range hs {
		n, seen := 0, false
		for j, o := range hs {
			if o.Key == h.Key {
				if j < i {
					seen = true
					break
				}
				n++
			}
		}
		if seen || !w.Key(h.Key) {
			continue
		}
		if n == 1 {
			w.String(h.Value)
			continue
		}
		w.BeginArray()
		for _, o := range hs[i:] {
			if o.Key == h.Key {
				w.String(o.Value)
			}
		}
		w.EndArray()
	}
	w.EndObject()
}

// writeShadow writes the shadow policy's answer (see shadowOf).
func writeShadow(w *JSON, s *ShadowResult) {
	w.BeginObject()
	w.Key("agree")
	w.Bool(s.Agree)
	if s.Err != nil {
		w.Key("allowed")
		w.Bool(false)
		w.Key("error")
		w.String(s.Err.Error())
		w.EndObject()
		return
	}
	d := s.Decision
	w.Key("allowed")
	w.Bool(d.Allowed)
	if st := d.Status(); st != 0 {
		w.Key("http_status")
		w.Int(int64(st))
	}
	if d.Reason != "" {
		w.Key("reason")
		w.String(d.Reason)
	}
	if d.PolicyRevision != "" {
		w.Key("policy_revision")
		w.String(d.PolicyRevision)
	}
	if d.Defined {
		w.Key("result")
		writeResult(w, d)
	}
	w.EndObject()
}

// RawBytes writes a value already in JSON.
func (w *JSON) RawBytes(v []byte) {
	w.sep()
	w.next = false
	w.b = append(w.b, v...)
}

// Time writes t in UTC as RFC 3339 with nanoseconds (OPA's timestamp).
func (w *JSON) Time(t time.Time) {
	w.sep()
	w.next = false
	w.b = append(w.b, '"')
	w.b = t.UTC().AppendFormat(w.b, time.RFC3339Nano)
	w.b = append(w.b, '"')
}
