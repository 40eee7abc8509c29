package replica_test

import (
	"github.com/golang-jwt/jwt/v5"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/replica"
)

var jwtRS256 = jwt.SigningMethodRS256

// benchBuiltins are the built-ins the benchmarks' engines get.
func benchBuiltins() []authz.Builtin { return replica.Builtins() }
