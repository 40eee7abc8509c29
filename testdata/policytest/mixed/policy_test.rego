package mixed_test

import data.mixed

test_allow if mixed.allow with input as {"user": "bob"}

test_deny_prints if {
	print("checking alice")
	not mixed.allow with input as {"user": "alice"}
}

test_double_is_wrong if {
	x := 3
	mixed.double(x) == 7
}

test_conflict if {
	mixed.f(5) == 1
}

todo_test_later if false

test_cases[name] if {
	some name, tc in {"two": {"n": 2, "want": 4}, "three": {"n": 3, "want": 7}}
	mixed.double(tc.n) == tc.want
}
