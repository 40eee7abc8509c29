package control_test

import (
	"strings"
	"testing"
)

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	// al2 lives in alpha and is authorized in beta (an external user).
	e.must("POST", "/v1/batch", `{"ops":[
	 {"op":"put","collection":"users","value":{"id":"al2","tenant":"alpha"}},
	 {"op":"put","collection":"user_grants","value":{"id":"ug-al2-beta","user":"al2","project":"timekeeping","tenant":"beta","roles":["developer"]}},
	 {"op":"put","collection":"users","value":{"id":"al3","tenant":"alpha"}},
	 {"op":"put","collection":"users","value":{"id":"sam","tenant":"beta","status":"suspended"}},
	 {"op":"put","collection":"memberships","value":{"id":"m-sam","user":"sam","scope":{"type":"tenant","id":"beta"},"roles":["admin"]}},
	 {"op":"put","collection":"users","value":{"id":"tia","tenant":"beta","issuer":"https://tenant-idp.test/"}},
	 {"op":"put","collection":"memberships","value":{"id":"m-tia","user":"tia","scope":{"type":"tenant","id":"beta"},"roles":["admin"]}}]}`)

	alice := userToken(t, "alice") // tenant admin of alpha
	bob := userToken(t, "bob")     // project-grant admin of pg-beta
	carol := userToken(t, "carol") // tenant admin of acme, the service provider
	cases := []struct {
		name               string
		method, path, body string
		token              string
		status             int
		code, msg          string
	}{
		{"no token", "GET", "/v1/users/bob", "", "", 401, "unauthorized", "missing"},
		{"not bearer", "GET", "/v1/users/bob", "", "-", 401, "unauthorized", ""},
		{"wrong token", "GET", "/v1/users/bob", "", adminToken + "x", 401, "unauthorized", ""},
		{"untrusted key", "GET", "/v1/users/alice", "", jwtFor(t, issuerURL, "alice", strangerKey()), 401, "unauthorized", "bad_signature"},
		{"unknown issuer", "GET", "/v1/users/alice", "", jwtFor(t, "https://evil.test/", "alice", issuerKey()), 401, "unauthorized", "unknown_issuer"},
		{"sync token cannot write", "PUT", "/v1/users/x", `{"id":"x","tenant":"acme"}`, syncToken, 403, "forbidden", "read-only"},
		{"sync token cannot delete", "DELETE", "/v1/users/bob", "", syncToken, 403, "forbidden", "read-only"},
		{"sync token cannot batch", "POST", "/v1/batch", `{"ops":[]}`, syncToken, 403, "forbidden", "read-only"},
		{"sync token cannot read entities", "GET", "/v1/users/bob", "", syncToken, 403, "forbidden", ""},
		{"sync token cannot list", "GET", "/v1/users", "", syncToken, 403, "forbidden", "admin token"},

		{"tenant admin creates a user in its tenant", "PUT", "/v1/users/alice2", `{"id":"alice2","tenant":"alpha"}`, alice, 200, "", ""},
		{"tenant admin reads a user of its tenant", "GET", "/v1/users/alice2", "", alice, 200, "", ""},
		{"tenant admin cannot create a user elsewhere", "PUT", "/v1/users/x", `{"id":"x","tenant":"beta"}`, alice, 403, "forbidden", `users/x (tenant beta)`},
		{"tenant admin cannot move a user out", "PUT", "/v1/users/alice2", `{"id":"alice2","tenant":"gamma"}`, alice, 403, "forbidden", "tenant gamma"},
		{"tenant admin cannot take a user in", "PUT", "/v1/users/bob", `{"id":"bob","tenant":"alpha"}`, alice, 403, "forbidden", "tenant beta"},
		{"tenant admin cannot delete another's user", "DELETE", "/v1/users/bob", "", alice, 403, "forbidden", "users/bob"},
		{"tenant admin cannot read another's user", "GET", "/v1/users/bob", "", alice, 403, "forbidden", ""},
		{"tenant admin reads a missing id", "GET", "/v1/users/nobody", "", alice, 404, "not_found", ""},
		{"tenant admin cannot list", "GET", "/v1/users", "", alice, 403, "forbidden", "admin token"},
		{"tenant admin cannot write memberships", "PUT", "/v1/memberships/m-x", `{"id":"m-x","user":"alice2","scope":{"type":"tenant","id":"alpha"},"roles":["admin"]}`, alice, 403, "forbidden", "memberships"},
		{"tenant admin cannot write projects", "DELETE", "/v1/projects/timekeeping", "", alice, 403, "forbidden", "projects"},
		{"tenant admin cannot read the feed", "GET", "/v1/sync/snapshot", "", alice, 403, "forbidden", ""},
		{"tenant admin cannot fetch bundles", "GET", "/v1/bundles/main", "", alice, 403, "forbidden", ""},
		{"tenant admin batch in scope", "POST", "/v1/batch", `{"ops":[{"op":"put","collection":"users","value":{"id":"alice3","tenant":"alpha"}},{"op":"delete","collection":"users","id":"alice3"}]}`, alice, 200, "", ""},
		{"tenant admin batch with one op out of scope", "POST", "/v1/batch", `{"ops":[{"op":"put","collection":"users","value":{"id":"alice4","tenant":"alpha"}},{"op":"put","collection":"users","value":{"id":"x","tenant":"gamma"}}]}`, alice, 403, "forbidden", "users/x"},
		{"without cascade dependents still conflict", "DELETE", "/v1/users/al2", "", alice, 409, "conflict", "user grants"},
		{"a cascade reaching outside the scope", "DELETE", "/v1/users/al2?cascade=true", "", alice, 403, "forbidden", "may not delete user_grants/ug-al2-beta (user al2, project timekeeping, tenant beta) (a consequence of the requested change)"},
		{"a cascade inside the scope", "DELETE", "/v1/users/al3?cascade=true", "", alice, 200, "", ""},

		{"grant admin grants a role under its grant", "PUT", "/v1/user_grants/ug-new", `{"id":"ug-new","user":"alice","project":"timekeeping","tenant":"beta","roles":["developer"]}`, bob, 200, "", ""},
		{"grant admin changes a grant under its grant", "PUT", "/v1/user_grants/ug-bob", `{"id":"ug-bob","user":"bob","project":"timekeeping","tenant":"beta","roles":["accountant","developer"]}`, bob, 200, "", ""},
		{"grant admin reads a grant under its grant", "GET", "/v1/user_grants/ug-alice-beta", "", bob, 200, "", ""},
		{"grant admin cannot grant under another grant", "PUT", "/v1/user_grants/ug-x", `{"id":"ug-x","user":"alice","project":"timekeeping","tenant":"alpha","roles":["developer"]}`, bob, 403, "forbidden", "tenant alpha"},
		{"grant admin cannot move a grant out", "PUT", "/v1/user_grants/ug-new", `{"id":"ug-new","user":"alice","project":"timekeeping","tenant":"alpha","roles":["developer"]}`, bob, 403, "forbidden", ""},
		{"grant admin cannot touch the owner's grants", "DELETE", "/v1/user_grants/ug-carol", "", bob, 403, "forbidden", "tenant acme"},
		{"grant admin cannot manage users", "PUT", "/v1/users/bob", `{"id":"bob","tenant":"beta","labels":{"a":"b"}}`, bob, 403, "forbidden", ""},
		{"grant admin cannot widen its grant", "PUT", "/v1/project_grants/pg-beta", `{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["accountant","admin","developer"]}`, bob, 403, "forbidden", "project_grants"},
		{"grant admin still meets invariants", "PUT", "/v1/user_grants/ug-y", `{"id":"ug-y","user":"alice","project":"timekeeping","tenant":"beta","roles":["admin"]}`, bob, 409, "conflict", "not held"},

		{"SP admin creates a child tenant", "PUT", "/v1/tenants/delta", `{"id":"delta","name":"Delta","parent":"acme","kind":"customer"}`, carol, 200, "", ""},
		{"SP admin edits a child tenant", "PUT", "/v1/tenants/delta", `{"id":"delta","name":"Delta Ltd","parent":"acme","kind":"customer","status":"suspended"}`, carol, 200, "", ""},
		{"SP admin cannot re-parent a child elsewhere", "PUT", "/v1/tenants/delta", `{"id":"delta","parent":"gamma"}`, carol, 403, "forbidden", "tenants/delta (parent gamma)"},
		{"SP admin cannot detach a child", "PUT", "/v1/tenants/alpha", `{"id":"alpha","name":"Alpha"}`, carol, 403, "forbidden", "(no parent)"},
		{"SP admin cannot adopt a tenant", "PUT", "/v1/tenants/gamma", `{"id":"gamma","parent":"acme"}`, carol, 403, "forbidden", "tenants/gamma (no parent)"},
		{"SP admin cannot edit its own tenant", "PUT", "/v1/tenants/acme", `{"id":"acme","name":"ACME 2"}`, carol, 403, "forbidden", "tenants/acme"},
		{"SP admin cannot populate a child in a batch", "POST", "/v1/batch", `{"ops":[{"op":"put","collection":"tenants","value":{"id":"eps","parent":"acme"}},{"op":"put","collection":"users","value":{"id":"eve","tenant":"eps"}}]}`, carol, 403, "forbidden", "users/eve"},
		{"SP admin cascade reaching a child's users", "DELETE", "/v1/tenants/alpha?cascade=true", "", carol, 403, "forbidden", "consequence of the requested change"},
		{"SP admin deletes an empty child", "DELETE", "/v1/tenants/delta", "", carol, 200, "", ""},

		{"an admin of nothing", "PUT", "/v1/users/dx", `{"id":"dx","tenant":"gamma"}`, userToken(t, "dave"), 403, "forbidden", "administers no tenant"},
		{"an unknown subject", "GET", "/v1/users/alice", "", userToken(t, "mallory"), 403, "forbidden", "not a user"},
		{"a suspended administrator", "PUT", "/v1/users/bx", `{"id":"bx","tenant":"beta"}`, userToken(t, "sam"), 403, "forbidden", "suspended"},
		{"a tenant-bound issuer for its tenant", "PUT", "/v1/users/bx", `{"id":"bx","tenant":"beta"}`, jwtFor(t, boundIssuerURL, "erin", issuerKey()), 200, "", ""},
		{"a trust_token_roles issuer cannot act as a user without an issuer", "PUT", "/v1/users/ax", `{"id":"ax","tenant":"alpha"}`, jwtFor(t, trustIssuerURL, "alice", issuerKey()), 403, "forbidden", "not a user"},
		{"a trust_token_roles issuer acts as a user naming it", "PUT", "/v1/users/tx", `{"id":"tx","tenant":"beta"}`, jwtFor(t, trustIssuerURL, "tia", issuerKey()), 200, "", ""},
		{"another issuer cannot act as a user naming an issuer", "PUT", "/v1/users/tx2", `{"id":"tx2","tenant":"beta"}`, jwtFor(t, issuerURL, "tia", issuerKey()), 403, "forbidden", "not a user"},
		{"a tenant-bound issuer for another tenant", "PUT", "/v1/users/ax", `{"id":"ax","tenant":"alpha"}`, jwtFor(t, boundIssuerURL, "alice", issuerKey()), 403, "forbidden", "only for tenant"},
	}
	for _, c := range cases { // in order: some build on earlier ones
		before := e.srv.Revision()
		r := e.do(c.method, c.path, c.token, c.body)
		if r.status != c.status || r.errCode() != c.code || !strings.Contains(string(r.body), c.msg) {
			t.Errorf("%s: got %s, want %d %s containing %q", c.name, r, c.status, c.code, c.msg)
			continue
		}
		if r.status == 401 && r.header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", c.name)
		}
		wrote := c.method != "GET" && r.status == 200
		if after := e.srv.Revision(); wrote != (after == before+1) || (!wrote && after != before) {
			t.Errorf("%s: revision %d → %d", c.name, before, after)
		}
	}
	// Refused cascades left everything in place.
	for _, p := range []string{"/v1/users/al2", "/v1/user_grants/ug-al2-beta", "/v1/users/alice", "/v1/tenants/alpha"} {
		if r := e.do("GET", p, adminToken, ""); r.status != 200 {
			t.Errorf("%s after refused cascades: %s", p, r)
		}
	}
	if r := e.do("GET", "/v1/users/al3", adminToken, ""); r.status != 404 {
		t.Errorf("al3 survived its cascade delete: %s", r)
	}
	if v := e.metric("gatehouse_control_writes_total", map[string]string{"result": "forbidden"}); v < 15 {
		t.Errorf("forbidden writes counted %v", v)
	}
}
