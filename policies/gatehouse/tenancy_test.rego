package gatehouse.tenancy_test

import data.gatehouse.tenancy
import data.gatehouse.testing

sp_world := testing.world({
	"tenants": {
		"sp": {"id": "sp", "parent": null, "status": "active"},
		"child": {"id": "child", "parent": "sp", "status": "active"},
		"grandchild": {"id": "grandchild", "parent": "child", "status": "active"},
	},
	"projects": {"p": {"id": "p", "owner": "sp", "roles": ["reader", "writer"]}},
	"project_grants": {"g": {"id": "g", "project": "p", "tenant": "child", "roles": ["reader"], "status": "active"}},
	"user_grants": {"ug": {"id": "ug", "user": "u", "project": "p", "tenant": "child", "roles": ["reader"]}},
})

test_active_chain if {
	tenancy.tenant_active("grandchild") with data.tenancy as sp_world with gatehouse.tenancy.tenant_active as testing.tenant_active
}

test_suspended_ancestor_deactivates_descendants if {
	w := json.patch(sp_world, [{"op": "replace", "path": "/tenants/sp/status", "value": "suspended"}])
	not tenancy.tenant_active("grandchild") with data.tenancy as w with gatehouse.tenancy.tenant_active as testing.tenant_active
	not tenancy.tenant_active("sp") with data.tenancy as w with gatehouse.tenancy.tenant_active as testing.tenant_active
}

test_unknown_tenant_is_not_active if {
	not tenancy.tenant_active("nowhere") with data.tenancy as sp_world with gatehouse.tenancy.tenant_active as testing.tenant_active
}

test_tenant_roles if {
	tenancy.tenant_roles("p", "sp") == ["reader", "writer"] with data.tenancy as sp_world with gatehouse.tenancy.tenant_roles as testing.tenant_roles
	tenancy.tenant_roles("p", "child") == ["reader"] with data.tenancy as sp_world with gatehouse.tenancy.tenant_roles as testing.tenant_roles
	not tenancy.tenant_roles("p", "grandchild") with data.tenancy as sp_world with gatehouse.tenancy.tenant_roles as testing.tenant_roles
}

test_effective_roles_intersect_with_tenant_roles if {
	# a user grant role the tenant no longer holds is not effective
	w := json.patch(sp_world, [{"op": "replace", "path": "/index/tenant_roles/p/child", "value": ["writer"]}])
	tenancy.effective_roles("u", "p", "child") == set() with data.tenancy as w with gatehouse.tenancy.effective_roles as testing.effective_roles
	tenancy.effective_roles("u", "p", "child") == {"reader"} with data.tenancy as sp_world with gatehouse.tenancy.effective_roles as testing.effective_roles
}

test_user if {
	w := testing.world({
		"tenants": {"t": {"id": "t", "parent": null, "status": "active"}},
		"users": {"a": {"id": "a", "tenant": "t"}, "b": {"id": "b", "tenant": "t", "issuer": "https://b.example.com/"}},
	})
	tenancy.user("a", "https://idp.example.com/", false).tenant == "t" with data.tenancy as w with gatehouse.tenancy.user as testing.user
	not tenancy.user("a", "https://idp.example.com/", true) with data.tenancy as w with gatehouse.tenancy.user as testing.user
	tenancy.user("b", "https://b.example.com/", true).id == "b" with data.tenancy as w with gatehouse.tenancy.user as testing.user
	not tenancy.user("b", "https://idp.example.com/", false) with data.tenancy as w with gatehouse.tenancy.user as testing.user
	not tenancy.user("", "https://idp.example.com/", false) with data.tenancy as w with gatehouse.tenancy.user as testing.user
	not tenancy.user("c", "https://idp.example.com/", false) with data.tenancy as w with gatehouse.tenancy.user as testing.user
}

test_user_roles_default_empty if {
	tenancy.user_roles("nobody", "p", "sp") == [] with data.tenancy as sp_world with gatehouse.tenancy.user_roles as testing.user_roles
}

# --- reading the target tenant (SPEC §6 step 3) ---

# http(fields) is an input whose request has the given http fields.
http(fields) := {"attributes": {"request": {"http": fields}}}

path_reading(path) := r if {
	r := tenancy.tenant_reading("path") with input as http({"path": path}) with gatehouse.tenancy.path_tenant as testing.path_tenant
}

# matches(got, want): want is {"tenant": X}, {} (no tenant) or "invalid".
matches(got, "invalid") if is_string(got.invalid)

matches(got, want) if {
	is_object(want)
	got == want
}

