package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/keys"
	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
)

// build writes the world's data file and both scenarios; scenario writes
// the same requests again without the data; the cold scenario has many
// more distinct requests and tokens than the hot one.
func TestBuildWritesHotAndColdScenarios(t *testing.T) {
	dir := t.TempDir()
	if err := build([]string{"--size", "small", "--dir", dir, "--requests", "40", "--cold-requests", "600"}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "control", "control.db")); err != nil || fi.Size() == 0 {
		t.Fatalf("control.db: %v", err)
	}
	signing, _, err := keys.WriteRSA(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := keys.LoadRSA(signing)
	if err != nil {
		t.Fatal(err)
	}
	load := func(path string) (*loadgen.Scenario, *loadgen.Plan) {
		t.Helper()
		sc, err := loadgen.LoadScenario(path)
		if err != nil {
			t.Fatal(err)
		}
		p, err := loadgen.NewPlan(sc, loadgen.PlanOptions{SigningKey: key})
		if err != nil {
			t.Fatal(err)
		}
		return sc, p
	}
	hot, hp := load(filepath.Join(dir, hotScenario))
	cold, cp := load(filepath.Join(dir, coldScenario))
	if len(hot.Requests) != 40 || len(cold.Requests) != 600 {
		t.Fatalf("%d hot and %d cold requests, want 40 and 600", len(hot.Requests), len(cold.Requests))
	}
	// The small world has 100 users: the cold scenario reaches most.
	if cp.DistinctRequests < 590 || cp.DistinctTokens < 90 || hp.DistinctTokens > 40 || cp.MintedTokens != cp.DistinctTokens {
		t.Errorf("hot: %d requests %d tokens; cold: %d requests %d tokens (%d signed)",
			hp.DistinctRequests, hp.DistinctTokens, cp.DistinctRequests, cp.DistinctTokens, cp.MintedTokens)
	}
	allow := 0
	for _, r := range cold.Requests {
		if r.Expect == "allow" {
			allow++
		}
	}
	if allow < 450 || allow > 510 {
		t.Errorf("%d of 600 cold requests allowed, want ~80%%", allow)
	}

	again := filepath.Join(dir, "again.json")
	if err := scenario([]string{"--size", "small", "--kind", "cold", "--requests", "600", "--out", again}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(again)
	b, _ := os.ReadFile(filepath.Join(dir, coldScenario))
	if string(a) != string(b) {
		t.Error("scenario --kind cold differs from build's cold scenario")
	}
	if err := scenario([]string{"--size", "huge", "--out", again}); err == nil {
		t.Error("scenario --size huge: nil error")
	}
	if err := scenario([]string{"--size", "small", "--kind", "warm", "--out", again}); err == nil {
		t.Error("scenario --kind warm: nil error")
	}
}
