// Package policytest is the policy workflow of platform teams: it runs Rego
// unit tests with OPA's tester and request fixtures through the sidecar's
// own decision path (`gatehouse test`), decides one request offline with an
// explanation (`gatehouse eval`), compiles policies in strict mode
// (`gatehouse check`) and formats them (`gatehouse fmt`).
//
// # Discovery
//
// Run walks its paths (default "."), following symbolic links and skipping
// hidden entries and --ignore globs. It finds .rego files (*_test.rego
// included), static data files (only data.json, data.yaml and data.yml,
// loaded at the path of their folder, as serve and OPA load them: other
// JSON and YAML files are never data) and fixture folders: a folder
// holding a file named fixture.yaml. (One fixture.yaml per folder: the
// folder is the test suite; its tenancy file sits beside it.)
//
// # Rego tests
//
// Every test_ rule runs with OPA's tester as `opa test` runs it, with the
// same compiler options, the same counts (a test with test cases counts each
// leaf case), todo_test_ rules skipped and print() output captured. The
// tests that fail run a second time with tracing (tracing excludes
// coverage) to report the failing expression: the last expression that
// evaluated to false, with its file:line and the values of its variables.
// Coverage is OPA's: every module, *_test.rego included.
//
// The compiler knows Gatehouse's built-ins (replica.Builtins). A Rego test
// has no tenancy cache: a tenancy built-in it calls stops the test with an
// error saying to mock it (`with gatehouse.tenancy.decide as
// testing.decide`); gatehouse.tenancy.path_tenant reads no data and runs.
// Fixtures run the built-ins for real. Capabilities returns the capabilities
// file (`gatehouse capabilities`) for OPA's own tools.
//
// # Fixtures
//
// A fixture.yaml is a list of cases, or a mapping with cases and settings:
//
//	tenancy: tenancy.json          # optional: a control API batch {"ops": [...]} or
//	                               # {"tenants": [...], "users": {...}, ...}; JSON or YAML
//	issuers:                       # optional; default one issuer, DefaultIssuer
//	  - issuer: https://idp.example.com/
//	    audiences: [api]
//	  - issuer: https://tenants.example.com/
//	    trust_token_roles: true    # also: tenant: <id> (a tenant-bound issuer)
//	decision: envoy/authz/allow    # optional (default: gatehouse test --decision)
//	policies: ../..                # optional: compile this folder instead of the policies under test
//	defaults: {host: api.example.com, context: {project: timekeeping}}   # merged into every case
//	cases:
//	  - name: alice is Beta's external accountant
//	    method: GET                # default GET
//	    path: /t/beta/books        # default /
//	    host: api.example.com      # default api.example.com
//	    headers: {x-request-id: abc}
//	    context: {project: timekeeping, roles: accountant}   # route context extensions
//	    body: {hours: 3}           # a string as is, or YAML sent as JSON
//	    token: {subject: alice}    # or: none; {subject, issuer, claims: {...}, valid: false, error: expired}
//	    expect:
//	      allowed: true
//	      status: 200              # 200 when allowed, else the deny status
//	      reason: allowed          # the decision's reason
//	      headers: {x-gatehouse-tenant: beta}
//	      headers_absent: [www-authenticate]
//	      headers_removed: [x-gatehouse-debug]   # request headers removed on allow
//	      body_contains: '"reason"'
//	      # error: "..."           # expect "cannot decide" (an engine error) instead
//	  - name: a full CheckRequest (protojson names)
//	    check_request: {attributes: {request: {http: {method: GET, path: /x, headers: {}}}}}
//	    token: {subject: bob}      # headers, context and token still apply on top
//	    expect: {status: 403}
//	  - name: later
//	    skip: the route is not written yet
//	    expect: {allowed: true}
//
// Paths in fixture.yaml are relative to its folder. Unknown fields are
// errors. Each case runs as serve answers a Check: envoy.Decide builds the
// input document from the CheckRequest and authz.Engine.Decide evaluates the
// decision rule of the policies under test (every .rego file found but
// *_test.rego, with the data files; compiled by authz.Compile) over the
// fixture's tenancy data, and envoy.Response maps the decision to the
// CheckResponse the case's expectations are compared with.
//
// Tokens are real: the run generates an RSA key, the verifier trusts it
// through a JWKS file for each configured issuer, and each case's token is
// minted with it (iss = the first issuer unless token.issuer names
// another, aud = the issuer's first audience, exp in an hour, the claims
// given). token.error mints a token that fails with that code: expired,
// not_yet_valid, bad_signature (also valid: false), unknown_issuer,
// unknown_key, bad_audience, unsupported_algorithm (HS256), malformed;
// missing (or token: none) sends no Authorization header.
//
// Tenancy data is applied as the control endpoint applies a batch
// (tenancy.Apply: every invariant, cascade and index) and reaches a real
// bbolt sidecar cache (replica.Store) in a temporary folder the way a
// sidecar receives it: as a revision of the change feed.
//
// # Reports
//
// WriteReport writes pretty text (opa's summary lines and, for each failure,
// "FAIL data.pkg.test_x (file:line)" and the failing expression; fixture
// failures list each expectation that did not hold, want vs got), JSON (the
// Report document: tests, fixtures, coverage, summary, fixtures_summary,
// total, passed; durations in nanoseconds) or JUnit XML (one testsuite per
// Rego package and per fixture folder; a "coverage" suite when a threshold
// is set).
//
// # Errors
//
// Run, Eval and Check return a *CompileError when policies do not parse or
// compile, errors wrapping ErrUsage for bad arguments, ErrFixture for a
// fixture that cannot run, ErrInput for an unreadable eval input or data
// file. Test failures are results, not errors.
//
// # Concurrency
//
// Run, Eval and Check are safe to call concurrently; a Sidecar is safe for
// concurrent Checks (traced checks are serialized).
package policytest