# The raw path as an upstream would read it. Every path here must read
# exactly as listed: the tenant, none, or invalid (tenant_unknown).
path_cases := {
	# the tenant segment
	"/t/beta/docs": {"tenant": "beta"},
	"/t/beta": {"tenant": "beta"},
	"/t/beta/": {"tenant": "beta"},
	"/T/beta/docs": {"tenant": "beta"},
	"/t/Beta/docs": {"tenant": "Beta"},
	"/t/acme.eu/x": {"tenant": "acme.eu"},
	"/t/a_b-c.9/x": {"tenant": "a_b-c.9"},
	"/t/.../x": {"tenant": "..."},
	"/t/.beta/x": {"tenant": ".beta"},
	"/t/beta/a%20b/c%41": {"tenant": "beta"},
	"/t/beta/docs?next=%2F..%2Falpha": {"tenant": "beta"},
	"/t/beta?x=%2F": {"tenant": "beta"},
	"/t/beta?next=/t/alpha;x=..": {"tenant": "beta"},
	"/t/beta/x?a=b?c=%5C": {"tenant": "beta"},
	concat("", ["/t/", concat("", [c | some _ in numbers.range(1, 128); c := "a"]), "/x"]): {"tenant": concat("", [c | some _ in numbers.range(1, 128); c := "a"])},
	# no tenant: the home tenant
	"/t": {},
	"/T": {},
	"/t?x=%2Fbeta": {},
	"/t?/beta": {},
	"/": {},
	"/?t=beta": {},
	"/api/portal": {},
	"/api/t/beta": {},
	"/tt/beta": {},
	"/t.json": {},
	"/ta/beta": {},
	# an invalid tenant segment
	"/t/": "invalid",
	"/t/?x=1": "invalid",
	"/t/a b/x": "invalid",
	"/t/bêta/x": "invalid",
	"/t/beta,alpha/x": "invalid",
	"/t/beta:8080/x": "invalid",
	"/t/beta@alpha/x": "invalid",
	"/t/beta#/x": "invalid",
	concat("", ["/t/", concat("", [c | some _ in numbers.range(1, 129); c := "a"]), "/x"]): "invalid",
	# an encoded separator, dot or semicolon, anywhere (either hex case)
	"/t/%2Fbeta/docs": "invalid",
	"/t/%2fbeta/docs": "invalid",
	"/t/alpha%2F..%2Fbeta/docs": "invalid",
	"/t/alpha%2f..%2fbeta/docs": "invalid",
	"/t/alpha/docs/..%2F..%2Fbeta": "invalid",
	"/t/alpha/a%2Fb": "invalid",
	"/t/%2E%2E/beta": "invalid",
	"/t/%2e%2e/beta": "invalid",
	"/t/alpha/%2e%2E/%2E%2e/t/beta": "invalid",
	"/t/alpha/x%2E": "invalid",
	"/t/alpha%5C..%5Cbeta": "invalid",
	"/t/alpha/%5cx": "invalid",
	"/t/beta%3Bx/docs": "invalid",
	"/t/alpha/docs%3bjsessionid=1": "invalid",
	"/api/%2Ft%2Fbeta": "invalid",
	# any percent-encoding in the first two segments
	"/%74/beta/x": "invalid",
	"/%54/beta/x": "invalid",
	"/t/%62eta/x": "invalid",
	"/t/beta%20/x": "invalid",
	"/api%20/x": "invalid",
	"/%61pi/x": "invalid",
	# a backslash or a semicolon
	"/t\\beta/x": "invalid",
	"/t/alpha\\..\\beta": "invalid",
	"/t/alpha/x\\y": "invalid",
	"/t;x/beta/docs": "invalid",
	"/t/beta;x/docs": "invalid",
	"/t/alpha/docs;/../../beta": "invalid",
	# slashes merged
	"//t/beta/x": "invalid",
	"/t//beta/x": "invalid",
	"/x//t/beta": "invalid",
	"/t/alpha//x": "invalid",
	"/t/alpha/x//": "invalid",
	# dot segments
	"/t/./beta/x": "invalid",
	"/t/beta/./x": "invalid",
	"/t/x/../y": "invalid",
	"/t/alpha/../beta/x": "invalid",
	"/x/../t/beta": "invalid",
	"/t/..": "invalid",
	"/t/.": "invalid",
	"/./t/beta": "invalid",
	"/..": "invalid",
	"/t/alpha/..": "invalid",
	# not an origin-form path
	"": "invalid",
	"t/beta/x": "invalid",
	"*": "invalid",
	"?x=1": "invalid",
	"http://api.example.com/t/beta/x": "invalid",
}

test_path_reading if {
	wrong := {path: got |
		some path, want in path_cases
		got := path_reading(path)
		not matches(got, want)
	}
	wrong == {}
}

test_path_reading_without_a_path_is_invalid if {
	tenancy.tenant_reading("path").invalid with input as http({}) with gatehouse.tenancy.path_tenant as testing.path_tenant
	tenancy.tenant_reading("path").invalid with input as http({"path": 7}) with gatehouse.tenancy.path_tenant as testing.path_tenant
	tenancy.tenant_reading("path").invalid with input as {} with gatehouse.tenancy.path_tenant as testing.path_tenant
}

