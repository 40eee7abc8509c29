# Test helpers (a _test.rego file: loaded by `gatehouse test`, skipped by
# `serve`). world(raw) completes raw tenancy entities with the indexes the
# sidecar maintains, computed here by scans (fine in tests), so policies can
# be tested `with data.tenancy as testing.world({...})`. Users get the
# defaults the control endpoint fills (status, kind, labels); their optional
# issuer (SPEC §5: the only token issuer that may act as the user) is kept,
# and left out when empty, as the sidecar stores it.
package gatehouse.testing

world(raw) := object.union(empty, object.union(with_users(raw), {"index": index(raw)}))

with_users(raw) := object.union(object.remove(raw, ["users"]), {"users": {id: user_defaults(u) |
	some id, u in object.get(raw, "users", {})
}})

user_defaults(u) := object.remove(
	object.union({"status": "active", "kind": "human", "labels": {}}, u),
	{"issuer" | object.get(u, "issuer", "") == ""},
)

empty := {
	"tenants": {}, "users": {}, "projects": {},
	"project_grants": {}, "user_grants": {}, "memberships": {},
}

index(raw) := {
	"tenant_chain": tenant_chain(object.get(raw, "tenants", {})),
	"tenant_roles": tenant_roles_index(raw),
	"user_roles": user_roles_index(object.get(raw, "user_grants", {})),
}

# tenant_chain: every tenant with its ancestors (order does not matter to
# the library; the sidecar lists them from the tenant up).
tenant_chain(tenants) := {t: chain |
	some t, _ in tenants
	parents := {id: ps | some id, e in tenants; ps := [p | p := e.parent; is_string(p); p != ""]}
	chain := array.concat([t], [a | some a in graph.reachable(parents, {t}); a != t])
}

# tenant_roles: project → tenant → roles (owner: all; active grant: its roles).
tenant_roles_index(raw) := {p: holders |
	some p, _ in pairs(raw)
	holders := pairs(raw)[p]
}

pairs(raw) := {p: by_tenant |
	some p, proj in object.get(raw, "projects", {})
	owner := {proj.owner: sort(proj.roles)}
	grants := {g.tenant: sort(g.roles) |
		some g in object.get(raw, "project_grants", {})
		g.project == p
		object.get(g, "status", "active") == "active"
	}
	by_tenant := object.union(grants, owner)
}

# user_roles: user → project → tenant → union of the grants' roles.
user_roles_index(grants) := {u: {p: {x: roles |
	some g2 in grants
	g2.user == u
	g2.project == p
	x := g2.tenant
	roles := sort({r | some g3 in grants; g3.user == u; g3.project == p; g3.tenant == x; some r in g3.roles})
} |
	some g1 in grants
	g1.user == u
	p := g1.project
} |
	some g in grants
	u := g.user
}

# request builds an input document as Gatehouse does: a verified token for
# subject (claims optional), a path, route context extensions, headers.
request(subject, path, ext) := request_with(subject, path, ext, {}, {})

