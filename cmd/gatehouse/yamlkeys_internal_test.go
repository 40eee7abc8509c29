package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigErrorsNameKeysNotTypes: whatever is wrong in a configuration
// file, in whichever section (nested, in a list, inlined), the message
// names the key by its path and says what the value must be, on one line,
// and never names a Go type (the messages used to be rewritten by regexes
// keyed by Go type names, and a type error named only the type).
func TestConfigErrorsNameKeysNotTypes(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		cmd   string
		yaml  string
		wants []string
	}{
		"bool":                 {"serve", "policies: {dir: policies}\nlisten: {pprof: maybe}\n", []string{"listen.pprof", `"maybe"`, "true or false", "line 2"}},
		"duration":             {"serve", "policies: {dir: policies}\ndata: {max_staleness: soon}\n", []string{"data.max_staleness", `"soon"`, "duration"}},
		"number":               {"serve", "policies: {dir: policies}\ncache: {decisions: many}\n", []string{"cache.decisions", "whole number"}},
		"nested tls key":       {"serve", "policies: {dir: policies}\nlisten: {tls: {cert: x}}\n", []string{`unknown key "cert" in listen.tls`}},
		"bundle key":           {"serve", "policies: {bundle: {uri: x}}\n", []string{`unknown key "uri" in policies.bundle`}},
		"issuer key":           {"serve", "policies: {dir: policies}\nissuers:\n- issuer: a\n  jwks: x\n", []string{`unknown key "jwks" in issuers[0]`, "line 4"}},
		"issuer list":          {"serve", "policies: {dir: policies}\nissuers: {issuer: a}\n", []string{"issuers", "a list"}},
		"two problems at once": {"serve", "policies: {dir: policies}\nbogus: 1\nlimits: {max_inflight: x}\n", []string{`unknown key "bogus" in the top level`, "limits.max_inflight"}},
		"engine field mapped":  {"serve", "policies: {dir: policies}\ndata: {min_revision_wait: -1s, max_staleness: -2s}\n", []string{"data.min_revision_wait: -1s is negative", "data.max_staleness: -2s is negative"}},
		"control inline key":   {"control", "addr: 127.0.0.1:0\nhistory: lots\n", []string{"history", "whole number"}},
		"control issuer key":   {"control", "issuers:\n- issuer: a\n  audience: x\n", []string{`unknown key "audience" in issuers[0]`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := writeConfig(t, tc.yaml)
			args := []string{"serve", "--config", cfg, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"}
			if tc.cmd == "control" {
				args = []string{"control", "--config", cfg, "--data-dir", filepath.Join(t.TempDir(), "data")}
			}
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), args, &stdout, &stderr); code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, stderr.String())
			}
			msg := strings.TrimSuffix(stderr.String(), "\n")
			for _, w := range tc.wants {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q does not say %q", msg, w)
				}
			}
			for _, typeName := range []string{"main.", "authz.", "bundle.", "token.", "netx.", "control.", "time.Duration", "!!", "MinRevisionWait", "MaxStaleness"} {
				if strings.Contains(msg, typeName) {
					t.Errorf("message %q names a Go or YAML type (%q)", msg, typeName)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("message spans several lines: %q", msg)
			}
		})
	}
}
