package replica_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/worldgen"
)

func BenchmarkStageInput(b *testing.B) {
	st, w := buildWorld(b, "small", worldgen.Small)
	_, mint := benchEngine(b, st)
	r := w.Requests(1, 100, 1)[0]
	cr := r.CheckRequest(mint(r.Subject))
	b.ReportAllocs()
	for b.Loop() {
		_, _ = envoy.Input(cr)
	}
}

func BenchmarkStageTrivialPolicy(b *testing.B) {
	st, w := buildWorld(b, "small", worldgen.Small)
	e, mint := benchEngine(b, st)
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package envoy.authz\nallow := true\n"), 0o600)
	src, _ := authz.LoadDir(dir, 0)
	ps, err := authz.Compile(src, authz.DefaultDecision)
	if err != nil {
		b.Fatal(err)
	}
	e.SetPolicy(ps)
	r := w.Requests(1, 100, 1)[0]
	cr := r.CheckRequest(mint(r.Subject))
	in, _ := envoy.Input(cr)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = e.Decide(ctx, &authz.Request{Input: in, Authorization: cr.Attributes.Request.Http.Headers["authorization"]})
	}
}

func BenchmarkStageShippedPolicy(b *testing.B) {
	st, w := buildWorld(b, "small", worldgen.Small)
	e, mint := benchEngine(b, st)
	r := w.Requests(1, 100, 1)[0]
	cr := r.CheckRequest(mint(r.Subject))
	in, _ := envoy.Input(cr)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = e.Decide(ctx, &authz.Request{Input: in, Authorization: cr.Attributes.Request.Http.Headers["authorization"]})
	}
}
