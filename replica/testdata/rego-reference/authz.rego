# METADATA
# title: Gatehouse default ext_authz policy
# description: |
#   Multi-tenant authorization (SPEC §6). The route names its project
#   (context extension "project"), optionally the roles it needs ("roles",
#   any one allows) and where the target tenant comes from ("tenant_from":
#   path, header, host or token). The first failing step decides the reason.
package envoy.authz

import data.gatehouse.tenancy

# The decision: allowed with identity headers for the upstream, or a deny
# with a precise reason. A safety net keeps it defined whatever happens.
default allow := {
	"allowed": false,
	"http_status": 403,
	"headers": {"content-type": "application/json"},
	"body": "{\"error\":\"access denied\",\"reason\":\"denied\"}",
	"reason": "denied",
}

allow := {
	"allowed": true,
	"headers": {
		"x-gatehouse-user": subject,
		"x-gatehouse-issuer": input.token.issuer,
		"x-gatehouse-tenant": ok.tenant,
		"x-gatehouse-roles": concat(",", sort(ok.roles)),
	},
	"dynamic_metadata": {"reason": "allowed", "user": subject, "issuer": input.token.issuer, "tenant": ok.tenant, "project": project},
	"reason": "allowed",
} if {
	ok
}

allow := {
	"allowed": false,
	"http_status": status[reason],
	"headers": object.union({"content-type": "application/json"}, challenge[reason]),
	"body": json.marshal({"error": message, "reason": reason}),
	"reason": reason,
} if {
	not ok
	reason != "allowed"
}

# Route settings (Envoy per-route context_extensions).
default route := {}

route := input.attributes.contextExtensions

project := route.project if route.project != ""

required := tenancy.route_roles(object.get(route, "roles", ""))

# The target tenant the request names (SPEC §6 step 3): {"tenant": X},
# {} for none (the home tenant), or {"invalid": why} (tenant_unknown).
reading := tenancy.tenant_reading(object.get(route, "tenant_from", "path"))

requested := reading.tenant

# The verified token's subject; undefined when empty: no rule below ever
# decides for an empty user.
subject := s if {
	input.token.valid == true
	s := input.token.subject
	is_string(s)
	s != ""
}

# The token's issuer carries per-tenant roles in its tokens.
trust_issuer if input.token.trust_token_roles == true

# The subject as a data user (SPEC §6 step 2), only when the token's issuer
# may act as that user: the user names this issuer, or names none and the
# issuer does not carry roles in its tokens (a tenant-managed IdP could mint
# any sub). Otherwise the user counts as absent.
user := u if {
	u := data.tenancy.users[subject]
	issuer_may_act_as(object.get(u, "issuer", ""))
}

# issuer_may_act_as(iss): the token's issuer may act as a user whose
# issuer field is iss ("" when absent).
issuer_may_act_as(iss) if {
	iss != ""
	iss == input.token.issuer
}

issuer_may_act_as("") if not trust_issuer

# Subjects of issuers with trust_token_roles may be absent from the data
# (or present but not theirs to act as): their roles come from the token.
trusted if {
	is_string(subject)
	trust_issuer
	not user
}

# ok is the happy path: every step of SPEC §6 passes. It is evaluated first
# and alone for allowed requests; the ordered reason chain below runs only
# for denies (tests assert both agree).
ok := {"tenant": x, "roles": roles} if {
	u := user
	u.status == "active"
	bound_to(u.tenant)
	tenancy.tenant_active(u.tenant)
	x := target(u.tenant)
	tenancy.tenant_active(x)
	held := tenancy.tenant_roles(project, x)
	roles := {r | some r in tenancy.user_roles(subject, project, x); r in held}
	roles_ok(roles)
}

ok := {"tenant": requested, "roles": roles} if {
	trusted
	bound_to(requested)
	tenancy.tenant_active(requested)
	roles := tenancy.token_roles(input.token.claims.authorization, project, requested)
	roles_ok(roles)
}

# bound_to(t): the token's issuer is not bound to a tenant other than t.
bound_to(_) if input.token.tenant_binding == ""

bound_to(t) if input.token.tenant_binding == t

# target(home): the tenant the request names, else (when it names none,
# not when it names an invalid one) the home tenant.
target(_) := requested

target(home) := home if reading == {}

