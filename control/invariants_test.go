package control_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// validateFile stops the server and runs tenancy's full validator over its
// data file.
func (e *env) validateFile() {
	e.tb.Helper()
	e.stop()
	db, err := bolt.Open(filepath.Join(e.cfg.DataDir, control.DBFile), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		e.tb.Fatal(err)
	}
	defer db.Close()
	if err := db.View(tenancy.Validate); err != nil {
		e.tb.Fatalf("the control file breaks the invariants: %v", err)
	}
}

func opPut(collection, value string) string {
	return fmt.Sprintf(`{"op":"put","collection":%q,"value":%s}`, collection, value)
}

func opDelete(collection, id string, cascade bool) string {
	return fmt.Sprintf(`{"op":"delete","collection":%q,"id":%q,"cascade":%t}`, collection, id, cascade)
}

// write is one write through the API: a PUT, a DELETE or a batch.
type write struct{ method, path, body string }

func batchOf(ops ...string) write {
	return write{"POST", "/v1/batch", `{"ops":[` + strings.Join(ops, ",") + `]}`}
}

// chainOps builds tenants prefix1 < prefix2 < ... < prefixN (prefix1 the
// root).
func chainOps(prefix string, n int) []string {
	var o []string
	for i := 1; i <= n; i++ {
		parent := "null"
		if i > 1 {
			parent = strconv.Quote(prefix + strconv.Itoa(i-1))
		}
		o = append(o, opPut(tenancy.Tenants, fmt.Sprintf(`{"id":"%s%d","parent":%s}`, prefix, i, parent)))
	}
	return o
}

