# The token check alone, for `make bench`'s breakdown row: allow any request
# whose bearer token Gatehouse verified (input.token, SPEC §3), nothing else.
# Run cold (first-seen tokens), its cost per check is the floor's gRPC work
# plus the request's input, the JWT verification and the least a Rego
# evaluation costs: what any policy over verified tokens pays before its
# own rules.
package envoy.authz

default allow := false

allow if input.token.valid
