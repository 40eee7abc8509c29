// Package authzen serves the OpenID AuthZEN Authorization API 1.0 (SPEC
// §10) on the sidecar: applications (PEPs) ask the same engine Envoy asks,
// over the same data.
//
// Endpoints (HTTPS JSON binding): POST /access/v1/evaluation, POST
// /access/v1/evaluations (options.evaluations_semantic: execute_all,
// deny_on_first_deny, permit_on_first_permit; top-level subject, action,
// resource and context are defaults merged into each item), POST
// /access/v1/search/subject|resource|action (page.limit, page.token →
// page.next_token, count), GET /.well-known/authzen-configuration.
//
// Every request is authenticated first: the PEP's bearer token
// (constant-time compare) and/or a verified client certificate (mTLS);
// anything else is 401. A request is then validated (400 for anything the
// client controls: body, content type, field types, required fields) and
// answered by the engine (authz.Engine.Session): one tenancy revision per
// answer, a batch or a search included, with the decision cache and its
// metrics. The policy's decision rule (policies.authzen_decision, default
// authzen/allow) is a boolean or {"decision": bool, "context": {...}}; the
// search rules (same package) are search_subjects, search_resources and
// search_actions, sets of entities the server sorts and pages. Every
// response context carries the decision id and the revisions it used, and
// X-Request-ID is echoed on every answer, errors included.
//
// # Errors
//
// The sidecar's own failures (not ready, stale data, an evaluation error,
// a decision of the wrong shape) answer 500/503 on a single evaluation; in
// a batch the failed item is a deny carrying the error in its context. A
// decision is never "allow" because something failed.
package authzen