// TestInvariantsThroughPutAndBatch: every invariant holds for a single
// PUT and for a batch, in any order of its ops; a refused write leaves the
// revision as it was, and the data file passes the full validator at the
// end.
func TestInvariantsThroughPutAndBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	e.must("POST", "/v1/batch", batchOf(append(chainOps("c", 40), chainOps("d", 32)...)...).body)
	e.must("PUT", "/v1/projects/payroll", `{"id":"payroll","owner":"acme","roles":["accountant"]}`)

	newOwner := opPut(tenancy.Projects, `{"id":"timekeeping","owner":"gamma","roles":["accountant","developer","admin"]}`)
	retarget := opPut(tenancy.ProjectGrants, `{"id":"pg-beta","project":"timekeeping","tenant":"gamma","roles":["developer"]}`)
	reproject := opPut(tenancy.ProjectGrants, `{"id":"pg-beta","project":"payroll","tenant":"beta","roles":["accountant"]}`)
	deep := opPut(tenancy.Tenants, `{"id":"d1","parent":"c40"}`) // d32 would have 71 ancestors
	cases := map[string]struct {
		writes []write
		status int
		msg    string
	}{
		"owner change, PUT": {[]write{{"PUT", "/v1/projects/timekeeping", `{"id":"timekeeping","owner":"gamma","roles":["accountant","developer","admin"]}`}}, 409, "owner cannot change"},
		"owner change, batch delete then put": {[]write{
			batchOf(opDelete(tenancy.Projects, "timekeeping", false), newOwner),
			batchOf(opDelete(tenancy.Projects, "timekeeping", true), newOwner),
		}, 409, "owner cannot change"},
		"owner change, batch put then delete": {[]write{batchOf(newOwner, opDelete(tenancy.Projects, "timekeeping", true))}, 409, "owner cannot change"},
		"grant target change, PUT":            {[]write{{"PUT", "/v1/project_grants/pg-beta", `{"id":"pg-beta","project":"timekeeping","tenant":"gamma","roles":["developer"]}`}}, 409, "cannot change"},
		"grant target change, batch": {[]write{
			batchOf(opDelete(tenancy.ProjectGrants, "pg-beta", false), retarget),
			batchOf(opDelete(tenancy.ProjectGrants, "pg-beta", false), reproject),
			batchOf(retarget, opDelete(tenancy.ProjectGrants, "pg-beta", false)),
		}, 409, "cannot change"},
		"grant to the owner": {[]write{
			{"PUT", "/v1/project_grants/pg-x", `{"id":"pg-x","project":"payroll","tenant":"acme","roles":[]}`},
			batchOf(opPut(tenancy.ProjectGrants, `{"id":"pg-x","project":"p9","tenant":"gamma","roles":[]}`), opPut(tenancy.Projects, `{"id":"p9","owner":"gamma","roles":[]}`)),
			batchOf(opPut(tenancy.Projects, `{"id":"p9","owner":"gamma","roles":[]}`), opPut(tenancy.ProjectGrants, `{"id":"pg-x","project":"p9","tenant":"gamma","roles":[]}`)),
		}, 409, "never granted to its owner"},
		"user grant role not held": {[]write{
			{"PUT", "/v1/user_grants/ug-x", `{"id":"ug-x","user":"bob","project":"timekeeping","tenant":"beta","roles":["admin"]}`},
			batchOf(opPut(tenancy.ProjectGrants, `{"id":"pg-beta","project":"timekeeping","tenant":"beta","roles":["accountant"]}`), opPut(tenancy.UserGrants, `{"id":"ug-bob","user":"bob","project":"timekeeping","tenant":"beta","roles":["developer"]}`)),
		}, 409, "not held"},
		"user grant in a tenant holding nothing": {[]write{
			{"PUT", "/v1/user_grants/ug-x", `{"id":"ug-x","user":"bob","project":"timekeeping","tenant":"gamma","roles":[]}`},
			batchOf(opDelete(tenancy.ProjectGrants, "pg-beta", false), opPut(tenancy.UserGrants, `{"id":"ug-bob","user":"bob","project":"timekeeping","tenant":"beta","roles":[]}`)),
		}, 409, "neither owns"},
		"deep re-parent": {[]write{
			{"PUT", "/v1/tenants/d1", `{"id":"d1","parent":"c40"}`},
			{"PUT", "/v1/tenants/d5", `{"id":"d5","parent":"c40"}`},
			batchOf(deep, opPut(tenancy.Users, `{"id":"zed","tenant":"gamma"}`)),
			batchOf(opPut(tenancy.Users, `{"id":"zed","tenant":"gamma"}`), deep),
			batchOf(opDelete(tenancy.Tenants, "d1", false), deep),
		}, 409, "ancestors"},
		"cycle": {[]write{
			{"PUT", "/v1/tenants/c1", `{"id":"c1","parent":"c40"}`},
			batchOf(opPut(tenancy.Tenants, `{"id":"x","parent":"y"}`), opPut(tenancy.Tenants, `{"id":"y","parent":"x"}`)),
		}, 409, "cycle"},
	}
	for name, c := range cases {
		for i, w := range c.writes {
			before := e.srv.Revision()
			r := e.do(w.method, w.path, adminToken, w.body)
			if r.status != c.status || !strings.Contains(string(r.body), c.msg) {
				t.Errorf("%s #%d: got %s, want %d containing %q", name, i, r, c.status, c.msg)
			}
			if e.srv.Revision() != before {
				t.Errorf("%s #%d: a refused write moved the revision", name, i)
			}
		}
	}
	// What the same world accepts: re-creating with the same owner and
	// fewer roles cascades; moving a subtree that fits.
	e.must("POST", "/v1/batch", batchOf(opDelete(tenancy.Projects, "timekeeping", false), opPut(tenancy.Projects, `{"id":"timekeeping","owner":"acme","roles":["developer","admin"]}`)).body)
	if g := e.must("GET", "/v1/project_grants/pg-beta", ""); !strings.Contains(string(g.body), `"roles":["developer"]`) {
		t.Errorf("pg-beta kept a role its project lost: %s", g.body)
	}
	e.must("PUT", "/v1/tenants/d1", `{"id":"d1","parent":"c33"}`) // d32: exactly 64 ancestors
	e.validateFile()
}

