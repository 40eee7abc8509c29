// Package authz is Gatehouse's decision engine: it compiles Rego policies,
// completes the input document (with the bearer token verified by package
// token), evaluates the decision rule against one consistent view of the
// data and shapes the result into a transport-neutral Decision.
//
// The engine knows OPA, not Envoy: the envoy package turns a CheckRequest
// into the input value and a Decision into a CheckResponse.
//
// # Data
//
// Policies read two kinds of data. Static data comes with the policies
// (data.json / data.yaml files, loaded at the path of their folder, as OPA
// loads them). Tenancy data lives under data.tenancy and is served by a
// Tenancy store (the bbolt cache of package replica, or an empty store when no
// control endpoint is configured). Each evaluation opens one read
// transaction, so a decision sees one revision of tenancy data.
//
// # Built-ins
//
// Gatehouse built-ins (Builtin; package replica provides the tenancy ones)
// are given to Compile (Config.Builtins for an engine's sources): the
// compiler accepts calls to them and the policy set evaluates them. The
// engine passes each evaluation's tenancy transaction to them in the
// evaluation context (TenancyTxn): they read the decision's revision.
//
// # Decision cache
//
// Decisions of a policy set are cached by the input values its rules can
// reach, validated against the tenancy reads they made (or their data
// version), with admission of questions asked twice (cache.go). The
// bounded two-generation store under it is internal/gencache, shared with
// the verified-token cache (token) and the document cache (replica).
//
// # Answers
//
// Answer is an answer as a server sent it, for whoever observes answers:
// envoy declares the Observer it calls with it, decisionlog implements it
// (decisionlog.Entry is Answer), so the wire package does not import the
// decision logs.
//
// # Concurrency
//
// An Engine is safe for concurrent use. The active PolicySet is swapped
// atomically: a Check in flight finishes on the set it started with. A
// PolicySet is immutable after Compile.
//
// # Errors
//
// Decide returns a *DecideError when no decision can be made (not ready,
// stale data, evaluation error, a decision of the wrong shape). Callers turn
// it into a gRPC error or an HTTP 5xx: "cannot decide" is never an allow.
package authz
