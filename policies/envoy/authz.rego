# METADATA
# title: Gatehouse default ext_authz policy
# description: |
#   Multi-tenant authorization (SPEC §6). The route names its project
#   (context extension "project"), optionally the roles it needs ("roles",
#   any one allows) and where the target tenant comes from ("tenant_from":
#   path, header, host or token). The first failing step decides the reason.
#
#   Step 1 (the token) and the tenant the request names are read here; the
#   sidecar answers steps 2 to 6 from its tenancy data with one built-in,
#   gatehouse.tenancy.decide (see policies/capabilities.json). Rego tests
#   replace it with a plain-Rego reading over data.tenancy (testing.decide).
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

# One rule with an else: only the branch taken is evaluated (a rule of
# several bodies evaluates them all). An allowed request carries the
# identity headers; "allowed" needs a verified token and a subject (the
# built-in treats "" as none), so the token's subject is the subject.
allow := {
	"allowed": true,
	"headers": {
		"x-gatehouse-user": input.token.subject,
		"x-gatehouse-issuer": input.token.issuer,
		"x-gatehouse-tenant": answer.tenant,
		"x-gatehouse-roles": concat(",", sort(answer.roles)),
	},
	"dynamic_metadata": {"reason": "allowed", "user": input.token.subject, "issuer": input.token.issuer, "tenant": answer.tenant, "project": route.project},
	"reason": "allowed",
} if {
	reason == "allowed"
} else := {
	"allowed": false,
	"http_status": refusal[reason].status,
	"headers": refusal[reason].headers,
	"body": json.marshal({"error": message, "reason": reason}),
	"reason": reason,
	"dynamic_metadata": deny_metadata,
}

# deny_metadata: a deny's reason and, when the data names one, the tenant it
# is about (decision logs file the deny under it: its tenant admins see it
# and /v1/usage counts it). Only for a verified token whose subject got past
# step 2 and a tenant that exists: never the tenant of a tenant_unknown
# deny, which is whatever the client wrote.
deny_metadata := {"reason": reason, "user": subject, "issuer": input.token.issuer, "tenant": answer.tenant} if {
	input.token.valid
	reason == answer.reason
	reason != "tenant_unknown"
	is_string(answer.tenant)
	answer.tenant != ""
} else := {"reason": reason}

# reason is the first failing step of SPEC §6, or "allowed": the token
# here, then the sidecar's answer for the rest.
reason := "missing_token" if {
	input.token.error == "missing"
} else := "invalid_token" if {
	not input.token.valid
} else := answer.reason

# answer is SPEC §6 steps 2 to 6 for this request, from the tenancy data:
# {"reason", "tenant" (the tenant the reason is about), "roles" (effective)}.
# The built-in checks that one of the route's roles ("required": a comma
# list, a set or an array) is effective; without "required" it leaves that
# to the policy, which then decides from answer.roles itself.
#
# Only for a verified token (the reason stops at step 1 otherwise).
#
# It names each input value it reads (input.token.issuer, not input.token):
# the decision cache keys on exactly those, so two tokens of one subject
# share decisions.
answer := gatehouse.tenancy.decide({
	"subject": token_subject,
	"issuer": input.token.issuer,
	"trust_token_roles": trust_issuer,
	"tenant_binding": input.token.tenant_binding,
	"project": object.get(route, "project", ""),
	"tenant_reading": reading,
	"required": object.get(route, "roles", ""),
	"token_roles": token_roles,
}) if input.token.valid == true

# The per-tenant roles a token carries (its authorization claim, as
# Userfront issues it); only a trust_token_roles issuer's count (step 6).
default token_roles := {}

token_roles := input.token.claims.authorization

# Route settings (Envoy per-route context_extensions).
default route := {}

route := input.attributes.contextExtensions

project := route.project if route.project != ""

required := tenancy.route_roles(object.get(route, "roles", ""))

# The target tenant the request names (SPEC §6 step 3): {"tenant": X},
# {} for none (the home tenant), or {"invalid": why} (tenant_unknown).
reading := tenancy.tenant_reading(object.get(route, "tenant_from", "path"))

# The verified token's subject; undefined when empty: no rule below ever
# decides for an empty user (the built-in treats "" as no subject).
subject := s if {
	input.token.valid == true
	s := input.token.subject
	is_string(s)
	s != ""
}

default token_subject := ""

token_subject := subject

# The token's issuer carries per-tenant roles in its tokens: its subjects
# may be absent from the data (their roles come from the token), and it
# never acts as a data user that does not name it (SPEC §6 steps 2 and 6).
default trust_issuer := false

trust_issuer if input.token.trust_token_roles == true

# refusal: the status and headers of each deny reason.
refusal := {
	"missing_token": {"status": 401, "headers": {"content-type": "application/json", "www-authenticate": "Bearer"}},
	"invalid_token": {"status": 401, "headers": {"content-type": "application/json", "www-authenticate": "Bearer error=\"invalid_token\""}},
	"unknown_user": {"status": 403, "headers": {"content-type": "application/json"}},
	"user_inactive": {"status": 403, "headers": {"content-type": "application/json"}},
	"tenant_inactive": {"status": 403, "headers": {"content-type": "application/json"}},
	"tenant_unknown": {"status": 403, "headers": {"content-type": "application/json"}},
	"project_unknown": {"status": 403, "headers": {"content-type": "application/json"}},
	"tenant_not_granted": {"status": 403, "headers": {"content-type": "application/json"}},
	"role_required": {"status": 403, "headers": {"content-type": "application/json"}},
	"no_role": {"status": 403, "headers": {"content-type": "application/json"}},
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
} else := sprintf("tenant %q is not active", [answer.tenant]) if {
	reason == "tenant_inactive"
} else := sprintf("the request names no valid tenant: %s", [reading.invalid]) if {
	reason == "tenant_unknown"
	reading.invalid
} else := sprintf("tenant %q is unknown", [answer.tenant]) if {
	reason == "tenant_unknown"
} else := "the request names no tenant" if {
	reason == "tenant_unknown"
} else := sprintf("project %q is unknown", [project]) if {
	reason == "project_unknown"
} else := "the route names no project" if {
	reason == "project_unknown"
} else := sprintf("tenant %q has no access to project %q", [answer.tenant, project]) if {
	reason == "tenant_not_granted"
} else := sprintf("one of the roles %v is required", [concat(", ", sort(required))]) if {
	reason == "role_required"
} else := sprintf("user %q has no role on project %q in tenant %q", [subject, project, answer.tenant]) if {
	reason == "no_role"
} else := "access denied"
