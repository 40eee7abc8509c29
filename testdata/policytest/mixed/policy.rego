package mixed

allow if input.user == "bob"

double(x) := x * 2

# f conflicts for x > 1: calling it there is an evaluation error.
f(x) := 1 if x > 0

f(x) := 2 if x > 1
