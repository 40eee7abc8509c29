package slow_test

# test_slow takes far longer than any --timeout the tests give it.
test_slow if {
	count([x | some x in numbers.range(1, 100000000)]) > 0
}

test_fast if true
