package envoy.authz_test

import data.envoy.authz
import data.gatehouse.testing

# The demo world: ACME is a service provider (ZITADEL's vendor, Mender's SP
# tenant) with customers Alpha and Beta and a partner; Globex is another
# service provider with a customer of its own; OldCo is suspended.
raw := {
	"tenants": {
		"acme": {"id": "acme", "name": "ACME", "parent": null, "kind": "service_provider", "status": "active"},
		"alpha": {"id": "alpha", "name": "Alpha", "parent": "acme", "kind": "customer", "status": "active"},
		"beta": {"id": "beta", "name": "Beta", "parent": "acme", "kind": "customer", "status": "active"},
		"partners": {"id": "partners", "name": "Partners", "parent": "acme", "kind": "partner", "status": "active"},
		"globex": {"id": "globex", "name": "Globex", "parent": null, "kind": "service_provider", "status": "active"},
		"initech": {"id": "initech", "name": "Initech", "parent": "globex", "kind": "customer", "status": "active"},
		"oldco": {"id": "oldco", "name": "OldCo", "parent": null, "kind": "vendor", "status": "suspended"},
	},
	"users": {
		"carol": {"id": "carol", "tenant": "acme", "kind": "human", "status": "active"},
		"alice": {"id": "alice", "tenant": "alpha", "kind": "human", "status": "active"},
		"mallory": {"id": "mallory", "tenant": "alpha", "kind": "human", "status": "active"},
		"bob": {"id": "bob", "tenant": "beta", "kind": "human", "status": "active"},
		"dave": {"id": "dave", "tenant": "beta", "kind": "human", "status": "suspended"},
		"erin": {"id": "erin", "tenant": "partners", "kind": "human", "status": "active"},
		"frank": {"id": "frank", "tenant": "initech", "kind": "machine", "status": "active"},
		# users that only their own issuer may act as
		"quinn": {"id": "quinn", "tenant": "alpha", "kind": "human", "status": "active", "issuer": alpha_idp},
		"yara": {"id": "yara", "tenant": "beta", "kind": "human", "status": "active", "issuer": tenant_idp},
	},
	"projects": {
		"timekeeping": {"id": "timekeeping", "owner": "acme", "roles": ["accountant", "admin", "developer"]},
		"portal": {"id": "portal", "owner": "acme", "roles": ["admin", "reader", "support:read", "support:write"]},
		"dashboard": {"id": "dashboard", "owner": "acme", "roles": ["admin", "viewer"]},
		"partner-app": {"id": "partner-app", "owner": "acme", "roles": ["partner"]},
		"devices": {"id": "devices", "owner": "globex", "roles": ["operator"]},
		"legacy": {"id": "legacy", "owner": "oldco", "roles": ["user"]},
	},
	"project_grants": {
		"tk-alpha": {"id": "tk-alpha", "project": "timekeeping", "tenant": "alpha", "roles": ["accountant", "developer"], "status": "active"},
		"tk-beta": {"id": "tk-beta", "project": "timekeeping", "tenant": "beta", "roles": ["accountant", "developer"], "status": "active"},
		"portal-alpha": {"id": "portal-alpha", "project": "portal", "tenant": "alpha", "roles": ["reader"], "status": "active"},
		"portal-beta": {"id": "portal-beta", "project": "portal", "tenant": "beta", "roles": ["reader", "support:read"], "status": "active"},
		"partner-app-partners": {"id": "partner-app-partners", "project": "partner-app", "tenant": "partners", "roles": ["partner"], "status": "active"},
		"devices-initech": {"id": "devices-initech", "project": "devices", "tenant": "initech", "roles": ["operator"], "status": "active"},
		"legacy-beta": {"id": "legacy-beta", "project": "legacy", "tenant": "beta", "roles": ["user"], "status": "active"},
	},
	"user_grants": {
		"carol-dashboard": {"id": "carol-dashboard", "user": "carol", "project": "dashboard", "tenant": "acme", "roles": ["admin"]},
		"carol-portal": {"id": "carol-portal", "user": "carol", "project": "portal", "tenant": "acme", "roles": ["admin"]},
		"bob-tk": {"id": "bob-tk", "user": "bob", "project": "timekeeping", "tenant": "beta", "roles": ["developer"]},
		"bob-portal": {"id": "bob-portal", "user": "bob", "project": "portal", "tenant": "beta", "roles": ["support:read"]},
		"bob-legacy": {"id": "bob-legacy", "user": "bob", "project": "legacy", "tenant": "beta", "roles": ["user"]},
		"alice-tk-beta": {"id": "alice-tk-beta", "user": "alice", "project": "timekeeping", "tenant": "beta", "roles": ["accountant"]},
		"alice-portal": {"id": "alice-portal", "user": "alice", "project": "portal", "tenant": "alpha", "roles": ["reader"]},
		"dave-tk": {"id": "dave-tk", "user": "dave", "project": "timekeeping", "tenant": "beta", "roles": ["developer"]},
		"erin-partner": {"id": "erin-partner", "user": "erin", "project": "partner-app", "tenant": "partners", "roles": ["partner"]},
		"frank-devices": {"id": "frank-devices", "user": "frank", "project": "devices", "tenant": "initech", "roles": ["operator"]},
		"quinn-portal": {"id": "quinn-portal", "user": "quinn", "project": "portal", "tenant": "alpha", "roles": ["reader"]},
		"yara-tk": {"id": "yara-tk", "user": "yara", "project": "timekeeping", "tenant": "beta", "roles": ["developer"]},
	},
}

