package decisionlog_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/token"
)

// TestFastRecordEqualsGeneric: the record written straight as JSON (no
// mask policy) is the same JSON, member for member, as the generic Record
// a mask policy reads, encoded by encoding/json — for every kind of
// answer (boolean, object with every field, undefined, cannot decide, dry
// run, shadow agree/disagree/error, with and without token, trace ids)
// and random strings with characters JSON escapes, credentials echoed
// anywhere. Only req_id differs (and decision_id of a "cannot decide",
// drawn per record).
func TestFastRecordEqualsGeneric(t *testing.T) {
	t.Parallel()
	discard := slog.New(slog.DiscardHandler)
	l, err := decisionlog.New(decisionlog.Config{Console: true, Stdout: discardWriter{}, Labels: map[string]string{"env": "t<&>"}, ID: "s1", Version: "v"},
		authz.New(authz.Config{}, nil, nil, discard), discard)
	if err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(2, seed))
	alphabet := []rune(`abcXYZ019-_.~+/="\<>&' ` + "\t\u00e9\u2028\u4e16")
	str := func(n int) string {
		r := make([]rune, n)
		for i := range r {
			r[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(r)
	}
	for i := range 400 {
		cred := str(8 + rng.IntN(24))
		if rng.IntN(3) == 0 {
			cred = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl" // URL-safe: one form
		}
		auth := []string{"Bearer ", "Basic ", ""}[rng.IntN(3)] + cred
		pick := func() bool { return rng.IntN(2) == 0 }
		maybe := func() string {
			if pick() {
				return str(rng.IntN(6))
			}
			return cred
		}
		headers := map[string]string{"authorization": auth, "x-echo": maybe(), "accept": "*/*", maybe(): "k"}
		if pick() {
			headers["proxy-authorization"] = auth
		}
		req := testutil.CheckRequest(testutil.Request{Method: "POST", Path: "/a/" + fmt.Sprint(i) + "?q=x", Headers: headers,
			ContextExtensions: map[string]string{"project": maybe()}})
		if pick() { // header_map instead of headers
			h := req.Attributes.Request.Http
			for k, v := range h.Headers {
				h.HeaderMap = &corev3.HeaderMap{Headers: append(h.GetHeaderMap().GetHeaders(), &corev3.HeaderValue{Key: k, RawValue: []byte(v)})}
			}
			h.Headers = nil
		}
		var d *authz.Decision
		e := decisionlog.Entry{Authorization: auth, Transport: []string{"grpc", "http", ""}[rng.IntN(3)],
			Start: time.Unix(1700000000, int64(rng.IntN(1e9))), Duration: time.Duration(rng.IntN(1e6)),
			Input: func(need *authz.Need) (ast.Object, error) { return envoy.Input(req) }}
		switch rng.IntN(5) {
		case 0:
			e.Err = &authz.DecideError{Code: authz.CodeUnavailable, Err: errors.New("not ready " + maybe())}
		case 1:
			d = &authz.Decision{ID: authz.NewDecisionID(), Defined: pick(), Allowed: pick(), PolicyRevision: str(3), TenancyRevision: 9}
		default:
			d = &authz.Decision{ID: authz.NewDecisionID(), Defined: true, Object: true, Allowed: pick(), HTTPStatus: []int{0, 401, 429}[rng.IntN(3)],
				Headers:              []authz.Pair{{Key: "x-a", Value: maybe()}, {Key: "x-b", Value: "1"}, {Key: "x-a", Value: "2"}},
				ResponseHeadersToAdd: []authz.Pair{{Key: maybe(), Value: "v"}}, RequestHeadersToRemove: []string{"x", maybe()},
				Body: maybe(), Reason: maybe(), DynamicMetadata: mustMetadata(t, map[string]any{"tenant": maybe(), "n": json.Number("1.5"), "l": []any{true, nil, map[string]any{"k": maybe()}}}),
				QueryParametersToSet: []authz.Pair{{Key: "p", Value: maybe()}}, QueryParametersToRemove: []string{maybe()},
				PolicyRevision: "rev", TenancyRevision: uint64(rng.IntN(100)), Subject: maybe(), Cache: []string{"", "hit", "miss"}[rng.IntN(3)],
				Duration: time.Duration(rng.IntN(1e6))}
		}
		if d != nil && pick() {
			d.Token = &token.Token{Valid: true, Issuer: issuer, Subject: "alice", Claims: map[string]any{"sub": "alice", "echo": maybe()}, TenantBinding: maybe()}
		}
		e.Decision = d
		e.DryRun = pick()
		if pick() {
			e.TraceID, e.SpanID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
		}
		switch rng.IntN(4) {
		case 1:
			e.Shadow = &decisionlog.ShadowResult{Agree: true, Decision: &authz.Decision{Allowed: true, Defined: true, Reason: maybe(), PolicyRevision: "s"}}
		case 2:
			e.Shadow = &decisionlog.ShadowResult{Decision: &authz.Decision{Object: true, Defined: true, HTTPStatus: 418, Body: maybe()}}
		case 3:
			e.Shadow = &decisionlog.ShadowResult{Err: errors.New("boom " + maybe())}
		}
		fast := l.FastLine(e)
		generic, err := l.GenericLine(e)
		if err != nil {
			t.Fatal(err)
		}
		got, want := parseRecord(t, fast), parseRecord(t, generic)
		if d == nil {
			delete(got, "decision_id")
			delete(want, "decision_id")
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d, record %d:\nfast    %s\ngeneric %s", seed, i, fast, generic)
		}
	}
}

// parseRecord decodes a record line without req_id, erased sorted.
func parseRecord(t *testing.T, line []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, line)
	}
	delete(m, "req_id")
	if er, ok := m["erased"].([]any); ok {
		slices.SortFunc(er, func(a, b any) int { return cmpString(a.(string), b.(string)) })
	}
	return m
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestInputJSONEqualsInput: the input envoy writes straight from the
// CheckRequest (Entry.InputJSON) makes the same record as the input built
// as an OPA value (Entry.Input), secret headers and header_map erased
// alike, for random requests with common and rare fields: peers simple or
// not, principals, header_map instead of headers, raw and JSON bodies,
// sizes, metadata, malformed paths (no input either way).
func TestInputJSONEqualsInput(t *testing.T) {
	t.Parallel()
	discard := slog.New(slog.DiscardHandler)
	l, err := decisionlog.New(decisionlog.Config{Console: true, Stdout: discardWriter{}}, authz.New(authz.Config{}, nil, nil, discard), discard)
	if err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(3, seed))
	pick := func() bool { return rng.IntN(2) == 0 }
	s := func() string {
		if pick() {
			return ""
		}
		return fmt.Sprintf("v%d\u00e9\"<%d", rng.IntN(100), rng.IntN(9))
	}
	cred := "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
	for i := range 300 {
		path := "/api/" + fmt.Sprint(i) + "?a=1&b=" + s()
		if rng.IntN(10) == 0 {
			path = "/bad%zz"
		}
		headers := map[string]string{"authorization": cred, "x-a": s(), "content-type": "application/json"}
		if pick() {
			headers["proxy-authorization"] = cred
		}
		body := ""
		if pick() {
			body = `{"k":[1,"` + s() + `"]}`
		}
		req := testutil.CheckRequest(testutil.Request{Method: "POST", Path: path, Headers: headers, Body: body,
			SourcePrincipal: s(), ContextExtensions: map[string]string{"project": s()}})
		a := req.Attributes
		h := a.Request.Http
		if pick() {
			for k, v := range h.Headers {
				h.HeaderMap = &corev3.HeaderMap{Headers: append(h.GetHeaderMap().GetHeaders(), &corev3.HeaderValue{Key: k, RawValue: []byte(v)})}
			}
			h.Headers = nil
		}
		if pick() {
			h.RawBody, h.Fragment, h.Query = []byte(s()), s(), s()
		}
		if pick() {
			a.Source.Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/s"}}}
			a.Source.Labels = map[string]string{"l": s()}
		}
		if pick() {
			a.Destination.Service = s()
		}
		if pick() {
			st, _ := structpb.NewStruct(map[string]any{"n": 1.5, "s": s(), "l": []any{true, nil}})
			a.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": st}}
		}
		if pick() {
			a.Request.Time = nil
		}
		e := decisionlog.Entry{Decision: &authz.Decision{ID: "d", Defined: true, Allowed: true}, Authorization: cred, Start: time.Unix(1, 0),
			Input: func(*authz.Need) (ast.Object, error) { return envoy.Input(req) }}
		built := l.FastLine(e)
		e.InputJSON = envoy.InputJSON(req)
		written := l.FastLine(e)
		got, want := parseRecord(t, written), parseRecord(t, built)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d, request %d:\nwritten %s\nbuilt   %s", seed, i, written, built)
		}
		if bytes.Contains(written, []byte("c2lnbmF0dXJl")) {
			t.Fatalf("credential in %s", written)
		}
	}
}

func mustMetadata(t *testing.T, m map[string]any) authz.Metadata {
	t.Helper()
	md, err := authz.MetadataOf(m)
	if err != nil {
		t.Fatal(err)
	}
	return md
}
