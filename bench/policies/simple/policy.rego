# A small opa-envoy style policy for `make bench`: a caller may act in the
# tenant named by the path (/t/{tenant}/...) when its verified token says it
# belongs to that tenant. Gatehouse verifies the token in Go and puts the
# result in input.token (SPEC §3), so the policy does no JWT work itself.
package envoy.authz

default allow := {
	"allowed": false,
	"http_status": 403,
	"headers": {"content-type": "application/json"},
	"body": "{\"error\": \"forbidden\"}",
}

allow := {
	"allowed": true,
	"headers": {"x-gatehouse-user": input.token.subject},
} if {
	input.token.valid
	input.parsed_path[0] == "t"
	input.token.claims.tenant == input.parsed_path[1]
}