# Issuers: an ordinary IdP (testing.request's default), a tenant-managed IdP
# whose tokens carry per-tenant roles (trust_token_roles), Alpha's own IdP.
plain_idp := "https://idp.example.com/"

tenant_idp := "https://tenants.example.com/"

alpha_idp := "https://login.alpha.example.com/"

world := testing.world(raw)

# decide evaluates the policy for a request in a world. The Gatehouse
# built-ins are replaced by their plain-Rego readings (the tenancy one reads
# the sidecar's cache, which a Rego test has not, and with them the tests
# also run under `opa test --capabilities policies/capabilities.json`); the
# request fixtures in policies/fixtures exercise the built-ins themselves.
decide(w, req) := d if {
	d := authz.allow with data.tenancy as w with input as req
		with gatehouse.tenancy.decide as testing.decide
		with gatehouse.tenancy.path_tenant as testing.path_tenant
}

allowed(w, req) if decide(w, req).allowed

reason(w, req) := decide(w, req).reason

route(project) := {"project": project}

route_roles(project, roles) := {"project": project, "roles": roles}

patch(ops) := testing.world(json.patch(raw, ops))

# --- step 1: the token ---

test_missing_token_is_401_with_challenge if {
	req := object.union(testing.request("bob", "/t/beta/x", route("timekeeping")), {"token": {"valid": false, "error": "missing"}})
	d := decide(world, req)
	d.http_status == 401
	d.reason == "missing_token"
	d.headers["www-authenticate"] == "Bearer"
	json.unmarshal(d.body) == {"error": "a bearer token is required", "reason": "missing_token"}
}

test_invalid_token_is_401_with_invalid_token_challenge if {
	some code in ["expired", "bad_signature", "unknown_issuer", "malformed", "bad_audience"]
	req := object.union(testing.request("bob", "/t/beta/x", route("timekeeping")), {"token": {"valid": false, "error": code}})
	d := decide(world, req)
	d.http_status == 401
	d.reason == "invalid_token"
	d.headers["www-authenticate"] == "Bearer error=\"invalid_token\""
	contains(json.unmarshal(d.body).error, code)
}

test_issuer_bound_to_another_tenant_is_invalid_token if {
	req := testing.request_with("bob", "/t/beta/x", route("timekeeping"), {}, {"tenant_binding": "alpha"})
	reason(world, req) == "invalid_token"
	decide(world, req).http_status == 401
}

test_issuer_bound_to_the_home_tenant_is_fine if {
	allowed(world, testing.request_with("bob", "/t/beta/x", route("timekeeping"), {}, {"tenant_binding": "beta"}))
}

# --- step 2: the subject ---

test_unknown_user if {
	reason(world, testing.request("ghost", "/t/beta/x", route("timekeeping"))) == "unknown_user"
	decide(world, testing.request("ghost", "/t/beta/x", route("timekeeping"))).http_status == 403
}

test_inactive_user if {
	reason(world, testing.request("dave", "/t/beta/x", route("timekeeping"))) == "user_inactive"
}

test_home_tenant_inactive_through_its_service_provider if {
	# Mender: suspending the service-provider tenant cuts off its children.
	w := patch([{"op": "replace", "path": "/tenants/globex/status", "value": "suspended"}])
	allowed(world, testing.request("frank", "/t/initech/x", route("devices")))
	reason(w, testing.request("frank", "/t/initech/x", route("devices"))) == "tenant_inactive"
}

# --- step 2: which issuer may act as a data user ---

# from(issuer, ...) is a request whose token comes from issuer (the
# tenant-managed IdP carries roles in its tokens).
from(issuer, subject, path, ext, claims) := testing.request_with(
	subject, path, ext, claims,
	{"issuer": issuer, "trust_token_roles": issuer == tenant_idp},
)

