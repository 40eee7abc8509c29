package authzen_test

import data.authzen
import data.gatehouse.testing

# ACME owns timekeeping; Beta holds a grant (accountant, developer); Alice
# (Alpha) is Beta's external accountant, Bob (Beta) a developer, Dave
# (Beta) is suspended, Yara names her own issuer.
w := testing.world({
	"tenants": {
		"acme": {"id": "acme", "parent": null, "status": "active"},
		"alpha": {"id": "alpha", "parent": "acme", "status": "active"},
		"beta": {"id": "beta", "parent": "acme", "status": "active"},
	},
	"users": {
		"alice": {"id": "alice", "tenant": "alpha"},
		"bob": {"id": "bob", "tenant": "beta"},
		"dave": {"id": "dave", "tenant": "beta", "status": "suspended"},
		"yara": {"id": "yara", "tenant": "beta", "issuer": "https://own.example/"},
	},
	"projects": {"tk": {"id": "tk", "owner": "acme", "roles": ["accountant", "admin", "developer"]}},
	"project_grants": {"tk-beta": {"id": "tk-beta", "project": "tk", "tenant": "beta", "roles": ["accountant", "developer"], "status": "active"}},
	"user_grants": {
		"a": {"id": "a", "user": "alice", "project": "tk", "tenant": "beta", "roles": ["accountant"]},
		"b": {"id": "b", "user": "bob", "project": "tk", "tenant": "beta", "roles": ["developer"]},
		"d": {"id": "d", "user": "dave", "project": "tk", "tenant": "beta", "roles": ["developer"]},
		"y": {"id": "y", "user": "yara", "project": "tk", "tenant": "beta", "roles": ["developer"]},
	},
})

ask(req) := d if {
	d := authzen.allow with data.tenancy as w with input as req
		with gatehouse.tenancy.decide as testing.decide
		with gatehouse.tenancy.user as testing.user
}

search(rule, req) := r if {
	rule == "subjects"
	r := authzen.search_subjects with data.tenancy as w with input as req
		with gatehouse.tenancy.decide as testing.decide
		with gatehouse.tenancy.user as testing.user
		with gatehouse.tenancy.project_users as testing.project_users
}

search(rule, req) := r if {
	rule == "resources"
	r := authzen.search_resources with data.tenancy as w with input as req
		with gatehouse.tenancy.decide as testing.decide
		with gatehouse.tenancy.user as testing.user
		with gatehouse.tenancy.user_tenants as testing.user_tenants
}

search(rule, req) := r if {
	rule == "actions"
	r := authzen.search_actions with data.tenancy as w with input as req
		with gatehouse.tenancy.decide as testing.decide
		with gatehouse.tenancy.user as testing.user
}

user(id) := {"type": "user", "id": id}

tk_in(x) := {"type": "project", "id": "tk", "properties": {"tenant": x}}

test_external_accountant if {
	ask({"subject": user("alice"), "action": {"name": "accountant"}, "resource": tk_in("beta")}) == {
		"decision": true,
		"context": {"reason": "allowed", "tenant": "beta", "roles": ["accountant"]},
	}
}

test_role_required if {
	ask({"subject": user("bob"), "action": {"name": "accountant"}, "resource": tk_in("beta")}).context.reason == "role_required"
}

test_any_role if {
	ask({"subject": user("bob"), "action": {"name": "access"}, "resource": tk_in("beta")}).decision
}

test_home_tenant_by_default if {
	ask({"subject": user("bob"), "action": {"name": "developer"}, "resource": {"type": "project", "id": "tk"}}).decision
	not ask({"subject": user("alice"), "action": {"name": "accountant"}, "resource": {"type": "project", "id": "tk"}}).decision
}

test_denies if {
	ask({"subject": user("dave"), "action": {"name": "access"}, "resource": tk_in("beta")}).context.reason == "user_inactive"
	ask({"subject": user("ghost"), "action": {"name": "access"}, "resource": tk_in("beta")}).context.reason == "unknown_user"
	ask({"subject": user("bob"), "action": {"name": "access"}, "resource": tk_in("../beta")}).context.reason == "tenant_unknown"
	ask({"subject": user("bob"), "action": {"name": "access"}, "resource": tk_in("alpha")}).context.reason == "tenant_not_granted"
	ask({"subject": {"type": "robot", "id": "bob"}, "action": {"name": "access"}, "resource": tk_in("beta")}).decision == false
}

test_issuer_bound_user if {
	ask({"subject": user("yara"), "action": {"name": "developer"}, "resource": tk_in("beta")}).context.reason == "unknown_user"
	ask({
		"subject": {"type": "user", "id": "yara", "properties": {"issuer": "https://own.example/"}},
		"action": {"name": "developer"}, "resource": tk_in("beta"),
	}).decision
}

test_tenant_resource if {
	ask({"subject": user("alice"), "action": {"name": "access"}, "resource": {"type": "tenant", "id": "alpha"}}).decision # her home
	ask({"subject": user("alice"), "action": {"name": "accountant"}, "resource": {"type": "tenant", "id": "beta"}}).decision
	not ask({"subject": user("alice"), "action": {"name": "developer"}, "resource": {"type": "tenant", "id": "beta"}}).decision
	ask({"subject": user("alice"), "action": {"name": "accountant"}, "resource": {"type": "tenant", "id": "beta", "properties": {"project": "tk"}}}).decision
}

test_who_holds_developer_in_beta if {
	search("subjects", {"subject": {"type": "user"}, "action": {"name": "developer"}, "resource": tk_in("beta")}) == {{"type": "user", "id": "bob"}}
}

test_where_may_alice_use_tk if {
	search("resources", {"subject": user("alice"), "action": {"name": "access"}, "resource": {"type": "tenant", "properties": {"project": "tk"}}}) == {{"type": "tenant", "id": "beta"}}
}

test_what_may_bob_do if {
	search("actions", {"subject": user("bob"), "resource": tk_in("beta")}) == {{"name": "access"}, {"name": "developer"}}
	search("actions", {"subject": user("dave"), "resource": tk_in("beta")}) == set()
}
