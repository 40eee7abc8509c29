package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"github.com/gatehouse-dev/gatehouse/internal/loadgen"
)

// The peer's policy (bench/peer/policy.rego) over the world as opadata
// exports it decides every request of a cold scenario as the scenario
// expects (what the shipped policy decides): the peer rows measure the
// same decisions. Tokens are HS256, as loadgen --hs256-secret signs them;
// tokens signed with another secret are denied.
func TestPeerPolicyAgreesWithScenario(t *testing.T) {
	dir := t.TempDir()
	dataFile := filepath.Join(dir, "tenancy", "data.json")
	if err := opaData([]string{"--size", "small", "--out", dataFile}); err != nil {
		t.Fatal(err)
	}
	scFile := filepath.Join(dir, "cold.json")
	if err := scenario([]string{"--size", "small", "--kind", "cold", "--requests", "400", "--out", scFile}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dataFile)
	if err != nil {
		t.Fatal(err)
	}
	var tenancyData map[string]any
	if err := json.Unmarshal(b, &tenancyData); err != nil {
		t.Fatal(err)
	}
	secret := strings.Repeat("k", 40)
	store := inmem.NewFromObject(map[string]any{"tenancy": tenancyData, "bench": map[string]any{"hs256_secret": secret}})
	policy, err := os.ReadFile(filepath.Join("..", "..", "bench", "peer", "policy.rego"))
	if err != nil {
		t.Fatal(err)
	}
	pq, err := rego.New(rego.Query("data.envoy.authz.allow"), rego.Module("policy.rego", string(policy)), rego.Store(store)).PrepareForEval(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := loadgen.LoadScenario(scFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{secret, strings.Repeat("x", 40)} {
		p, err := loadgen.NewPlan(sc, loadgen.PlanOptions{HMACSecret: []byte(key)})
		if err != nil {
			t.Fatal(err)
		}
		allowed := 0
		for i, req := range p.Requests {
			h := req.GetAttributes().GetRequest().GetHttp()
			path := strings.Split(strings.TrimPrefix(h.GetPath(), "/"), "/")
			input := map[string]any{
				"attributes": map[string]any{
					"request":           map[string]any{"http": map[string]any{"headers": h.GetHeaders(), "path": h.GetPath()}},
					"contextExtensions": req.GetAttributes().GetContextExtensions(),
				},
				"parsed_path": path,
			}
			rs, err := pq.Eval(t.Context(), rego.EvalInput(input))
			if err != nil || len(rs) != 1 {
				t.Fatalf("%s: %v %v", p.Names[i], rs, err)
			}
			got := rs[0].Expressions[0].Value.(map[string]any)["allowed"] == true
			want := p.Expect[i] == loadgen.Allow && key == secret
			if got != want {
				t.Fatalf("secret %q…: %s: allowed=%v, want %v", key[:3], p.Names[i], got, want)
			}
			if got {
				allowed++
			}
		}
		if key == secret && allowed < 300 {
			t.Errorf("only %d of 400 allowed", allowed)
		}
	}
}