test_same_subject_from_two_issuers if {
	# Bob of the data, through the ordinary IdP: his grants.
	d := decide(world, from(plain_idp, "bob", "/t/beta/x", route("timekeeping"), {}))
	d.allowed
	d.headers == {"x-gatehouse-user": "bob", "x-gatehouse-issuer": plain_idp, "x-gatehouse-tenant": "beta", "x-gatehouse-roles": "developer"}

	# "bob" minted by the tenant-managed IdP is not that Bob: he counts as
	# absent from the data, so only his token's roles count ...
	reason(world, from(tenant_idp, "bob", "/t/beta/x", route("timekeeping"), {})) == "no_role"
	reason(world, from(tenant_idp, "bob", "/t/beta/x", route_roles("timekeeping", "developer"), {})) == "role_required"

	# ... he has no home tenant ...
	claims := {"authorization": {"beta": {"roles": ["accountant"]}}}
	reason(world, from(tenant_idp, "bob", "/entries", route("timekeeping"), claims)) == "tenant_unknown"

	# ... and when his token's roles allow, the upstream sees the pair.
	t := decide(world, from(tenant_idp, "bob", "/t/beta/x", route("timekeeping"), claims))
	t.allowed
	t.headers == {"x-gatehouse-user": "bob", "x-gatehouse-issuer": tenant_idp, "x-gatehouse-tenant": "beta", "x-gatehouse-roles": "accountant"}

	# a suspended data user is another identity than the trusted issuer's "dave"
	reason(world, from(plain_idp, "dave", "/t/beta/x", route("timekeeping"), {})) == "user_inactive"
	reason(world, from(tenant_idp, "dave", "/t/beta/x", route("timekeeping"), {})) == "no_role"
}

test_user_with_an_issuer if {
	# Quinn names Alpha's IdP: only its tokens act as Quinn.
	d := decide(world, from(alpha_idp, "quinn", "/t/alpha/x", route("portal"), {}))
	d.allowed
	d.headers == {"x-gatehouse-user": "quinn", "x-gatehouse-issuer": alpha_idp, "x-gatehouse-tenant": "alpha", "x-gatehouse-roles": "reader"}

	# Another issuer's "quinn" is unknown, with the same answer as a subject
	# absent from the data (no oracle for which users exist).
	other := decide(world, from(plain_idp, "quinn", "/t/alpha/x", route("portal"), {}))
	other.reason == "unknown_user"
	json.unmarshal(other.body).error == "user \"quinn\" is unknown"
	reason(world, from(tenant_idp, "quinn", "/t/alpha/x", route("portal"), {})) == "no_role"
	reason(world, from(tenant_idp, "quinn", "/t/alpha/x", route("portal"), {"authorization": {"alpha": {"roles": ["admin"]}}})) == "no_role"

	# Yara names the tenant-managed IdP: its tokens act as Yara of the data,
	# the ordinary IdP's do not.
	allowed(world, from(tenant_idp, "yara", "/t/beta/x", route("timekeeping"), {}))
	reason(world, from(plain_idp, "yara", "/t/beta/x", route("timekeeping"), {})) == "unknown_user"
}

test_user_issuer_is_compared_exactly if {
	every iss in ["https://login.alpha.example.com", "HTTPS://login.alpha.example.com/", "https://login.alpha.example.com/ ", "", plain_idp] {
		reason(world, testing.request_with("quinn", "/t/alpha/x", route("portal"), {}, {"issuer": iss})) == "unknown_user"
	}
	every u in [{"issuer": null}, {"issuer": 7}, {"issuer": [alpha_idp]}] {
		w := patch([{"op": "replace", "path": "/users/quinn/issuer", "value": u.issuer}])
		reason(w, from(alpha_idp, "quinn", "/t/alpha/x", route("portal"), {})) == "unknown_user"
	}

	# an empty issuer is no issuer: as if the field were absent
	w := patch([{"op": "replace", "path": "/users/quinn/issuer", "value": ""}])
	allowed(w, from(plain_idp, "quinn", "/t/alpha/x", route("portal"), {}))
	reason(w, from(tenant_idp, "quinn", "/t/alpha/x", route("portal"), {})) == "no_role"
}