# header, host and token sources: a present value must be a valid id.
source_cases := [
	# mode, input, want
	["header", http({"headers": {"x-tenant-id": "beta"}}), {"tenant": "beta"}],
	["header", http({"headers": {"x-tenant-id": "acme.eu_1-2"}}), {"tenant": "acme.eu_1-2"}],
	["header", http({"headers": {}}), {}],
	["header", http({}), {}],
	["header", {}, {}],
	["header", http({"headers": {"x-tenant-id": "beta,alpha"}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": "beta,beta"}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": "beta, alpha"}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": ""}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": " beta"}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": ".."}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": "."}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": "%62eta"}}), "invalid"],
	["header", http({"headers": {"x-tenant-id": "beta/alpha"}}), "invalid"],
	["host", http({"host": "gamma.example.com:8443"}), {"tenant": "gamma"}],
	["host", http({"host": "gamma"}), {"tenant": "gamma"}],
	["host", http({"host": "GAMMA.Example.com"}), {"tenant": "gamma"}],
	["host", http({"host": ""}), {}],
	["host", http({}), {}],
	["host", http({"host": ".example.com"}), "invalid"],
	["host", http({"host": ":8080"}), "invalid"],
	["host", http({"host": "[::1]:8080"}), "invalid"],
	["host", http({"host": "gam ma.example.com"}), "invalid"],
	["host", http({"host": "gamma%2e.example.com"}), "invalid"],
	["token", {"token": {"claims": {"tenant": "delta"}}}, {"tenant": "delta"}],
	["token", {"token": {"claims": {}}}, {}],
	["token", {"token": {"valid": false, "error": "missing"}}, {}],
	["token", {"token": {"claims": {"tenant": 7}}}, "invalid"],
	["token", {"token": {"claims": {"tenant": null}}}, "invalid"],
	["token", {"token": {"claims": {"tenant": false}}}, "invalid"],
	["token", {"token": {"claims": {"tenant": ["delta"]}}}, "invalid"],
	["token", {"token": {"claims": {"tenant": ""}}}, "invalid"],
	["token", {"token": {"claims": {"tenant": "delta,gamma"}}}, "invalid"],
	["token", {"token": {"claims": {"tenant": "../delta"}}}, "invalid"],
	# an unknown mode is never "no tenant"
	["nonsense", http({"path": "/t/acme"}), "invalid"],
	["", http({"path": "/t/acme"}), "invalid"],
	["Path", http({"path": "/t/acme"}), "invalid"],
	["HEADER", http({"headers": {"x-tenant-id": "beta"}}), "invalid"],
]

test_source_reading if {
	wrong := [[mode, doc, got] |
		some [mode, doc, want] in source_cases
		got := tenancy.tenant_reading(mode) with input as doc with gatehouse.tenancy.path_tenant as testing.path_tenant
		not matches(got, want)
	]
	wrong == []
}

test_requested_tenant if {
	tenancy.requested_tenant("path") == "acme" with input as http({"path": "/t/acme/items"}) with gatehouse.tenancy.path_tenant as testing.path_tenant
	not tenancy.requested_tenant("path") with input as http({"path": "/api/acme"}) with gatehouse.tenancy.path_tenant as testing.path_tenant
	not tenancy.requested_tenant("path") with input as http({"path": "/t/"}) with gatehouse.tenancy.path_tenant as testing.path_tenant
	not tenancy.requested_tenant("path") with input as http({"path": "/t/%2Facme"}) with gatehouse.tenancy.path_tenant as testing.path_tenant
	tenancy.requested_tenant("header") == "beta" with input as http({"headers": {"x-tenant-id": "beta"}})
	not tenancy.requested_tenant("token") with input as {"token": {"claims": {"tenant": 7}}}
	not tenancy.requested_tenant("nonsense") with input as http({"path": "/t/acme"})
}

test_valid_id if {
	every id in ["a", "A-z_0.9", "...", ".a", concat("", [c | some _ in numbers.range(1, 128); c := "x"])] {
		tenancy.valid_id(id)
	}
	every id in ["", ".", "..", "a b", "a/b", "a%2Fb", "é", 7, null, concat("", [c | some _ in numbers.range(1, 129); c := "x"])] {
		not tenancy.valid_id(id)
	}
}

test_route_roles if {
	tenancy.route_roles(" reader, writer ,,") == {"reader", "writer"}
	tenancy.route_roles("") == set()
}

test_token_roles if {
	authorization := {"child": {"roles": ["reader", "writer", 5]}}
	tenancy.token_roles(authorization, "p", "child") == {"reader"} with data.tenancy as sp_world with gatehouse.tenancy.tenant_roles as testing.tenant_roles
	tenancy.token_roles({}, "p", "child") == set() with data.tenancy as sp_world with gatehouse.tenancy.tenant_roles as testing.tenant_roles
}
