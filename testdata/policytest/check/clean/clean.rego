package clean

import data.lib

allow if {
	some role in input.roles
	role in lib.admins
}
