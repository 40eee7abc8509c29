package lib

# data.lib.limits comes from lib/data.json beside this file.
within(n) if n <= data.lib.limits.max

label(n) := "small" if within(n)

label(n) := "large" if not within(n)