// TestIDsAndFieldNames: ids "." and ".." are refused wherever an id
// appears (URL, body, references, batch ops, bundle names); field names
// must match exactly, without duplicates, in entities (422) and in the
// batch envelope (400).
func TestIDsAndFieldNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed()
	cases := map[string]struct {
		method, path, body string
		status             int
		msg                string
	}{
		"PUT %2E":                    {"PUT", "/v1/users/%2E", `{"id":".","tenant":"acme"}`, 400, "not a valid id"},
		"PUT %2e%2E":                 {"PUT", "/v1/tenants/%2e%2E", `{"id":".."}`, 400, "not a valid id"},
		"PUT .%2e":                   {"PUT", "/v1/tenants/.%2e", `{"id":".."}`, 400, "not a valid id"},
		"GET %2E%2E":                 {"GET", "/v1/users/%2E%2E", "", 400, "not a valid id"},
		"DELETE %2E":                 {"DELETE", "/v1/users/%2E", "", 400, "not a valid id"},
		"list after=..":              {"GET", "/v1/users?after=..", "", 400, "after"},
		"body id ..":                 {"PUT", "/v1/users/x", `{"id":"..","tenant":"acme"}`, 422, "not a valid id"},
		"reference .":                {"PUT", "/v1/users/x", `{"id":"x","tenant":"."}`, 422, "tenant"},
		"parent ..":                  {"PUT", "/v1/tenants/x", `{"id":"x","parent":".."}`, 422, "parent"},
		"batch value id .":           {"POST", "/v1/batch", batchOf(opPut(tenancy.Users, `{"id":".","tenant":"acme"}`)).body, 422, "not a valid id"},
		"batch delete id ..":         {"POST", "/v1/batch", batchOf(opDelete(tenancy.Users, "..", false)).body, 400, "not a valid id"},
		"batch put id ..":            {"POST", "/v1/batch", `{"ops":[{"op":"put","collection":"users","id":"..","value":{"id":"..","tenant":"acme"}}]}`, 400, "not a valid id"},
		"bundle %2E%2E":              {"PUT", "/v1/bundles/%2E%2E", "\x1f\x8b", 400, "not valid"},
		"entity ID":                  {"PUT", "/v1/users/x", `{"ID":"x","tenant":"acme"}`, 422, "ID"},
		"entity Tenant":              {"PUT", "/v1/users/x", `{"id":"x","Tenant":"acme"}`, 422, "case-sensitive"},
		"entity duplicate":           {"PUT", "/v1/users/x", `{"id":"x","tenant":"acme","tenant":"beta"}`, 422, "twice"},
		"entity Kelvin sign":         {"PUT", "/v1/users/x", `{"id":"x","tenant":"acme","\u212aind":"machine"}`, 422, "unknown field"},
		"scope Type":                 {"PUT", "/v1/memberships/m", `{"id":"m","user":"bob","scope":{"Type":"tenant","id":"beta"}}`, 422, "scope.Type"},
		"labels duplicate":           {"PUT", "/v1/users/x", `{"id":"x","tenant":"acme","labels":{"k":"1","k":"2"}}`, 422, "labels.k"},
		"batch OPS":                  {"POST", "/v1/batch", `{"OPS":[` + opPut(tenancy.Users, `{"id":"x","tenant":"acme"}`) + `]}`, 400, "OPS"},
		"batch duplicate ops":        {"POST", "/v1/batch", `{"ops":[],"ops":[` + opPut(tenancy.Users, `{"id":"x","tenant":"acme"}`) + `]}`, 400, "twice"},
		"batch op Collection":        {"POST", "/v1/batch", `{"ops":[{"op":"put","Collection":"users","value":{"id":"x","tenant":"acme"}}]}`, 400, "Collection"},
		"batch op duplicate cascade": {"POST", "/v1/batch", `{"ops":[{"op":"delete","collection":"users","id":"bob","cascade":false,"cascade":true}]}`, 400, "twice"},
		"batch value ID":             {"POST", "/v1/batch", batchOf(opPut(tenancy.Users, `{"ID":"x","tenant":"acme"}`)).body, 422, "ID"},
	}
	before := e.srv.Revision()
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			r := e.do(c.method, c.path, adminToken, c.body)
			if r.status != c.status || !strings.Contains(string(r.body), c.msg) {
				t.Fatalf("got %s, want %d containing %q", r, c.status, c.msg)
			}
		})
	}
	// Unencoded dot segments never reach an entity handler: the router
	// redirects them to the cleaned path (where PUT is not a route).
	for _, p := range []string{"/v1/users/.", "/v1/users/.."} {
		if r := e.do("PUT", p, adminToken, `{"id":"x","tenant":"acme"}`); r.status < 300 {
			t.Errorf("PUT %s: %s, want a refusal", p, r)
		}
	}
	if e.srv.Revision() != before {
		t.Fatalf("refused writes moved the revision from %d to %d", before, e.srv.Revision())
	}
}
