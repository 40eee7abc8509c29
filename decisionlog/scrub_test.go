package decisionlog_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/token"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// TestNoTokenInAnyRecordRandomized: random credentials — with characters
// JSON escapes (quotes, backslashes, <, >, &, control characters, U+2028,
// non-ASCII) — placed in the Authorization header, other headers, the
// query, the body, and echoed by the decision's headers, body, reason and
// dynamic metadata, under either mask path (fast encoder, or the generic
// one a mask policy uses): every record is valid JSON and contains the
// credential neither raw, nor JSON-escaped, nor URL-escaped.
func TestNoTokenInAnyRecordRandomized(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	alphabet := []rune(`abcXYZ019-_.~+/="\<>&'` + "\t\u00e9\u2028\u4e16")
	discard := slog.New(slog.DiscardHandler)
	for _, masked := range []bool{false, true} {
		pols := map[string]string{"p.rego": "package envoy.authz\ndefault allow := false\n"}
		if masked {
			pols["log.rego"] = "package system.log\nmask contains \"/input/nothing\"\n"
		}
		sc := testutil.StartSidecar(t, testutil.Options{Policies: pols, Server: envoy.Config{GRPCAddr: "-", HTTPAddr: "-"}})
		var out bytes.Buffer
		l, err := decisionlog.New(decisionlog.Config{Console: true, Stdout: &out}, sc.Engine, discard)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 300 {
			n := 8 + rng.IntN(32)
			var sb strings.Builder
			for range n {
				sb.WriteRune(alphabet[rng.IntN(len(alphabet))])
			}
			tok := sb.String()
			scheme := []string{"Bearer ", "bearer ", "Basic ", ""}[rng.IntN(4)]
			req := testutil.CheckRequest(testutil.Request{
				Method: "POST",
				Path:   "/a?access_token=" + url.QueryEscape(tok) + "&raw=" + strings.ReplaceAll(url.PathEscape(tok), "&", "%26"),
				Headers: map[string]string{
					"authorization": scheme + tok, "x-forwarded-authorization": tok, "content-type": "application/json",
				},
				Body: `{"t":` + string(mustJSON(t, tok)) + `}`,
			})
			d := &authz.Decision{ID: authz.NewDecisionID(), Defined: true, Object: true, HTTPStatus: 401, Reason: "bad " + tok,
				Body: tok, Headers: []authz.Pair{{Key: "www-authenticate", Value: tok}}, DynamicMetadata: authz.StringMetadata("t", tok, tok, "k"),
				Token: &token.Token{Error: token.TokenMalformed}}
			e := decisionlog.Entry{Decision: d, Start: time.Now(), Authorization: scheme + tok, Transport: "grpc",
				Input: func(need *authz.Need) (ast.Object, error) {
					p, err := envoy.Prepare(req)
					if err != nil {
						return nil, err
					}
					return p.Input(need), nil
				}}
			out.Reset()
			l.Write(e)
			l.Flush()
			line := bytes.TrimSpace(out.Bytes())
			if !json.Valid(line) {
				t.Fatalf("masked=%v %d: not JSON: %s", masked, i, line)
			}
			// Header values are trimmed; a credential under 8 characters is
			// erased with its header only (documented).
			if cred := strings.TrimSpace(tok); len(cred) >= 8 {
				esc := mustJSON(t, cred)
				for _, form := range []string{cred, string(esc[1 : len(esc)-1]), url.QueryEscape(cred), url.PathEscape(cred)} {
					if bytes.Contains(line, []byte(form)) {
						t.Fatalf("masked=%v %d: credential %q (as %q) in %s", masked, i, cred, form, line)
					}
				}
			}
			var rec map[string]any
			_ = json.Unmarshal(line, &rec)
			if rec["input"] == nil {
				t.Fatalf("masked=%v %d: no input: %s", masked, i, line)
			}
		}
	}
}

// mustJSON encodes s as encoding/json does.
func mustJSON(t *testing.T, s string) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