test_trust_issuer_vs_plain_issuer if {
	claims := {"authorization": {"beta": {"roles": ["developer", "accountant"]}}}

	# a subject absent from the data: unknown to the ordinary issuer, token
	# roles for the tenant-managed one
	reason(world, from(plain_idp, "zoe", "/t/beta/x", route("timekeeping"), claims)) == "unknown_user"
	allowed(world, from(tenant_idp, "zoe", "/t/beta/x", route("timekeeping"), claims))

	# a user without an issuer: the ordinary issuer acts as her (her grants),
	# the tenant-managed one cannot (its token's roles only)
	allowed(world, from(plain_idp, "alice", "/t/beta/x", route_roles("timekeeping", "accountant"), {}))
	reason(world, from(tenant_idp, "alice", "/t/beta/x", route_roles("timekeeping", "accountant"), {})) == "role_required"
	decide(world, from(tenant_idp, "alice", "/t/beta/x", route("timekeeping"), claims)).headers["x-gatehouse-roles"] == "accountant,developer"

	# a tenant-bound ordinary issuer still acts only for its tenant's users
	reason(world, testing.request_with("bob", "/t/beta/x", route("timekeeping"), {}, {"issuer": alpha_idp, "tenant_binding": "alpha"})) == "invalid_token"
}

test_empty_subject_is_never_a_user if {
	# even with a data user "" holding grants (the control endpoint refuses
	# that id; the policy does not rely on it)
	w := testing.world(object.union(raw, {
		"users": {"": {"id": "", "tenant": "beta", "kind": "human", "status": "active"}},
		"user_grants": {"empty-tk": {"id": "empty-tk", "user": "", "project": "timekeeping", "tenant": "beta", "roles": ["developer"]}},
	}))
	claims := {"authorization": {"beta": {"roles": ["developer"]}}}
	every opts in [{"issuer": plain_idp}, {"issuer": tenant_idp, "trust_token_roles": true}] {
		every sub in ["", null, 7, false, {}] {
			d := decide(w, testing.request_with(sub, "/t/beta/x", route("timekeeping"), claims, opts))
			not d.allowed
			d.reason == "unknown_user"
			json.unmarshal(d.body).error == "the token names no subject"
		}
		no_sub := json.patch(testing.request_with("x", "/t/beta/x", route("timekeeping"), claims, opts), [
			{"op": "remove", "path": "/token/subject"},
			{"op": "remove", "path": "/token/claims/sub"},
		])
		reason(w, no_sub) == "unknown_user"
	}
}

# --- step 3: the target tenant ---

# Paths an upstream could read as another tenant (Beta, say) while they seem
# to name none or an invalid one: never the home tenant. Alice holds
# portal/reader in Alpha, her home tenant, so a fallback would allow.
confusing_paths := [
	"/t/%2Fbeta/docs", "/t/%2fbeta/docs", "/t/alpha%2F..%2Fbeta/docs",
	"/t;x/beta/docs", "/t/beta;x/docs", "/t/", "/t/?x=1", "//t/beta/docs",
	"/t//beta/docs", "/t/./beta/docs", "/t/alpha/../beta/docs",
	"/x/../t/beta/docs", "/t\\beta/docs", "/t/alpha\\..\\beta", "/%74/beta/docs",
	"/t/%62eta/docs", "/t/%2E%2E/beta", "/t/alpha/%2e%2e/%2e%2e/t/beta",
	"/t/alpha%5C..%5Cbeta", "/t/be ta/docs", "/t/beta,alpha/docs",
	"/api/%2Ft%2Fbeta", "t/beta/docs", "",
]

test_path_tenant_confusion_is_tenant_unknown if {
	every path in confusing_paths {
		d := decide(world, testing.request("alice", path, route("portal")))
		d.reason == "tenant_unknown"
		d.http_status == 403
		startswith(json.unmarshal(d.body).error, "the request names no valid tenant")
	}

	# a token-roles subject is refused the same way
	claims := {"authorization": {"beta": {"roles": ["developer"]}, "alpha": {"roles": ["developer"]}}}
	every path in confusing_paths {
		reason(world, trusted_token("zoe", path, route("timekeeping"), claims)) == "tenant_unknown"
	}
}

test_path_tenant_reading_keeps_ordinary_paths if {
	# "t" in any case names the tenant; Alice holds no portal role in Beta
	reason(world, testing.request("alice", "/T/beta/docs", route("portal"))) == "no_role"
	decide(world, testing.request("alice", "/T/alpha/docs", route("portal"))).headers["x-gatehouse-tenant"] == "alpha"

	# "/t" and other paths name none: the home tenant
	every path in ["/t", "/t?x=%2Fbeta", "/docs", "/docs?t=%2Fbeta", "/tt/beta/docs", "/api/t/beta"] {
		decide(world, testing.request("alice", path, route("portal"))).headers["x-gatehouse-tenant"] == "alpha"
	}

	# the query never changes the reading; encoding after the tenant is fine
	every path in ["/t/alpha/docs?next=%2F..%2Fbeta", "/t/alpha?x=;", "/t/alpha/docs/q3%20report.pdf", "/t/alpha/"] {
		decide(world, testing.request("alice", path, route("portal"))).headers["x-gatehouse-tenant"] == "alpha"
	}
}