request_with(subject, path, ext, claims, token_opts) := {
	"attributes": {
		"request": {"http": {"method": "GET", "path": path, "host": "api.example.com", "headers": {}}},
		"contextExtensions": ext,
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"token": object.union(
		{"valid": true, "issuer": "https://idp.example.com/", "subject": subject, "claims": object.union({"sub": subject}, claims), "tenant_binding": "", "trust_token_roles": false},
		token_opts,
	),
	"tenancy_revision": 1,
}

test_world_indexes if {
	w := world({
		"tenants": {"sp": {"id": "sp", "parent": null, "status": "active"}, "c": {"id": "c", "parent": "sp", "status": "active"}},
		"projects": {"p": {"id": "p", "owner": "sp", "roles": ["b", "a"]}},
		"project_grants": {"g": {"id": "g", "project": "p", "tenant": "c", "roles": ["a"], "status": "active"}},
		"user_grants": {
			"u1": {"id": "u1", "user": "x", "project": "p", "tenant": "c", "roles": ["a"]},
			"u2": {"id": "u2", "user": "x", "project": "p", "tenant": "c", "roles": []},
		},
	})
	w.index.tenant_chain.c == ["c", "sp"]
	w.index.tenant_roles.p == {"sp": ["a", "b"], "c": ["a"]}
	w.index.user_roles.x.p.c == ["a"]
}

test_world_users if {
	w := world({"users": {
		"a": {"id": "a", "tenant": "t"},
		"b": {"id": "b", "tenant": "t", "status": "suspended", "kind": "machine", "issuer": "https://idp.example.com/"},
		"c": {"id": "c", "tenant": "t", "issuer": ""},
	}})
	w.users.a == {"id": "a", "tenant": "t", "status": "active", "kind": "human", "labels": {}}
	w.users.b == {"id": "b", "tenant": "t", "status": "suspended", "kind": "machine", "labels": {}, "issuer": "https://idp.example.com/"}
	w.users.c == {"id": "c", "tenant": "t", "status": "active", "kind": "human", "labels": {}}
	world({}).users == {}
}

# --- plain-Rego readings of the tenancy built-ins ---
#
# Built-ins read the sidecar's bbolt cache and cannot see `with data.tenancy
# as ...`; Rego tests replace them with these readings of SPEC §6 over
# data.tenancy (the shipped policy's logic before the built-ins), e.g.
#
#   authz.allow with data.tenancy as w with input as req
#       with gatehouse.tenancy.decide as testing.decide
#
# Request fixtures exercise the built-ins themselves over real data files,
# and a Go test (bundle/native_random_test.go) checks over random worlds
# that these readings and the built-ins answer alike.

# path_tenant(path): the tenant a raw path names, {"tenant": X}, {} or
# {"invalid": why} (SPEC §6 step 3; see tenancy.tenant_reading("path")).
path_tenant(path) := {"invalid": "the path could be read as another tenant (dot segment, //, \\, ; or percent-encoding)"} if {
	regex.match(`^$|^[^/]|//|\\|;|%(?:2[eEfF]|5[cC]|3[bB])|/\.\.?(?:/|$)|^/[^/]*(?:/[^/]*)?%`, raw_path(path))
} else := {} if {
	not regex.match(`^/[tT]/`, raw_path(path))
} else := {"tenant": x} if {
	x := split(raw_path(path), "/")[2]
	regex.match(`^[a-zA-Z0-9._-]{1,128}$`, x)
} else := {"invalid": "the path's tenant segment is not a valid tenant id"}

# raw_path(path): the path without its query; "" for no string.
default raw_path(_) := ""

raw_path(path) := split(path, "?")[0]

default tenant_active(_) := false

tenant_active(t) if {
	chain := data.tenancy.index.tenant_chain[t]
	every c in chain {
		data.tenancy.tenants[c].status == "active"
	}
}

tenant_roles(p, x) := data.tenancy.index.tenant_roles[p][x]

default user_roles(_, _, _) := []

user_roles(u, p, x) := data.tenancy.index.user_roles[u][p][x]

effective_roles(u, p, x) := {r |
	held := tenant_roles(p, x)
	some r in user_roles(u, p, x)
	r in held
}

# user(subject, issuer, trust): users[subject] when the issuer may act as it.
user(subject, issuer, trust) := u if {
	subject != ""
	u := data.tenancy.users[subject]
	acts_as(object.get(u, "issuer", ""), issuer, trust)
}

acts_as(iss, issuer, _) if {
	iss != ""
	iss == issuer
}

acts_as("", _, false)

# decide(q) answers SPEC §6 steps 2 to 6 as gatehouse.tenancy.decide does:
# {"reason", "tenant" (when the reason concerns one), "roles" (from step 5)}.
decide(q) := decide_for(q, u) if {
	u := user(object.get(q, "subject", ""), object.get(q, "issuer", ""), object.get(q, "trust_token_roles", false))
} else := decide_trusted(q) if {
	object.get(q, "subject", "") != ""
	object.get(q, "trust_token_roles", false) == true
} else := {"reason": "unknown_user"}

# named(q): the tenant the request names, if any.
named(q) := q.tenant

named(q) := q.tenant_reading.tenant

names_invalid(q) if {
	v := q.tenant_reading.invalid
	v != false
}

# target(q, home): the tenant the request names, else the home tenant.
target(q, _) := named(q)

target(q, home) := home if not named(q)

# decide_for(q, u): a subject acting as data user u.
decide_for(q, u) := {"reason": "invalid_token"} if {
	binding := object.get(q, "tenant_binding", "")
	binding != ""
	u.tenant != binding
} else := {"reason": "user_inactive"} if {
	u.status != "active"
} else := {"reason": "tenant_inactive", "tenant": u.tenant} if {
	not tenant_active(u.tenant)
} else := {"reason": "tenant_unknown"} if {
	names_invalid(q)
} else := decide_target(q, x, user_roles(q.subject, object.get(q, "project", ""), x)) if {
	x := target(q, u.tenant)
}

# decide_trusted(q): a subject absent from the data (or not the issuer's),
# of an issuer carrying roles in its tokens (step 6).
decide_trusted(q) := {"reason": "tenant_unknown"} if {
	names_invalid(q)
} else := {"reason": "tenant_unknown"} if {
	not named(q)
} else := {"reason": "invalid_token"} if {
	binding := object.get(q, "tenant_binding", "")
	binding != ""
	named(q) != binding
} else := decide_target(q, named(q), token_roles_of(q, named(q)))

token_roles_of(q, x) := [r |
	some r in object.get(q, "token_roles", {})[x].roles
	is_string(r)
]

# decide_target(q, x, mine): steps 3 to 5 for target tenant x, with the
# subject's roles mine (before they are limited to the tenant's).
decide_target(q, x, mine) := {"reason": "tenant_unknown", "tenant": x} if {
	not data.tenancy.tenants[x]
} else := {"reason": "tenant_inactive", "tenant": x} if {
	not tenant_active(x)
} else := {"reason": "project_unknown", "tenant": x} if {
	not data.tenancy.projects[object.get(q, "project", "")]
} else := {"reason": "tenant_not_granted", "tenant": x} if {
	not tenant_roles(q.project, x)
} else := {"reason": roles_reason(q, roles), "tenant": x, "roles": roles} if {
	held := tenant_roles(q.project, x)
	roles := {r | some r in mine; r in held}
}

roles_reason(q, roles) := "role_required" if {
	count(required_of(q)) > 0
	count(required_of(q) & roles) == 0
} else := "no_role" if {
	count(required_of(q)) == 0
	count(roles) == 0
} else := "allowed"

# required_of(q): the roles q requires, from a comma list, a set or an
# array; undefined when q requires none (step 5 is left to the caller).
required_of(q) := {r |
	some part in split(q.required, ",")
	r := trim_space(part)
	r != ""
} if is_string(q.required)

required_of(q) := {r | some r in q.required} if {
	_ = q.required
	not is_string(q.required)
}

# project_users(p, x): the users holding grants on p in x (the built-in
# reads the project_user_grants index).
project_users(p, x) := sort({g.user |
	some g in data.tenancy.user_grants
	g.project == p
	g.tenant == x
})

# user_tenants(u, p): the tenants in which u holds grants on p.
user_tenants(u, p) := sort({g.tenant |
	some g in data.tenancy.user_grants
	g.user == u
	g.project == p
})
