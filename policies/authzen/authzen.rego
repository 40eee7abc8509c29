# METADATA
# title: Gatehouse AuthZEN policy for the tenancy model
# description: |
#   Answers the OpenID AuthZEN Authorization API 1.0 (SPEC §10) for the
#   tenancy model: subject {type: "user", id: U}, resource {type:
#   "project", id: P, properties: {tenant: X}} or {type: "tenant", id: X}
#   (optionally with properties.project P), action {name: ROLE} or
#   {name: "access"} (any role). An evaluation is SPEC §6 steps 2 to 6,
#   answered by the same built-in as a Check (gatehouse.tenancy.decide);
#   searches list candidates from keyed indexes and keep exactly those the
#   evaluation allows.
package authzen

import data.gatehouse.tenancy

# The decision for input.subject, input.resource, input.action:
# {"decision": bool, "context": {"reason", "tenant", "roles"}}.
default allow := {"decision": false, "context": {"reason": "unsupported"}}

allow := verdict(input.subject, input.resource, input.action.name)

# The action that asks for no role in particular: any effective role allows.
any_role := "access"

# verdict(subject, resource, action) is the evaluation of one question.
verdict(s, res, act) := v if {
	s.type == "user"
	is_string(s.id)
	is_string(act)
	v := resource_verdict(s.id, issuer_of(s), res, act)
}

# issuer_of(subject): the token issuer the application authenticated the
# user with (subject.properties.issuer), "" when not given. A user bound to
# an issuer (users[u].issuer) is answered only for that issuer, as a Check
# with a token of another issuer would be (SPEC §6 step 2).
default issuer_of(_) := ""

issuer_of(s) := s.properties.issuer if is_string(s.properties.issuer)

resource_verdict(u, iss, res, act) := project_verdict(u, iss, res.id, tenant_reading(res), act) if {
	res.type == "project"
	is_string(res.id)
} else := project_verdict(u, iss, res.properties.project, id_reading(res.id), act) if {
	res.type == "tenant"
	is_string(res.properties.project)
} else := tenant_verdict(u, iss, res.id, act) if {
	res.type == "tenant"
	is_string(res.id)
	not has_property(res, "project")
}

has_property(e, name) if name in object.keys(object.get(e, "properties", {}))

# tenant_reading(resource): the tenant a project resource names
# (properties.tenant), {} when none (the user's home tenant), invalid when
# it is not a tenant id.
tenant_reading(res) := {} if {
	not has_property(res, "tenant")
} else := id_reading(res.properties.tenant)

id_reading(x) := {"tenant": x} if {
	tenancy.valid_id(x)
} else := {"invalid": "not a tenant id"}

# question(u, iss, p, reading, act) is the built-in's question: the same a
# Check asks for a route of project p needing role act.
question(u, iss, p, reading, act) := {
	"subject": u,
	"issuer": iss,
	"trust_token_roles": false,
	"tenant_binding": "",
	"project": p,
	"tenant_reading": reading,
	"required": required(act),
}

default required(_) := ""

required(act) := [act] if act != any_role

project_verdict(u, iss, p, reading, act) := answer_verdict(tenancy_answer, act) if {
	is_string(p)
	tenancy_answer := gatehouse.tenancy.decide(question(u, iss, p, reading, act))
}

answer_verdict(a, act) := {"decision": true, "context": allowed_context(a)} if {
	a.reason == "allowed"
	act != any_role
} else := {"decision": true, "context": allowed_context(a)} if {
	a.reason == "allowed"
	count(a.roles) > 0
} else := {"decision": false, "context": {"reason": "no_role"}} if {
	a.reason == "allowed"
} else := {"decision": false, "context": {"reason": a.reason}}

allowed_context(a) := {"reason": "allowed", "tenant": a.tenant, "roles": sort(a.roles)}

# tenant_verdict: may u act in tenant x at all? Its members may ("access"),
# and anyone allowed the action on some project inside x.
tenant_verdict(u, iss, x, act) := {"decision": true, "context": {"reason": "allowed", "tenant": x}} if {
	act == any_role
	steps_2_3(u, iss, x).reason == "project_unknown" # the user acts, is active, x is active
	tenancy.user(u, iss, false).tenant == x
} else := {"decision": true, "context": {"reason": "allowed", "tenant": x}} if {
	some p in projects_in(u, x)
	project_verdict(u, iss, p, {"tenant": x}, act).decision
} else := {"decision": false, "context": {"reason": steps_2_3(u, iss, x).reason}} if {
	steps_2_3(u, iss, x).reason != "project_unknown"
} else := {"decision": false, "context": {"reason": "no_role"}}

