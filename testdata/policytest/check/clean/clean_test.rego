package clean_test

import data.clean

test_allow if clean.allow with input as {"roles": ["admin"]} with data.lib.admins as ["admin"]