test_step_two_comes_before_the_tenant if {
	reason(world, testing.request("dave", "/t/%2Fbeta/x", route("timekeeping"))) == "user_inactive"
	reason(world, testing.request("ghost", "/t/%2Fbeta/x", route("timekeeping"))) == "unknown_user"
}

test_unknown_tenant_from_is_tenant_unknown if {
	every mode in ["query", "", "Path", "HEADER", "cookie", "path "] {
		reason(world, testing.request("alice", "/t/alpha/docs", {"project": "portal", "tenant_from": mode})) == "tenant_unknown"
	}
}

by_header(v) := json.patch(
	testing.request("alice", "/api/x", {"project": "timekeeping", "tenant_from": "header"}),
	[{"op": "add", "path": "/attributes/request/http/headers/x-tenant-id", "value": v}],
)

by_host(h) := json.patch(
	testing.request("alice", "/api/x", {"project": "timekeeping", "tenant_from": "host"}),
	[{"op": "replace", "path": "/attributes/request/http/host", "value": h}],
)

by_token(claim) := testing.request_with("alice", "/api/x", {"project": "timekeeping", "tenant_from": "token"}, {"tenant": claim}, {})

test_invalid_header_host_or_token_tenant_is_tenant_unknown if {
	every v in ["beta,alpha", "beta,beta", "beta, alpha", "", " beta", "..", "beta/alpha", "%62eta"] {
		reason(world, by_header(v)) == "tenant_unknown"
	}
	decide(world, by_header("beta")).headers["x-gatehouse-tenant"] == "beta"

	every h in [".example.com", "[::1]:8080", ":8080", "be ta.example.com"] {
		reason(world, by_host(h)) == "tenant_unknown"
	}
	decide(world, by_host("BETA.example.com:8443")).headers["x-gatehouse-tenant"] == "beta"

	every claim in [7, null, false, "", ["beta"], "beta,alpha", "../beta"] {
		reason(world, by_token(claim)) == "tenant_unknown"
	}

	# absent sources name no tenant: the home tenant
	no_claim := testing.request("alice", "/api/x", {"project": "portal", "tenant_from": "token"})
	decide(world, no_claim).headers["x-gatehouse-tenant"] == "alpha"
	no_header := testing.request("alice", "/api/x", {"project": "portal", "tenant_from": "header"})
	decide(world, no_header).headers["x-gatehouse-tenant"] == "alpha"
}

test_unknown_target_tenant if {
	reason(world, testing.request("bob", "/t/nowhere/x", route("timekeeping"))) == "tenant_unknown"
}

# A deny names the tenant it is about in its dynamic metadata (decision
# logs and per-tenant usage file it there) only when that tenant exists and
# the caller is a user of the data; never the tenant a client made up.
test_deny_metadata_names_an_existing_tenant_only if {
	no_role := decide(world, testing.request("bob", "/t/alpha/x", route("portal")))
	no_role.reason == "no_role"
	no_role.dynamic_metadata == {"reason": "no_role", "user": "bob", "issuer": "https://idp.example.com/", "tenant": "alpha"}
	not_granted := decide(world, testing.request("frank", "/t/initech/x", route("portal")))
	not_granted.reason == "tenant_not_granted"
	not_granted.dynamic_metadata.tenant == "initech"
	every req in [
		testing.request("bob", "/t/nowhere/x", route("timekeeping")), # tenant_unknown: the client's word
		testing.request("dave", "/t/beta/x", route("timekeeping")), # user_inactive
		testing.request("nobody", "/t/beta/x", route("timekeeping")), # unknown_user
		object.union(testing.request("bob", "/t/beta/x", route("timekeeping")), {"token": {"valid": false, "error": "missing"}}),
	] {
		d := decide(world, req)
		not d.allowed
		d.dynamic_metadata == {"reason": d.reason}
	}
}

test_inactive_target_tenant if {
	w := patch([{"op": "replace", "path": "/tenants/beta/status", "value": "suspended"}])
	reason(w, testing.request("alice", "/t/beta/x", route("timekeeping"))) == "tenant_inactive"
}

test_target_defaults_to_home_tenant if {
	d := decide(world, testing.request("alice", "/api/portal", route("portal")))
	d.allowed
	d.headers["x-gatehouse-tenant"] == "alpha"
}

