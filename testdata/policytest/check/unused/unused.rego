package unused

import data.lib

allow if {
	x := input.user
	input.admin == true
}
