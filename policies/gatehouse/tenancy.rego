# METADATA
# title: Gatehouse tenancy library
# description: |
#   Questions about the multi-tenant model, answered with keyed lookups on
#   data.tenancy and its indexes (never a scan of a collection).
package gatehouse.tenancy

# The tenancy questions are answered by Gatehouse built-ins reading the
# sidecar's bbolt cache in the evaluation's transaction (keyed reads,
# recorded for the decision cache like any read of data.tenancy). These
# functions name them for policies; `gatehouse capabilities` declares them.
# Rego tests replace a built-in with its plain-Rego reading over
# data.tenancy: `with gatehouse.tenancy.tenant_active as testing.tenant_active`.

# tenant_active(t) holds when tenant t exists and it and all its ancestors
# (its service-provider parents) have status "active".
tenant_active(t) if gatehouse.tenancy.tenant_active(t)

# tenant_roles(p, x) is the list of roles tenant x holds on project p: every
# role of the project when x owns it, the roles of x's active project grant
# otherwise. Undefined when x neither owns p nor holds an active grant on it.
tenant_roles(p, x) := gatehouse.tenancy.tenant_roles(p, x)

# user_roles(u, p, x) is the union of the roles of user u's grants on
# project p inside tenant x ([] when there are none).
user_roles(u, p, x) := gatehouse.tenancy.user_roles(u, p, x)

# effective_roles(u, p, x): u's roles on p in x that x still holds on p.
effective_roles(u, p, x) := gatehouse.tenancy.effective_roles(u, p, x)

# user(subject, issuer, trust_token_roles) is the data user a verified
# token acts as (SPEC §6 step 2): users[subject], when that user names the
# token's issuer, or names none and the issuer does not carry roles in its
# tokens. Undefined otherwise: the user counts as absent.
user(subject, issuer, trust_token_roles) := gatehouse.tenancy.user(subject, issuer, trust_token_roles)

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
#
# One head with an else chain: a call evaluates the branches up to its
# mode's, not every head of the function.
tenant_reading(mode) := gatehouse.tenancy.path_tenant(request_path) if {
	mode == "path"
} else := header_reading if {
	mode == "header"
} else := host_reading if {
	mode == "host"
} else := token_reading if {
	mode == "token"
} else := {"invalid": "tenant_from is not path, header, host or token"}

# path (above): a first segment equal to "t" (any case) names the tenant in
# the second segment ("/t" names none, "/t/" an empty, invalid one). The raw
# path is read (Envoy's :path as the client sent it, never decoded or
# normalized; the query never counts), and a path an upstream could read
# differently is invalid, whatever it seems to name: "", not starting with
# "/", "//", "\", ";", a percent-encoded "/", "\", "." or ";" anywhere, a
# "." or ".." segment, any percent-encoding in the first two segments. The
# built-in gatehouse.tenancy.path_tenant applies these rules natively.

# header_reading, host_reading and token_reading are tenant_reading's
# other modes.
header_reading := {} if {
	not tenant_header
} else := {"invalid": "several x-tenant-id values"} if {
	contains(input.attributes.request.http.headers["x-tenant-id"], ",")
} else := id_reading(input.attributes.request.http.headers["x-tenant-id"], "x-tenant-id")

host_reading := {} if {
	not host
} else := id_reading(host_label(input.attributes.request.http.host), "the host's first label")

token_reading := {} if {
	not tenant_claim
} else := id_reading(input.token.claims.tenant, "the token's tenant claim")

# requested_tenant(mode) is the valid tenant id the request names by mode;
# undefined when it names none or an invalid one (see tenant_reading).
requested_tenant(mode) := tenant_reading(mode).tenant

# request_path is the path as the client sent it, with its query.
default request_path := ""

request_path := input.attributes.request.http.path

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