test_tenant_from_header_host_and_token if {
	req := testing.request("alice", "/api/x", {"project": "timekeeping", "tenant_from": "header"})
	with_header := json.patch(req, [{"op": "add", "path": "/attributes/request/http/headers/x-tenant-id", "value": "beta"}])
	decide(world, with_header).headers["x-gatehouse-tenant"] == "beta"

	by_host := json.patch(
		testing.request("alice", "/api/x", {"project": "timekeeping", "tenant_from": "host"}),
		[{"op": "replace", "path": "/attributes/request/http/host", "value": "beta.example.com"}],
	)
	decide(world, by_host).headers["x-gatehouse-tenant"] == "beta"

	by_token := testing.request_with("alice", "/api/x", {"project": "timekeeping", "tenant_from": "token"}, {"tenant": "beta"}, {})
	decide(world, by_token).headers["x-gatehouse-tenant"] == "beta"

	# the path mode ignores a header; no /t/ segment means the home tenant
	not_path := json.patch(testing.request("alice", "/api/x", route("portal")), [{"op": "add", "path": "/attributes/request/http/headers/x-tenant-id", "value": "beta"}])
	decide(world, not_path).headers["x-gatehouse-tenant"] == "alpha"
}

# --- step 4: the project ---

test_project_missing_or_unknown if {
	reason(world, testing.request("bob", "/t/beta/x", {})) == "project_unknown"
	reason(world, testing.request("bob", "/t/beta/x", route("nope"))) == "project_unknown"
	reason(world, testing.request("bob", "/t/beta/x", route(""))) == "project_unknown"
}

test_tenant_not_granted if {
	reason(world, testing.request("alice", "/t/alpha/x", route("dashboard"))) == "tenant_not_granted"
}

test_suspended_grant_is_not_granted if {
	w := patch([{"op": "replace", "path": "/project_grants/tk-beta/status", "value": "suspended"}])
	reason(w, testing.request("bob", "/t/beta/x", route("timekeeping"))) == "tenant_not_granted"
}

test_owner_status_is_not_checked_for_grantees if {
	# OldCo is suspended, but Beta's grant on its project is active.
	allowed(world, testing.request("bob", "/t/beta/x", route("legacy")))
}

# --- step 5: roles ---

test_allow_with_identity_headers if {
	d := decide(world, testing.request("bob", "/t/beta/items", route("timekeeping")))
	d.allowed
	d.headers == {"x-gatehouse-user": "bob", "x-gatehouse-issuer": plain_idp, "x-gatehouse-tenant": "beta", "x-gatehouse-roles": "developer"}
	d.reason == "allowed"
	not d.http_status
}

test_role_required if {
	reason(world, testing.request("bob", "/t/beta/x", route_roles("timekeeping", "accountant"))) == "role_required"
	allowed(world, testing.request("bob", "/t/beta/x", route_roles("timekeeping", "accountant, developer")))
}

test_role_required_when_the_user_has_no_role_at_all if {
	reason(world, testing.request("mallory", "/t/alpha/x", route_roles("portal", "reader"))) == "role_required"
}

test_no_role if {
	reason(world, testing.request("mallory", "/t/alpha/x", route("portal"))) == "no_role"
}

test_stale_user_grant_role_is_not_effective if {
	# the grant lost "developer" but the user grant index still has it
	w := json.patch(world, [{"op": "replace", "path": "/index/tenant_roles/timekeeping/beta", "value": ["accountant"]}])
	reason(w, testing.request("bob", "/t/beta/x", route("timekeeping"))) == "no_role"
}

# --- the seeds' stories ---

test_external_accountant_authorized_by_another_tenant if {
	# ZITADEL: Alice of Alpha is Beta's accountant through a user grant in Beta.
	d := decide(world, testing.request("alice", "/t/beta/books", route_roles("timekeeping", "accountant")))
	d.allowed
	d.headers["x-gatehouse-tenant"] == "beta"
	d.headers["x-gatehouse-roles"] == "accountant"

	# ... but not inside her own tenant, where she holds no timekeeping role
	reason(world, testing.request("alice", "/t/alpha/books", route_roles("timekeeping", "accountant"))) == "role_required"
}

test_project_granted_to_two_customers_with_different_roles if {
	# Portal is granted to Alpha (reader) and Beta (reader, support:read).
	allowed(world, testing.request("bob", "/t/beta/tickets", route_roles("portal", "support:read")))
	reason(world, testing.request("alice", "/t/alpha/tickets", route_roles("portal", "support:read"))) == "role_required"
	allowed(world, testing.request("alice", "/t/alpha/home", route_roles("portal", "reader")))
}

