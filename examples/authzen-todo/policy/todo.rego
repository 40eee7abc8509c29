# METADATA
# title: AuthZEN Todo interop scenario
# description: |
#   The OpenID AuthZEN "Todo" application (interop/authzen-todo-backend in
#   github.com/openid/authzen): five users of the Citadel and the Smiths,
#   with roles admin, evil_genius, editor and viewer. Users are known by
#   their identity (the subject id the scenario sends) or their e-mail;
#   data.json holds them (static data, loaded with the policy).
package authzen

default allow := false

user := data.todo.users[input.subject.id]

# Anyone known reads users and todos.
allow if {
	user
	input.action.name in {"can_read_user", "can_read_todos"}
}

# Admins and editors create todos.
allow if {
	input.action.name == "can_create_todo"
	some role in user.roles
	role in {"admin", "editor"}
}

# An evil genius updates any todo; an editor updates their own.
allow if {
	input.action.name == "can_update_todo"
	"evil_genius" in user.roles
}

allow if {
	input.action.name == "can_update_todo"
	own_todo
}

# An admin deletes any todo; an editor deletes their own.
allow if {
	input.action.name == "can_delete_todo"
	"admin" in user.roles
}

allow if {
	input.action.name == "can_delete_todo"
	own_todo
}

own_todo if {
	"editor" in user.roles
	input.resource.properties.ownerID == user.email
}
