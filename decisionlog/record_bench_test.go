package decisionlog_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/token"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// BenchmarkRecord is the logging work of one decision off the Check's
// path: the input written from the request, the record written, scrubbed.
func BenchmarkRecord(b *testing.B) {
	discard := slog.New(slog.DiscardHandler)
	key := testutil.RSAKey(b, "bench")
	tok := testutil.MintJWT(b, jwt.SigningMethodRS256, key, "k1", testutil.Claims(issuer, "alice", nil))
	req := testutil.CheckRequest(testutil.Request{
		Path: "/api/v1/projects/p1/items?limit=20&after=abc",
		Headers: map[string]string{
			"authorization": "Bearer " + tok, "accept": "application/json", "user-agent": "Mozilla/5.0 (X11; Linux x86_64)",
			"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https", "cookie": "session=0123456789abcdef",
		},
		ContextExtensions: map[string]string{"project": "p1"},
	})
	l, err := decisionlog.New(decisionlog.Config{Console: true, Stdout: discardWriter{}}, authz.New(authz.Config{}, nil, nil, discard), discard)
	if err != nil {
		b.Fatal(err)
	}
	d := &authz.Decision{ID: authz.NewDecisionID(), Allowed: true, Defined: true, Object: true, Headers: []authz.Pair{{Key: "x-user", Value: "alice"}},
		Token: &token.Token{Valid: true, Issuer: issuer, Subject: "alice", Claims: map[string]any{"sub": "alice"}}, PolicyRevision: "abc", TenancyRevision: 7, Cache: "hit"}
	e := decisionlog.Entry{Decision: d, Transport: "grpc", Start: time.Now(), Duration: time.Millisecond, Authorization: "Bearer " + tok,
		Input: func(need *authz.Need) (ast.Object, error) {
			p, err := envoy.Prepare(req)
			if err != nil {
				return nil, err
			}
			return p.Input(need), nil
		}, InputJSON: envoy.InputJSON(req)} // as envoy's observe hands it over
	b.ReportAllocs()
	for b.Loop() {
		l.Write(e)
	}
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
