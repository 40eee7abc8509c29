package lib_test

import data.lib

test_within if lib.within(3)

test_not_within if not lib.within(4)

test_label_small if lib.label(1) == "small"