test_audiences_are_kept_apart if {
	# Auth0 forum: a customer user visiting the partner app is refused ...
	reason(world, testing.request("alice", "/t/alpha/x", route("partner-app"))) == "tenant_not_granted"

	# ... a partner uses it ...
	allowed(world, testing.request("erin", "/t/partners/x", route("partner-app")))

	# ... an internal user reaches the internal dashboard and the customer
	# portal, but not the partner app.
	allowed(world, testing.request("carol", "/t/acme/x", route("dashboard")))
	allowed(world, testing.request("carol", "/t/acme/x", route("portal")))
	reason(world, testing.request("carol", "/t/acme/x", route("partner-app"))) == "no_role"
	reason(world, testing.request("carol", "/t/partners/x", route("partner-app"))) == "no_role"
}

test_tenant_cannot_reach_another_customer if {
	reason(world, testing.request("bob", "/t/alpha/x", route("timekeeping"))) == "no_role"
	reason(world, testing.request("frank", "/t/beta/x", route("timekeeping"))) == "no_role"
}

# --- step 6: per-tenant roles in the token (Userfront) ---

trusted_token(subject, path, ext, claims) := testing.request_with(subject, path, ext, claims, {"issuer": tenant_idp, "trust_token_roles": true})

test_token_roles_for_subject_absent_from_data if {
	claims := {"authorization": {"beta": {"roles": ["developer", "admin"]}, "alpha": {"roles": ["accountant"]}}}
	d := decide(world, trusted_token("zoe", "/t/beta/x", route("timekeeping"), claims))
	d.allowed
	d.headers["x-gatehouse-roles"] == "developer" # admin is not held by Beta on timekeeping
	d.headers["x-gatehouse-user"] == "zoe"

	reason(world, trusted_token("zoe", "/t/beta/x", route_roles("timekeeping", "admin"), claims)) == "role_required"
	reason(world, trusted_token("zoe", "/t/alpha/x", route("dashboard"), claims)) == "tenant_not_granted"
}

test_token_roles_need_a_requested_tenant if {
	claims := {"authorization": {"beta": {"roles": ["developer"]}}}
	reason(world, trusted_token("zoe", "/api/x", route("timekeeping"), claims)) == "tenant_unknown"
}

test_token_roles_without_authorization_claim if {
	reason(world, trusted_token("zoe", "/t/beta/x", route("timekeeping"), {})) == "no_role"
}

test_token_roles_respect_the_issuer_binding if {
	claims := {"authorization": {"beta": {"roles": ["developer"]}}}
	req := testing.request_with("zoe", "/t/beta/x", route("timekeeping"), claims, {"trust_token_roles": true, "tenant_binding": "alpha"})
	reason(world, req) == "invalid_token"
}

test_subject_in_data_is_decided_from_data if {
	# Yara is a data user of the trusted issuer: her token claims accountant
	# on Beta; the synced grants say developer.
	claims := {"authorization": {"beta": {"roles": ["accountant"]}}}
	d := decide(world, trusted_token("yara", "/t/beta/x", route("timekeeping"), claims))
	d.headers["x-gatehouse-roles"] == "developer"
	d.headers["x-gatehouse-issuer"] == tenant_idp
	reason(world, trusted_token("yara", "/t/beta/x", route_roles("timekeeping", "accountant"), claims)) == "role_required"
	w := patch([{"op": "replace", "path": "/users/yara/status", "value": "suspended"}])
	reason(w, trusted_token("yara", "/t/beta/x", route("timekeeping"), claims)) == "user_inactive"
}

test_untrusted_issuer_absent_subject_is_unknown if {
	claims := {"authorization": {"beta": {"roles": ["developer"]}}}
	reason(world, testing.request_with("zoe", "/t/beta/x", route("timekeeping"), claims, {})) == "unknown_user"
}

# --- the first failing step decides ---

test_order_of_steps if {
	# an inactive user in an unknown tenant without a project: user_inactive
	reason(world, testing.request("dave", "/t/nowhere/x", {})) == "user_inactive"

	# unknown tenant and unknown project: tenant_unknown
	reason(world, testing.request("bob", "/t/nowhere/x", route("nope"))) == "tenant_unknown"
}

test_every_deny_has_a_json_body_and_status if {
	some req in [
		testing.request("ghost", "/t/beta/x", route("timekeeping")),
		testing.request("bob", "/t/beta/x", route("nope")),
		testing.request("mallory", "/t/alpha/x", route("portal")),
	]
	d := decide(world, req)
	not d.allowed
	d.http_status == 403
	d.headers["content-type"] == "application/json"
	body := json.unmarshal(d.body)
	body.reason == d.reason
	is_string(body.error)
}

