# METADATA
# title: Gatehouse tenancy library
# description: |
#   Questions about the multi-tenant model, answered with keyed lookups on
#   data.tenancy and its indexes (never a scan of a collection).
package gatehouse.tenancy

# tenant_active(t) holds when tenant t exists and it and all its ancestors
# (its service-provider parents) have status "active".
tenant_active(t) if {
	chain := data.tenancy.index.tenant_chain[t]
	every c in chain {
		data.tenancy.tenants[c].status == "active"
	}
}

# tenant_roles(p, x) is the list of roles tenant x holds on project p: every
# role of the project when x owns it, the roles of x's active project grant
# otherwise. Undefined when x neither owns p nor holds an active grant on it.
tenant_roles(p, x) := data.tenancy.index.tenant_roles[p][x]

# user_roles(u, p, x) is the union of the roles of user u's grants on
# project p inside tenant x ([] when there are none).
default user_roles(_, _, _) := []

user_roles(u, p, x) := data.tenancy.index.user_roles[u][p][x]

# effective_roles(u, p, x): u's roles on p in x that x still holds on p.
effective_roles(u, p, x) := {r |
	held := tenant_roles(p, x)
	some r in user_roles(u, p, x)
	r in held
}

# token_roles(authorization, p, x): per-tenant roles carried in a token's
# authorization claim (authorization[x].roles, as Userfront issues them),
# limited to the roles x holds on p.
token_roles(authorization, p, x) := {r |
	held := tenant_roles(p, x)
	some r in authorization[x].roles
	is_string(r)
	r in held
}

# requested_tenant(mode) is the target tenant the request names, by the
# route's tenant_from mode; undefined when that source holds none.
requested_tenant("path") := x if {
	input.parsed_path[0] == "t"
	x := input.parsed_path[1]
	x != ""
}

requested_tenant("header") := x if {
	x := input.attributes.request.http.headers["x-tenant-id"]
	x != ""
}

requested_tenant("host") := x if {
	host := split(input.attributes.request.http.host, ":")[0]
	x := split(host, ".")[0]
	x != ""
}

requested_tenant("token") := x if {
	x := input.token.claims.tenant
	is_string(x)
	x != ""
}

# route_roles(s) parses a comma list of roles ("reader, writer").
route_roles(s) := {r |
	some part in split(s, ",")
	r := trim_space(part)
	r != ""
}
