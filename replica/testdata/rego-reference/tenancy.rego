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

# valid_id(s): s is a tenancy id, [a-zA-Z0-9._-]{1,128}, never "." or "..".
valid_id(s) if {
	is_string(s)
	regex.match(`^[a-zA-Z0-9._-]{1,128}$`, s)
	s != "."
	s != ".."
}

# tenant_reading(mode) reads the target tenant the request names, by the
# route's tenant_from mode (SPEC §6 step 3). It is always defined:
#   {"tenant": X}      the source names the valid id X;
#   {}                 the source names no tenant (the caller's home tenant);
#   {"invalid": why}   the source holds a value that is not a valid id, or
#                      that an upstream could read as another tenant; an
#                      unknown mode too. Never read as "no tenant".
default tenant_reading(_) := {"invalid": "tenant_from is not path, header, host or token"}

# path: a first segment equal to "t" (any case) names the tenant in the
# second segment ("/t" names none, "/t/" an empty, invalid one). A raw path
# an upstream could read differently is invalid, whatever it seems to name.
tenant_reading("path") := {"invalid": "the path could be read as another tenant (dot segment, //, \\, ; or percent-encoding)"} if {
	regex.match(ambiguous_path, raw_path)
} else := {} if {
	not regex.match(`^/[tT]/`, raw_path)
} else := {"tenant": x} if {
	x := split(raw_path, "/")[2]

	# valid_id inlined ("." and ".." segments are ambiguous already)
	regex.match(`^[a-zA-Z0-9._-]{1,128}$`, x)
} else := {"invalid": "the path's tenant segment is not a valid tenant id"}

tenant_reading("header") := {} if {
	not tenant_header
} else := {"invalid": "several x-tenant-id values"} if {
	contains(input.attributes.request.http.headers["x-tenant-id"], ",")
} else := id_reading(input.attributes.request.http.headers["x-tenant-id"], "x-tenant-id")

tenant_reading("host") := {} if {
	not host
} else := id_reading(host_label(input.attributes.request.http.host), "the host's first label")

tenant_reading("token") := {} if {
	not tenant_claim
} else := id_reading(input.token.claims.tenant, "the token's tenant claim")

# requested_tenant(mode) is the valid tenant id the request names by mode;
# undefined when it names none or an invalid one (see tenant_reading).
requested_tenant(mode) := tenant_reading(mode).tenant

# raw_path is the path as the client sent it (Envoy's :path, never decoded
# or normalized), without its query: everything from the first "?" is cut.
default raw_path := ""

raw_path := split(input.attributes.request.http.path, "?")[0]

# ambiguous_path matches a raw path that an upstream (or a proxy between)
# could read as a different path than Gatehouse does. One expression, one
# match per request; its alternatives, in order:
#   ^$|^[^/]                    not an origin-form path ("", "*", "t/x", "http://...")
#   //                          merged by many readers
#   \\                          read as "/" by some
#   ;                           path parameters, cut by some
#   %(2[eEfF]|5[cC]|3[bB])      an encoded ".", "/", "\" or ";" (either hex case)
#   /\.\.?(/|$)                 a "." or ".." segment, resolved by most
#   ^/[^/]*(/[^/]*)?%           any encoding in the first two segments: "t" and
#                               the tenant could be spelled another way
ambiguous_path := `^$|^[^/]|//|\\|;|%(?:2[eEfF]|5[cC]|3[bB])|/\.\.?(?:/|$)|^/[^/]*(?:/[^/]*)?%`

# id_reading(v, what) reads a present value v: a valid id, or invalid.
id_reading(v, what) := {"tenant": v} if {
	valid_id(v)
} else := {"invalid": sprintf("%s is not a valid tenant id", [what])}

# host_label(host) is the first label of a host, port cut, lowercased (host
# names are case-insensitive).
host_label(host) := lower(split(split(host, ":")[0], ".")[0])

# Whether a source is present. Each names the one input value it reads:
# the decision cache keys on the input paths a policy references.
tenant_header if _ = input.attributes.request.http.headers["x-tenant-id"]

host if input.attributes.request.http.host != ""

tenant_claim if _ = input.token.claims.tenant

# route_roles(s) parses a comma list of roles ("reader, writer").
route_roles(s) := {r |
	some part in split(s, ",")
	r := trim_space(part)
	r != ""
}
