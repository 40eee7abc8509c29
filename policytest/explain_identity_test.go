package policytest_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/policytest"
	"github.com/gatehouse-dev/gatehouse/token"
)

// TestEvalExplainIdentity: `gatehouse eval --explain` says which issuer may
// act as the token's data user and, when none may, why the user counts as
// absent (SPEC §6 step 2); the chain then leaves the user's grants out.
func TestEvalExplainIdentity(t *testing.T) {
	t.Parallel()
	const (
		plain   = "https://idp.example.com/"
		trusted = "https://tenants.example.com/" // yara's issuer in the fixture world
	)
	tokenOf := func(iss, sub string, trust bool) map[string]any {
		tok := validToken(sub)
		tok["issuer"], tok["trust_token_roles"] = iss, trust
		return tok
	}
	iss, mint := issuer(t)
	tk := map[string]string{"project": "timekeeping"}
	cases := map[string]struct {
		input      []byte
		reason     string
		want       policytest.Identity // Why is checked by substring
		userGrants int
		pretty     []string
	}{
		"a user without issuer, ordinary issuer": {
			inputDocument("/t/beta/x", tokenOf(plain, "bob", false), tk), "allowed",
			policytest.Identity{Subject: "bob", Issuer: plain, InData: true, MayActAs: "any issuer without trust_token_roles", ActsAsUser: true, Why: "names no issuer"},
			1, []string{"acts as user   yes\n", "user grant     bob-tk"},
		},
		"a user without issuer, trusted issuer": {
			inputDocument("/t/beta/x", tokenOf(trusted, "bob", true), tk), "no_role",
			policytest.Identity{Subject: "bob", Issuer: trusted, TrustTokenRoles: true, InData: true, MayActAs: "any issuer without trust_token_roles", Why: "may not act as a data user it does not authenticate"},
			0, []string{"acts as user   no: the user counts as absent\n", "(counts as absent for this token)", "(none: any issuer without trust_token_roles may act as bob)"},
		},
		"a user naming another issuer": {
			inputDocument("/t/beta/x", tokenOf(plain, "yara", false), tk), "unknown_user",
			policytest.Identity{Subject: "yara", Issuer: plain, InData: true, UserIssuer: trusted, MayActAs: trusted, Why: "only that issuer may act as the user"},
			0, []string{"user issuer    " + trusted + " (the only issuer that may act as yara)\n", "(unknown_user)"},
		},
		"a user naming this issuer": {
			inputDocument("/t/beta/x", tokenOf(trusted, "yara", true), tk), "allowed",
			policytest.Identity{Subject: "yara", Issuer: trusted, TrustTokenRoles: true, InData: true, UserIssuer: trusted, MayActAs: trusted, ActsAsUser: true, Why: "is the token's issuer"},
			1, []string{"acts as user   yes\n", "user grant     yara-tk"},
		},
		"a subject absent from the data": {
			inputDocument("/t/beta/x", tokenOf(plain, "ghost", false), tk), "unknown_user",
			policytest.Identity{Subject: "ghost", Issuer: plain, Why: "no user \"ghost\" in the data"},
			0, []string{"acts as user   no: absent from the data\n"},
		},
		"an empty subject": {
			inputDocument("/t/beta/x", tokenOf(trusted, "", true), tk), "unknown_user",
			policytest.Identity{Issuer: trusted, TrustTokenRoles: true, Why: "names no subject"},
			0, nil,
		},
		"a verified token of a CheckRequest": {
			checkRequest("/t/beta/x", mint("bob"), tk), "allowed",
			policytest.Identity{Subject: "bob", Issuer: plain, InData: true, MayActAs: "any issuer without trust_token_roles", ActsAsUser: true, Why: "names no issuer"},
			1, nil,
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ev, err := policytest.Eval(t.Context(), policytest.EvalConfig{
				Policies: shipped, Data: world, Input: c.input, Explain: true, Issuers: []token.IssuerConfig{iss},
			})
			if err != nil {
				t.Fatal(err)
			}
			if ev.Decision.Reason != c.reason {
				t.Errorf("reason %s, want %s", ev.Decision.Reason, c.reason)
			}
			got := ev.Explanation.Identity
			if got == nil {
				t.Fatal("no identity in the explanation")
			}
			g, want := *got, c.want
			g.Why, want.Why = "", "" // Why is compared by substring
			if g != want {
				t.Errorf("identity %+v\nwant     %+v", g, want)
			}
			if !strings.Contains(got.Why, c.want.Why) {
				t.Errorf("why %q lacks %q", got.Why, c.want.Why)
			}
			if ch := ev.Explanation.Chain; ch != nil && len(ch.UserGrants) != c.userGrants {
				t.Errorf("chain user grants %+v, want %d", ch.UserGrants, c.userGrants)
			}
			var b bytes.Buffer
			if err := policytest.WriteEvaluation(&b, ev, policytest.FormatPretty); err != nil {
				t.Fatal(err)
			}
			for _, s := range append([]string{"Identity: subject "}, c.pretty...) {
				if !strings.Contains(b.String(), s) {
					t.Errorf("explanation lacks %q:\n%s", s, b.String())
				}
			}
		})
	}

	// without a valid token there is no identity to explain
	ev, err := policytest.Eval(t.Context(), policytest.EvalConfig{Policies: shipped, Data: world, Input: inputDocument("/t/beta/x", nil, tk), Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	if ev.Explanation.Identity != nil {
		t.Errorf("identity %+v for a missing token", ev.Explanation.Identity)
	}
}
