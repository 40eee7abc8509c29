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
	tenancy.tenant_active("grandchild") with data.tenancy as sp_world
}

test_suspended_ancestor_deactivates_descendants if {
	w := json.patch(sp_world, [{"op": "replace", "path": "/tenants/sp/status", "value": "suspended"}])
	not tenancy.tenant_active("grandchild") with data.tenancy as w
	not tenancy.tenant_active("sp") with data.tenancy as w
}

test_unknown_tenant_is_not_active if {
	not tenancy.tenant_active("nowhere") with data.tenancy as sp_world
}

test_tenant_roles if {
	tenancy.tenant_roles("p", "sp") == ["reader", "writer"] with data.tenancy as sp_world
	tenancy.tenant_roles("p", "child") == ["reader"] with data.tenancy as sp_world
	not tenancy.tenant_roles("p", "grandchild") with data.tenancy as sp_world
}

test_effective_roles_intersect_with_tenant_roles if {
	# a user grant role the tenant no longer holds is not effective
	w := json.patch(sp_world, [{"op": "replace", "path": "/index/tenant_roles/p/child", "value": ["writer"]}])
	tenancy.effective_roles("u", "p", "child") == set() with data.tenancy as w
	tenancy.effective_roles("u", "p", "child") == {"reader"} with data.tenancy as sp_world
}

test_user_roles_default_empty if {
	tenancy.user_roles("nobody", "p", "sp") == [] with data.tenancy as sp_world
}

test_requested_tenant_modes if {
	tenancy.requested_tenant("path") == "acme" with input as {"parsed_path": ["t", "acme", "items"]}
	not tenancy.requested_tenant("path") with input as {"parsed_path": ["api", "acme"]}
	not tenancy.requested_tenant("path") with input as {"parsed_path": ["t", ""]}
	tenancy.requested_tenant("header") == "beta" with input as {"attributes": {"request": {"http": {"headers": {"x-tenant-id": "beta"}}}}}
	tenancy.requested_tenant("host") == "gamma" with input as {"attributes": {"request": {"http": {"host": "gamma.example.com:8443"}}}}
	tenancy.requested_tenant("token") == "delta" with input as {"token": {"claims": {"tenant": "delta"}}}
	not tenancy.requested_tenant("token") with input as {"token": {"claims": {"tenant": 7}}}
	not tenancy.requested_tenant("nonsense") with input as {"parsed_path": ["t", "acme"]}
}

test_route_roles if {
	tenancy.route_roles(" reader, writer ,,") == {"reader", "writer"}
	tenancy.route_roles("") == set()
}

test_token_roles if {
	authorization := {"child": {"roles": ["reader", "writer", 5]}}
	tenancy.token_roles(authorization, "p", "child") == {"reader"} with data.tenancy as sp_world
	tenancy.token_roles({}, "p", "child") == set() with data.tenancy as sp_world
}
