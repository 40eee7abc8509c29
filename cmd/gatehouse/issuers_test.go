package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestIssuerListValidatedOnce: the `issuers:` list of every configuration
// that has one (serve, control, and serve's file read by eval) goes through
// token.ValidateIssuers: an issuer listed twice, or an invalid one, is a
// usage error naming it, whichever command reads the file. (eval checked
// each issuer but not duplicates, which surfaced later as a runtime error.)
func TestIssuerListValidatedOnce(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyCfg, _ := evalIssuer(t, "alice")
	pub := filepath.Join(filepath.Dir(keyCfg), "idp.pem")
	admin := writeTestFile(t, filepath.Join(dir, "admin.token"), "admin-secret\n")
	issuer := func(name, extra string) string {
		return "  - issuer: " + name + "\n    public_key_file: " + pub + "\n" + extra
	}
	lists := map[string]struct {
		issuers string
		want    string
	}{
		"listed twice":   {issuer("https://idp.example.com/", "") + issuer("https://idp.example.com/", ""), `"https://idp.example.com/": listed twice`},
		"hmac algorithm": {issuer("https://hs.example.com/", "    algorithms: [HS256]\n"), `"HS256" refused`},
	}
	for name, l := range lists {
		for _, cmd := range []string{"serve", "control", "eval"} {
			t.Run(name+"/"+cmd, func(t *testing.T) {
				t.Parallel()
				d := t.TempDir()
				var args []string
				switch cmd {
				case "serve":
					cfg := writeTestFile(t, filepath.Join(d, "serve.yaml"), "policies: {dir: "+shippedPolicies+"}\nissuers:\n"+l.issuers)
					args = []string{"serve", "--config", cfg, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"}
				case "control":
					cfg := writeTestFile(t, filepath.Join(d, "control.yaml"), "addr: 127.0.0.1:0\nadmin_token_file: "+admin+"\nissuers:\n"+l.issuers)
					args = []string{"control", "--config", cfg, "--data-dir", filepath.Join(d, "data")}
				case "eval":
					cfg := writeTestFile(t, filepath.Join(d, "serve.yaml"), "issuers:\n"+l.issuers)
					args = []string{"eval", "--policies", shippedPolicies, "--data", demoWorld, "--config", cfg, "--input", demoWorld}
				}
				var stdout, stderr bytes.Buffer
				code := run(t.Context(), args, &stdout, &stderr)
				if code != exitUsage {
					t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, stderr.String())
				}
				if !strings.Contains(stderr.String(), l.want) {
					t.Fatalf("stderr %q does not say %q", stderr.String(), l.want)
				}
			})
		}
	}
}
