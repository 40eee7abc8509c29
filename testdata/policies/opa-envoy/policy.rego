# An opa-envoy-plugin policy (Rego v1), as its users write them: it must run
# on Gatehouse unchanged. The acceptance tests add keys/data.json (the JWKS
# the tokens verify with), visible at data.keys.
package envoy.authz

import input.attributes.request.http as http_request

default allow := false

# The boolean form: public assets need nothing.
allow if input.parsed_path[0] == "public"

# The object form for the API.
allow := api if input.parsed_path[0] == "api"

bearer := t if {
	[scheme, t] := split(http_request.headers.authorization, " ")
	lower(scheme) == "bearer"
}

token := {"valid": valid, "header": header, "payload": payload} if {
	[valid, header, payload] := io.jwt.decode_verify(bearer, {"cert": data.keys.jwks, "aud": "api"})
}

# Unverified view (io.jwt.decode), only for the key id echoed to upstream.
kid := h.kid if [h, _, _] := io.jwt.decode(bearer)

internal_network if net.cidr_contains("10.0.0.0/8", input.attributes.source.address.socketAddress.address)

internal_network if net.cidr_contains("127.0.0.0/8", input.attributes.source.address.socketAddress.address)

default api := {"allowed": false, "http_status": 404, "body": "no such API"}

api := unauthenticated if {
	input.parsed_path[1] != "internal"
	not token.valid
}

unauthenticated := {
	"allowed": false,
	"http_status": 401,
	"headers": {"www-authenticate": "Bearer realm=\"api\""},
	"body": json.marshal({"error": "unauthenticated"}),
}

# GET /api/v1/items: every field of an allow.
api := {
	"allowed": true,
	"headers": {
		"x-user": token.payload.sub,
		"x-scope": split(token.payload.scope, " "),
		"x-key-id": kid,
		"x-gatehouse-user": token.payload.sub,
	},
	"response_headers_to_add": {"x-ratelimit-limit": "100"},
	"request_headers_to_remove": ["authorization", "x-gatehouse-user"],
	"query_parameters_to_set": {"user": token.payload.sub, "tag": input.parsed_query.tag},
	"query_parameters_to_remove": ["debug"],
	"dynamic_metadata": {"user": token.payload.sub, "route": input.parsed_path},
} if {
	token.valid
	http_request.method == "GET"
	input.parsed_path == ["api", "v1", "items"]
}

# POST /api/v1/items: a JSON body; headers in the array-of-objects form.
api := {
	"allowed": true,
	"headers": [{"x-item-name": input.parsed_body.name}, {"x-item-name": "checked"}],
} if {
	token.valid
	http_request.method == "POST"
	input.parsed_path == ["api", "v1", "items"]
	input.parsed_body.quantity <= 10
}

api := {
	"allowed": false,
	"http_status": 422,
	"headers": [{"content-type": "application/json"}, {"x-reason": ["quantity", "too-large"]}],
	"body": json.marshal({"error": "quantity too large", "max": 10}),
} if {
	token.valid
	http_request.method == "POST"
	input.parsed_path == ["api", "v1", "items"]
	input.parsed_body.quantity > 10
}

# POST /api/v1/forms: a form body.
api := {"allowed": true, "headers": {"x-colors": input.parsed_body.color}} if {
	token.valid
	input.parsed_path == ["api", "v1", "forms"]
	input.parsed_body.name == ["sam"]
}

# POST /api/v1/upload: what a policy sees of a truncated body.
api := {
	"allowed": false,
	"http_status": 413,
	"body": sprintf("truncated_body=%v parsed_body=%s", [input.truncated_body, json.marshal(input.parsed_body)]),
} if {
	token.valid
	input.parsed_path == ["api", "v1", "upload"]
}

# /api/v1/projects/{id}: the route's context extension must match the path.
api := {"allowed": true, "headers": {"x-project": project}} if {
	token.valid
	input.parsed_path = ["api", "v1", "projects", project]
	input.attributes.contextExtensions.project == project
}

api := {
	"allowed": false,
	"http_status": 403,
	"body": sprintf("route serves project %q, not %q", [input.attributes.contextExtensions.project, project]),
} if {
	token.valid
	input.parsed_path = ["api", "v1", "projects", project]
	input.attributes.contextExtensions.project != project
}

# /api/v1/files/{name}: parsed_path is percent-decoded.
api := {"allowed": true, "headers": {"x-file": name, "x-version": input.parsed_query.v[0]}} if {
	token.valid
	input.parsed_path = ["api", "v1", "files", name]
}

# /api/internal/*: by source address, no token needed.
api := {"allowed": true, "headers": {"x-network": "internal"}} if {
	input.parsed_path[1] == "internal"
	internal_network
}

api := {"allowed": false, "http_status": 403, "body": "internal only"} if {
	input.parsed_path[1] == "internal"
	not internal_network
}
