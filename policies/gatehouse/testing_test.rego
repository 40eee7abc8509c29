# Test helpers (a _test.rego file: loaded by `gatehouse test`, skipped by
# `serve`). world(raw) completes raw tenancy entities with the indexes the
# sidecar maintains, computed here by scans (fine in tests), so policies can
# be tested `with data.tenancy as testing.world({...})`. Users get the
# defaults the control endpoint fills (status, kind, labels); their optional
# issuer (SPEC §5: the only token issuer that may act as the user) is kept,
# and left out when empty, as the sidecar stores it.
package gatehouse.testing

world(raw) := object.union(empty, object.union(with_users(raw), {"index": index(raw)}))

with_users(raw) := object.union(object.remove(raw, ["users"]), {"users": {id: user(u) |
	some id, u in object.get(raw, "users", {})
}})

user(u) := object.remove(
	object.union({"status": "active", "kind": "human", "labels": {}}, u),
	{"issuer" | object.get(u, "issuer", "") == ""},
)

empty := {
	"tenants": {}, "users": {}, "projects": {},
	"project_grants": {}, "user_grants": {}, "memberships": {},
}

index(raw) := {
	"tenant_chain": tenant_chain(object.get(raw, "tenants", {})),
	"tenant_roles": tenant_roles(raw),
	"user_roles": user_roles(object.get(raw, "user_grants", {})),
}

# tenant_chain: every tenant with its ancestors (order does not matter to
# the library; the sidecar lists them from the tenant up).
tenant_chain(tenants) := {t: chain |
	some t, _ in tenants
	parents := {id: ps | some id, e in tenants; ps := [p | p := e.parent; is_string(p); p != ""]}
	chain := array.concat([t], [a | some a in graph.reachable(parents, {t}); a != t])
}

# tenant_roles: project → tenant → roles (owner: all; active grant: its roles).
tenant_roles(raw) := {p: holders |
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
user_roles(grants) := {u: {p: {x: roles |
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
