//go:build !unix

package replica_test

import "time"

func processCPU() time.Duration { return 0 }
