package bundle_test

import (
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// TestPolicyConfigValidate names every bad key.
func TestPolicyConfigValidate(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		cfg  bundle.PolicyConfig
		want string
	}{
		"ok":            {bundle.PolicyConfig{Dir: "p"}, ""},
		"nothing":       {bundle.PolicyConfig{}, "policies: set dir or bundle.url"},
		"both":          {bundle.PolicyConfig{Dir: "p", Bundle: bundle.BundleSourceConfig{URL: "http://x", PublicKeyFile: "k"}}, "not both"},
		"unsigned":      {bundle.PolicyConfig{Bundle: bundle.BundleSourceConfig{URL: "http://x"}}, "public_key_file"},
		"bad decision":  {bundle.PolicyConfig{Dir: "p", Decision: "a//b"}, "policies.decision"},
		"bad version":   {bundle.PolicyConfig{Dir: "p", RegoVersion: "v9"}, "policies.rego_version"},
		"negative poll": {bundle.PolicyConfig{Bundle: bundle.BundleSourceConfig{URL: "http://x", PublicKeyFile: "k", Poll: -1}}, "policies.bundle.poll"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tc.cfg.SetDefaults()
			if tc.cfg.Bundle.Poll == 10e9 && name == "negative poll" {
				t.Fatal("SetDefaults overwrote a negative poll")
			}
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}
