# The peer's policy for bench/bench.sh (BENCH_PEER=1): the shipped policy's
# multi-tenant decision (SPEC §6) for opa-envoy-plugin, written as one would
# for it: the bearer token verified in Rego (HS256, shared secret in
# data.bench), the tenancy facts in data.tenancy (benchworld opadata),
# keyed reads only.
package envoy.authz

default allow := {
	"allowed": false,
	"http_status": 403,
	"headers": {"content-type": "application/json"},
	"body": "{\"error\":\"access denied\"}",
}

allow := {
	"allowed": true,
	"headers": {
		"x-gatehouse-user": token.sub,
		"x-gatehouse-tenant": tenant,
		"x-gatehouse-roles": concat(",", sort(roles)),
	},
} if {
	count(roles & required) > 0
}

token := payload if {
	raw := trim_prefix(input.attributes.request.http.headers.authorization, "Bearer ")
	[valid, _, payload] := io.jwt.decode_verify(raw, {
		"secret": data.bench.hs256_secret,
		"iss": "https://bench.gatehouse.test/",
		"aud": "api",
	})
	valid
}

route := input.attributes.contextExtensions

required := {r | some r in split(route.roles, ","); r != ""}

# The target tenant: /t/{tenant}/...
tenant := input.parsed_path[1] if input.parsed_path[0] == "t"

user := data.tenancy.users[token.sub]

# Roles the user holds on the route's project in the target tenant, limited
# to those the tenant holds on it; both tenants and the user active.
roles := {r |
	user.status == "active"
	data.tenancy.tenants[user.tenant].status == "active"
	data.tenancy.tenants[tenant].status == "active"
	held := data.tenancy.tenant_roles[route.project][tenant]
	some r in data.tenancy.user_roles[token.sub][route.project][tenant]
	r in held
}