# --- every decision is an allow or a deny with its status and body ---

sample_requests := [
	testing.request("bob", "/t/beta/x", route("timekeeping")),
	testing.request("bob", "/t/beta/x", route_roles("timekeeping", "accountant")),
	testing.request("bob", "/t/beta/x", route_roles("timekeeping", "accountant,developer")),
	testing.request("bob", "/t/alpha/x", route("timekeeping")),
	testing.request("bob", "/t/beta/x", route("legacy")),
	testing.request("bob", "/t/beta/x", {}),
	testing.request("bob", "/t/nowhere/x", route("timekeeping")),
	testing.request("alice", "/t/beta/x", route_roles("timekeeping", "accountant")),
	testing.request("alice", "/api/x", route("portal")),
	testing.request("alice", "/t/alpha/x", route("partner-app")),
	testing.request("mallory", "/t/alpha/x", route("portal")),
	testing.request("dave", "/t/beta/x", route("timekeeping")),
	testing.request("ghost", "/t/beta/x", route("timekeeping")),
	testing.request("frank", "/t/initech/x", route("devices")),
	testing.request("carol", "/t/acme/x", route("dashboard")),
	testing.request_with("bob", "/t/beta/x", route("timekeeping"), {}, {"tenant_binding": "alpha"}),
	testing.request_with("bob", "/t/beta/x", route("timekeeping"), {}, {"tenant_binding": "beta"}),
	trusted_token("zoe", "/t/beta/x", route("timekeeping"), {"authorization": {"beta": {"roles": ["developer"]}}}),
	trusted_token("zoe", "/t/beta/x", route_roles("timekeeping", "admin"), {"authorization": {"beta": {"roles": ["admin"]}}}),
	trusted_token("zoe", "/api/x", route("timekeeping"), {"authorization": {"beta": {"roles": ["developer"]}}}),
	testing.request_with("zoe", "/t/beta/x", route("timekeeping"), {"authorization": {"beta": {"roles": ["developer"]}}}, {"trust_token_roles": true, "tenant_binding": "alpha"}),
	testing.request("alice", "/t/%2Fbeta/x", route("portal")),
	testing.request("alice", "/T/alpha/x", route("portal")),
	testing.request("alice", "/t", route("portal")),
	testing.request("alice", "/t/", route("portal")),
	testing.request("alice", "/t/alpha/x?next=%2F..%2Fbeta", route("portal")),
	testing.request("dave", "/t/%2Fbeta/x", route("timekeeping")),
	testing.request("alice", "/t/alpha/x", {"project": "portal", "tenant_from": "query"}),
	trusted_token("zoe", "/t/beta;x/x", route("timekeeping"), {"authorization": {"beta": {"roles": ["developer"]}}}),
	from(plain_idp, "quinn", "/t/alpha/x", route("portal"), {}),
	from(alpha_idp, "quinn", "/t/alpha/x", route("portal"), {}),
	from(tenant_idp, "bob", "/t/beta/x", route("timekeeping"), {"authorization": {"beta": {"roles": ["accountant"]}}}),
	from(tenant_idp, "bob", "/t/beta/x", route("timekeeping"), {}),
	from(tenant_idp, "yara", "/t/beta/x", route("timekeeping"), {}),
	testing.request_with("", "/t/beta/x", route("timekeeping"), {"authorization": {"beta": {"roles": ["developer"]}}}, {"issuer": tenant_idp, "trust_token_roles": true}),
]

sample_worlds := [
	world,
	patch([{"op": "replace", "path": "/tenants/globex/status", "value": "suspended"}]),
	patch([{"op": "replace", "path": "/tenants/beta/status", "value": "suspended"}]),
	patch([{"op": "replace", "path": "/project_grants/tk-beta/status", "value": "suspended"}]),
]

test_every_decision_is_consistent if {
	every w in sample_worlds {
		every req in sample_requests {
			consistent(decide(w, req))
		}
	}
}

consistent(d) if {
	d.allowed == true
	d.reason == "allowed"
	not d.http_status
	d.headers["x-gatehouse-tenant"] == d.dynamic_metadata.tenant
	is_string(d.headers["x-gatehouse-roles"])
}

consistent(d) if {
	d.allowed == false
	d.reason != "allowed"
	d.http_status in {401, 403}
	json.unmarshal(d.body).reason == d.reason
}

test_testing_decide_answers_from_data if {
	testing.decide({"subject": "bob", "issuer": plain_idp, "project": "timekeeping", "tenant": "beta", "required": []}) == {"reason": "allowed", "tenant": "beta", "roles": {"developer"}} with data.tenancy as world
}