roles_ok(roles) if {
	count(required) == 0
	count(roles) > 0
}

roles_ok(roles) if count(required & roles) > 0

# The target tenant, for the reason chain: named by the request, else the
# user's home tenant.
tenant := requested

tenant := user.tenant if reading == {}

# Effective roles, for the reason chain.
effective := tenancy.effective_roles(subject, project, tenant) if user

effective := tenancy.token_roles(input.token.claims.authorization, project, tenant) if trusted

default effective := set()

# reason is the first failing step of SPEC §6, or "allowed".
reason := "missing_token" if {
	input.token.error == "missing"
} else := "invalid_token" if {
	not input.token.valid
} else := "invalid_token" if {
	binding := input.token.tenant_binding
	binding != ""
	user.tenant != binding
} else := "unknown_user" if {
	not user
	not trusted
} else := "user_inactive" if {
	user.status != "active"
} else := "tenant_inactive" if {
	not tenancy.tenant_active(user.tenant)
} else := "tenant_unknown" if {
	reading.invalid
} else := "tenant_unknown" if {
	trusted
	not requested
} else := "invalid_token" if {
	trusted
	binding := input.token.tenant_binding
	binding != ""
	requested != binding
} else := "tenant_unknown" if {
	not tenant_known
} else := "tenant_inactive" if {
	not tenancy.tenant_active(tenant)
} else := "project_unknown" if {
	not project_known
} else := "tenant_not_granted" if {
	not granted
} else := "role_required" if {
	count(required) > 0
	count(required & effective) == 0
} else := "no_role" if {
	count(required) == 0
	count(effective) == 0
} else := "allowed"

# Named conditions, so that an undefined tenant or project makes them false
# (a negated expression must not reference an undefined value).
tenant_known if data.tenancy.tenants[tenant]

project_known if data.tenancy.projects[project]

granted if tenancy.tenant_roles(project, tenant)

status := {
	"missing_token": 401,
	"invalid_token": 401,
	"unknown_user": 403,
	"user_inactive": 403,
	"tenant_inactive": 403,
	"tenant_unknown": 403,
	"project_unknown": 403,
	"tenant_not_granted": 403,
	"role_required": 403,
	"no_role": 403,
}

challenge := {
	"missing_token": {"www-authenticate": "Bearer"},
	"invalid_token": {"www-authenticate": "Bearer error=\"invalid_token\""},
	"unknown_user": {},
	"user_inactive": {},
	"tenant_inactive": {},
	"tenant_unknown": {},
	"project_unknown": {},
	"tenant_not_granted": {},
	"role_required": {},
	"no_role": {},
}

message := "a bearer token is required" if {
	reason == "missing_token"
} else := sprintf("the bearer token was rejected (%s)", [input.token.error]) if {
	reason == "invalid_token"
	input.token.error
} else := "the token's issuer is bound to another tenant" if {
	reason == "invalid_token"
} else := "the token names no subject" if {
	reason == "unknown_user"
	not subject
} else := sprintf("user %q is unknown", [subject]) if {
	reason == "unknown_user"
} else := sprintf("user %q is not active", [subject]) if {
	reason == "user_inactive"
} else := sprintf("tenant %q is not active", [user.tenant]) if {
	reason == "tenant_inactive"
	not tenancy.tenant_active(user.tenant)
} else := sprintf("tenant %q is not active", [tenant]) if {
	reason == "tenant_inactive"
} else := sprintf("the request names no valid tenant: %s", [reading.invalid]) if {
	reason == "tenant_unknown"
	reading.invalid
} else := sprintf("tenant %q is unknown", [tenant]) if {
	reason == "tenant_unknown"
} else := "the request names no tenant" if {
	reason == "tenant_unknown"
} else := sprintf("project %q is unknown", [project]) if {
	reason == "project_unknown"
} else := "the route names no project" if {
	reason == "project_unknown"
} else := sprintf("tenant %q has no access to project %q", [tenant, project]) if {
	reason == "tenant_not_granted"
} else := sprintf("one of the roles %v is required", [concat(", ", sort(required))]) if {
	reason == "role_required"
} else := sprintf("user %q has no role on project %q in tenant %q", [subject, project, tenant]) if {
	reason == "no_role"
} else := "access denied"