steps_2_3(u, iss, x) := gatehouse.tenancy.decide(question(u, iss, "", id_reading(x), any_role))

# projects_in(u, x): the projects on which u holds grants inside x (a keyed
# read of index.user_roles[u]).
projects_in(u, x) := {p | some p, by_tenant in data.tenancy.index.user_roles[u]; by_tenant[x]}

# --- searches: candidates from keyed indexes, kept when the evaluation allows ---

# Subject search: who may do input.action on input.resource?
search_subjects contains {"type": "user", "id": u} if {
	input.subject.type == "user"
	some u in subject_candidates(input.resource)
	s := object.union(input.subject, {"id": u})
	verdict(s, input.resource, input.action.name).decision
}

subject_candidates(res) := gatehouse.tenancy.project_users(res.id, res.properties.tenant) if {
	res.type == "project"
	is_string(res.properties.tenant)
} # no tenant: each user's home tenant, one of those holding the project

else := {u |
	res.type == "project"
	some x, _ in data.tenancy.index.tenant_roles[res.id]
	some u in gatehouse.tenancy.project_users(res.id, x)
} if {
	res.type == "project"
	not has_property(res, "tenant")
} else := gatehouse.tenancy.project_users(res.properties.project, res.id) if {
	res.type == "tenant"
	is_string(res.properties.project)
} else := {u |
	res.type == "tenant"
	some u in array.concat(members(res.id), [v |
		some p in tenant_projects(res.id)
		some v in gatehouse.tenancy.project_users(p, res.id)
	])
} if {
	res.type == "tenant"
	not has_property(res, "project")
}

# members(x): the users whose home tenant is x.
default members(_) := []

members(x) := data.tenancy.index.tenant_users[x]

# tenant_projects(x): the projects x owns or holds a grant on.
tenant_projects(x) := {p | some p in data.tenancy.index.tenant_projects[x]} | {p | some p, _ in data.tenancy.index.tenant_grants[x]}

# Resource search: on which resources may input.subject do input.action?
search_resources contains {"type": "tenant", "id": x} if {
	input.resource.type == "tenant"
	p := input.resource.properties.project
	some x in gatehouse.tenancy.user_tenants(input.subject.id, p)
	verdict(input.subject, {"type": "tenant", "id": x, "properties": {"project": p}}, input.action.name).decision
}

search_resources contains {"type": "tenant", "id": x} if {
	input.resource.type == "tenant"
	not has_property(input.resource, "project")
	some x in tenant_candidates(input.subject.id)
	verdict(input.subject, {"type": "tenant", "id": x}, input.action.name).decision
}

search_resources contains {"type": "project", "id": p, "properties": {"tenant": x}} if {
	input.resource.type == "project"
	some p, by_tenant in data.tenancy.index.user_roles[input.subject.id]
	some x, _ in by_tenant
	object.get(input.resource, ["properties", "tenant"], x) == x
	verdict(input.subject, {"type": "project", "id": p, "properties": {"tenant": x}}, input.action.name).decision
}

tenant_candidates(u) := {x | some _, by_tenant in data.tenancy.index.user_roles[u]; some x, _ in by_tenant} | {x | x := data.tenancy.users[u].tenant}

# Action search: what may input.subject do on input.resource?
search_actions contains {"name": act} if {
	some act in action_candidates(input.subject, input.resource)
	verdict(input.subject, input.resource, act).decision
}

action_candidates(s, res) := {act | some act in verdict(s, res, any_role).context.roles} | {any_role} if {
	res.type == "project"
} else := {act | some act in verdict(s, res, any_role).context.roles} | {any_role} if {
	res.type == "tenant"
	has_property(res, "project")
} else := {act |
	some p in projects_in(s.id, res.id)
	some act in project_verdict(s.id, issuer_of(s), p, {"tenant": res.id}, any_role).context.roles
} | {any_role}
