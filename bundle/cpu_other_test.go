//go:build !unix

package bundle_test

import "time"

func processCPU() time.Duration { return 0 }
