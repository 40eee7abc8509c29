# METADATA
# title: AuthZEN Authorization API 1.0 certification fixture
# description: |
#   The required fixture of the OpenID AuthZEN certification scenario
#   (certification/authorization-api-1_0-scenario.md in
#   github.com/openid/authzen, section "Required Fixture"): subjects alice
#   and bob (role admin), records record-1 (active) and record-2 (archived),
#   actions read, write, delete (soft). Properties sent in a request are
#   what the policy evaluates; searches consider the fixture's entities with
#   their fixture properties.
package authzen

subjects := {"alice": {}, "bob": {"role": "admin"}}

records := {"record-1": {"status": "active"}, "record-2": {"status": "archived"}}

actions := ["read", "write", "delete"]

default allow := false

allow := permit(input.subject, input.action, input.resource)

# permit(subject, action, resource) is the fixture's policy.
default permit(_, _, _) := false

permit(s, a, r) if {
	known(s, r)
	a.name == "read"
}

permit(s, a, r) if {
	known(s, r)
	a.name == "write"
	s.id == "alice"
	object.get(r, ["properties", "status"], records[r.id].status) != "archived"
}

permit(s, a, r) if {
	known(s, r)
	a.name == "write"
	s.properties.role == "admin"
}

permit(s, a, r) if {
	known(s, r)
	a.name == "delete"
	a.properties.soft == true
}

known(s, r) if {
	s.type == "user"
	subjects[s.id]
	r.type == "record"
	records[r.id]
}

# Searches: the fixture's entities (with their properties) the policy permits.
search_subjects contains {"type": "user", "id": id} if {
	input.subject.type == "user"
	some id, props in subjects
	permit({"type": "user", "id": id, "properties": props}, input.action, input.resource)
}

search_resources contains {"type": "record", "id": id} if {
	input.resource.type == "record"
	some id, props in records
	permit(input.subject, input.action, {"type": "record", "id": id, "properties": props})
}

search_actions contains {"name": name} if {
	some name in actions
	permit(input.subject, {"name": name}, input.resource)
}
