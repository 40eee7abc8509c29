package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// writeConfig writes a serve configuration file (policies.dir is set, so
// that only the value under test is wrong) and returns its path.
func writeConfig(tb testing.TB, yaml string) string {
	tb.Helper()
	dir := tb.TempDir()
	testutil.WriteFile(tb, filepath.Join(dir, "policies", "policy.rego"), "package envoy.authz\nallow := true\n")
	path := filepath.Join(dir, "gatehouse.yaml")
	testutil.WriteFile(tb, path, yaml)
	return path
}

// TestServeConfigErrors: a bad configuration exits 2 with one line naming
// the bad key and value, before anything listens.
func TestServeConfigErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		yaml  string
		args  []string
		wants []string
		// multiline marks a known defect: yaml.v3's unmarshal errors span
		// two lines (cmd/gatehouse/config.go decodeYAMLFile passes them on).
		multiline bool
	}{
		"unknown key": {
			yaml:  "policies: {dir: policies}\nlisten:\n  grpc: 127.0.0.1:0\n  bogus_key: 1\n",
			wants: []string{"bogus_key", "line 4"},
		},
		"bad address": {
			yaml:  "policies: {dir: policies}\nlisten: {grpc: \"localhost\"}\n",
			wants: []string{"listen.grpc", `"localhost"`},
		},
		"authzen without PEP authentication": {
			yaml:  "policies: {dir: policies}\nlisten: {authzen: 127.0.0.1:9193}\n",
			wants: []string{"listen.authzen", "authzen.token_file"},
		},
		"bad authzen address": {
			yaml:  "policies: {dir: policies}\nlisten: {authzen: \"9193\"}\nauthzen: {token_file: t}\n",
			wants: []string{"listen.authzen", `"9193"`},
		},
		"bad authzen decision": {
			yaml:  "policies: {dir: policies, authzen_decision: \"a//b\"}\nlisten: {authzen: 127.0.0.1:0}\nauthzen: {token_file: t}\n",
			wants: []string{"policies.authzen_decision"},
		},
		"unknown authzen key": {
			yaml:  "policies: {dir: policies}\nauthzen: {token: x}\n",
			wants: []string{`unknown key "token" in authzen`},
		},
		"bad ops address": {
			yaml:  "policies: {dir: policies}\nlisten: {ops: \"unix://\"}\n",
			wants: []string{"listen.ops"},
		},
		"HS256 refused": {
			yaml:  "policies: {dir: policies}\nissuers:\n- issuer: https://idp.example.com/\n  public_key_file: k.pem\n  algorithms: [HS256]\n",
			wants: []string{"HS256", "https://idp.example.com/"},
		},
		"alg none refused": {
			yaml:  "policies: {dir: policies}\nissuers:\n- issuer: https://idp.example.com/\n  public_key_file: k.pem\n  algorithms: [none]\n",
			wants: []string{`"none"`},
		},
		"bad log level": {
			yaml:  "policies: {dir: policies}\nlog: {level: loud}\n",
			wants: []string{"log.level", `"loud"`},
		},
		"bad log level flag": {
			yaml:  "policies: {dir: policies}\n",
			args:  []string{"--log-level", "verbose"},
			wants: []string{"log.level", `"verbose"`},
		},
		"negative staleness": {
			yaml:  "policies: {dir: policies}\ndata: {max_staleness: -1s}\n",
			wants: []string{"data.max_staleness"},
		},
		"bad control url": {
			yaml:  "policies: {dir: policies}\ndata: {control_url: \"ftp://x\"}\n",
			wants: []string{"data.control_url", "ftp://x"},
		},
		"bad control url in a list": {
			yaml:  "policies: {dir: policies}\ndata: {control_url: [\"http://a:1\", \"b:2\"]}\n",
			wants: []string{"data.control_url", `"b:2"`},
		},
		"bad control url in a comma list": {
			yaml:  "policies: {dir: policies}\ndata: {control_url: \"http://a:1, https://\"}\n",
			wants: []string{"data.control_url", `"https://"`},
		},
		"control url listed twice": {
			yaml:  "policies: {dir: policies}\ndata: {control_url: \"http://a:1,http://a:1/\"}\n",
			wants: []string{"data.control_url", "twice"},
		},
		"control url list of commas": {
			yaml:  "policies: {dir: policies}\ndata: {control_url: \" , ,\"}\n",
			wants: []string{"data.control_url", "no URL"},
		},
		"control url list entry with a comma": {
			yaml:  "policies: {dir: policies}\ndata: {control_url: [\"http://a:1,http://b:2\"]}\n",
			wants: []string{"one URL per list entry"},
		},
		"control url flag": {
			yaml:  "policies: {dir: policies}\n",
			args:  []string{"--control-url", "http://a:1,ftp://b"},
			wants: []string{"data.control_url", `"ftp://b"`},
		},
		"bad decision": {
			yaml:  "policies: {dir: policies, decision: \"a//b\"}\n",
			wants: []string{"policies.decision"},
		},
		"negative max_inflight": {
			yaml:  "policies: {dir: policies}\nlimits: {max_inflight: -1}\n",
			wants: []string{"limits.max_inflight", "-1"},
		},
		"negative max_request_bytes": {
			yaml:  "policies: {dir: policies}\nlimits: {max_request_bytes: -5}\n",
			wants: []string{"limits.max_request_bytes", "-5"},
		},
		"in-flight bytes below one request": {
			yaml:  "policies: {dir: policies}\nlimits: {max_request_bytes: 2048, max_inflight_bytes: 1024}\n",
			wants: []string{"limits.max_inflight_bytes", "1024", "2048"},
		},
		"memory_limit_mb below -1": {
			yaml:  "policies: {dir: policies}\nlimits: {memory_limit_mb: -2}\n",
			wants: []string{"limits.memory_limit_mb", "-2"},
		},
		"unknown limits key": {
			yaml:  "policies: {dir: policies}\nlimits: {max_requests: 5}\n",
			wants: []string{`"max_requests"`, "limits"},
		},
		"unknown cache key": {
			yaml:  "policies: {dir: policies}\ncache: {decision_mb: 5}\n",
			wants: []string{`"decision_mb"`, "cache"},
		},
		"duration not a duration": {
			yaml:  "policies: {dir: policies}\ndata: {max_staleness: soon}\n",
			wants: []string{"soon"},
		},
		"decision logs without a sink": {
			yaml:  "policies: {dir: policies}\ndecision_logs: {sample: {deny: 1}}\n",
			wants: []string{"decision_logs", "no sink"},
		},
		"decision log file without path": {
			yaml:  "policies: {dir: policies}\ndecision_logs: {file: {max_size_mb: 5}}\n",
			wants: []string{"decision_logs.file.path"},
		},
		"decision log service url": {
			yaml:  "policies: {dir: policies}\ndecision_logs: {service: {url: \"ftp://x\"}}\n",
			wants: []string{"decision_logs.service.url", "ftp://x"},
		},
		"decision log sample above 1": {
			yaml:  "policies: {dir: policies}\ndecision_logs: {console: true, sample: {allow: 2}}\n",
			wants: []string{"decision_logs.sample.allow", "2"},
		},
		"unknown decision_logs key": {
			yaml:  "policies: {dir: policies}\ndecision_logs: {console: true, sink: x}\n",
			wants: []string{`"sink"`, "decision_logs"},
		},
		"unknown reporting key": {
			yaml:  "policies: {dir: policies}\ndecision_logs: {service: {url: \"http://x\", reporting: {upload_size: 1}}}\n",
			wants: []string{`"upload_size"`, "decision_logs.service.reporting"},
		},
		"tracing protocol": {
			yaml:  "policies: {dir: policies}\ntracing: {protocol: zipkin}\n",
			wants: []string{"tracing.protocol", "zipkin"},
		},
		"tracing address": {
			yaml:  "policies: {dir: policies}\ntracing: {address: collector}\n",
			wants: []string{"tracing.address", "collector"},
		},
		"tracing sample percentage": {
			yaml:  "policies: {dir: policies}\ntracing: {sample_percentage: 101}\n",
			wants: []string{"tracing.sample_percentage", "101"},
		},
		"negative status interval": {
			yaml:  "policies: {dir: policies}\ndata: {status_interval: -5s}\n",
			wants: []string{"data.status_interval", "-5s"},
		},
		"shadow without a source": {
			yaml:  "policies: {dir: policies, shadow: {decision: envoy/authz/allow}}\n",
			wants: []string{"policies.shadow", "set dir or bundle.url"},
		},
		"shadow of a shadow": {
			yaml:  "policies: {dir: policies, shadow: {dir: policies, shadow: {dir: policies}}}\n",
			wants: []string{"policies.shadow.shadow"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := writeConfig(t, tc.yaml)
			var stdout, stderr bytes.Buffer
			args := append([]string{"serve", "--config", cfg, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0"}, tc.args...)
			if name == "bad address" || name == "bad ops address" {
				args = []string{"serve", "--config", cfg}
			}
			code := run(t.Context(), args, &stdout, &stderr)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, stderr.String())
			}
			msg := stderr.String()
			if !strings.HasPrefix(msg, "gatehouse: ") {
				t.Errorf("message %q does not start with gatehouse:", msg)
			}
			for _, w := range tc.wants {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q does not name %q", msg, w)
				}
			}
			if lines := strings.Count(strings.TrimSuffix(msg, "\n"), "\n") + 1; lines != 1 {
				if tc.multiline {
					t.Skipf("known defect, reported: the message spans %d lines: %q", lines, msg)
				}
				t.Errorf("message spans %d lines, want one: %q", lines, msg)
			}
		})
	}
}

// TestUsageErrors: unknown flags and commands exit 2.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := map[string][]string{
		"unknown flag":    {"serve", "--no-such-flag"},
		"unknown command": {"serv"},
		"extra argument":  {"serve", "extra"},
		"missing config":  {"serve", "--config", "/nonexistent/gatehouse.yaml"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), args, &stdout, &stderr); code != exitUsage {
				t.Errorf("exit %d, want %d; stderr %q", code, exitUsage, stderr.String())
			}
			if !strings.HasPrefix(stderr.String(), "gatehouse: ") {
				t.Errorf("stderr %q", stderr.String())
			}
		})
	}
}

// parseServe parses args as `gatehouse serve` would, with the environment
// folded in, and loads the configuration.
func parseServe(tb testing.TB, args ...string) (ServeConfig, error) {
	tb.Helper()
	cmd := newServeCmd()
	if err := cmd.ParseFlags(args); err != nil {
		tb.Fatal(err)
	}
	if err := applyEnv(cmd); err != nil {
		return ServeConfig{}, err
	}
	get := func(name string) string {
		v, err := cmd.Flags().GetString(name)
		if err != nil {
			tb.Fatal(err)
		}
		return v
	}
	f := serveFlags{
		config: get("config"), policies: get("policies"), dataDir: get("data-dir"), controlURL: get("control-url"),
		grpcAddr: get("grpc-addr"), httpAddr: get("http-addr"), opsAddr: get("ops-addr"), decision: get("decision"),
		logLevel: get("log-level"), logFormat: get("log-format"), id: get("id"),
	}
	return loadServeConfig(cmd, f)
}

// TestConfigPrecedence: flags override GATEHOUSE_* variables, which
// override the file, which overrides the defaults. (Not parallel: it sets
// environment variables.)
func TestConfigPrecedence(t *testing.T) {
	cfgFile := writeConfig(t, "listen:\n  grpc: 127.0.0.1:1111\n  http: 127.0.0.1:1112\npolicies:\n  dir: policies\ndata:\n  dir: var\nlog:\n  level: warn\n")
	base := filepath.Dir(cfgFile)

	t.Run("file over defaults, paths relative to the file", func(t *testing.T) {
		cfg, err := parseServe(t, "--config", cfgFile)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Listen.GRPC != "127.0.0.1:1111" || cfg.Listen.HTTP != "127.0.0.1:1112" || cfg.Listen.Ops != "127.0.0.1:8181" {
			t.Errorf("listen %+v", cfg.Listen)
		}
		if cfg.Policies.Dir != filepath.Join(base, "policies") || cfg.Data.Dir != filepath.Join(base, "var") {
			t.Errorf("paths %q %q not resolved against %q", cfg.Policies.Dir, cfg.Data.Dir, base)
		}
		if cfg.Log.Level != "warn" || cfg.Policies.Decision != "envoy/authz/allow" {
			t.Errorf("log %+v decision %q", cfg.Log, cfg.Policies.Decision)
		}
	})
	t.Run("env over file", func(t *testing.T) {
		t.Setenv("GATEHOUSE_GRPC_ADDR", "unix:///run/gatehouse.sock")
		t.Setenv("GATEHOUSE_LOG_LEVEL", "debug")
		cfg, err := parseServe(t, "--config", cfgFile)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Listen.GRPC != "unix:///run/gatehouse.sock" || cfg.Log.Level != "debug" || cfg.Listen.HTTP != "127.0.0.1:1112" {
			t.Errorf("listen %+v log %+v", cfg.Listen, cfg.Log)
		}
	})
	t.Run("flag over env", func(t *testing.T) {
		t.Setenv("GATEHOUSE_GRPC_ADDR", "127.0.0.1:2222")
		cfg, err := parseServe(t, "--config", cfgFile, "--grpc-addr", "127.0.0.1:3333")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Listen.GRPC != "127.0.0.1:3333" {
			t.Errorf("grpc %q, want the flag's", cfg.Listen.GRPC)
		}
	})
	t.Run("sidecar id: flag over env over file over host name", func(t *testing.T) {
		host, _ := os.Hostname()
		withID := writeConfig(t, "policies: {dir: policies}\nid: from-file\n")
		for _, tc := range []struct {
			file, env string
			args      []string
			want      string
		}{
			{file: cfgFile, want: host},
			{file: withID, want: "from-file"},
			{file: withID, env: "from-env", want: "from-env"},
			{file: withID, env: "from-env", args: []string{"--id", "from-flag"}, want: "from-flag"},
		} {
			if tc.env != "" {
				t.Setenv("GATEHOUSE_ID", tc.env)
			}
			cfg, err := parseServe(t, append([]string{"--config", tc.file}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ID != tc.want {
				t.Errorf("id %q, want %q", cfg.ID, tc.want)
			}
		}
	})
	t.Run("env names the config file", func(t *testing.T) {
		t.Setenv("GATEHOUSE_CONFIG", cfgFile)
		cfg, err := parseServe(t)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Listen.GRPC != "127.0.0.1:1111" {
			t.Errorf("grpc %q: GATEHOUSE_CONFIG not read", cfg.Listen.GRPC)
		}
	})
	t.Run("flag policies dir stays relative to the working directory", func(t *testing.T) {
		cfg, err := parseServe(t, "--config", cfgFile, "--policies", "other")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Policies.Dir != "other" {
			t.Errorf("policies.dir %q", cfg.Policies.Dir)
		}
	})
	t.Run("bad env value is a config error", func(t *testing.T) {
		t.Setenv("GATEHOUSE_OPS_ADDR", "nowhere")
		_, err := parseServe(t, "--config", cfgFile)
		if err == nil || !strings.Contains(err.Error(), "listen.ops") {
			t.Errorf("error %v, want listen.ops named", err)
		}
	})
}

// TestVersion prints the OPA version the binary embeds.
func TestVersion(t *testing.T) {
	t.Parallel()
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	var opa string
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/open-policy-agent/opa" {
			opa = f[1]
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"version"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	if opa == "" || !strings.Contains(out, "opa: "+opa+"\n") {
		t.Errorf("version output %q lacks opa: %s", out, opa)
	}
	for _, w := range []string{"gatehouse ", "commit: ", "go: go1."} {
		if !strings.Contains(out, w) {
			t.Errorf("version output %q lacks %q", out, w)
		}
	}
}

// TestControlURLList: data.control_url takes one URL, a comma-separated
// list or a YAML list; the sidecar gets them comma-separated, in order.
func TestControlURLList(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		`control_url: http://a:1`:                          "http://a:1",
		`control_url: "http://a:1, https://b:2/"`:          "http://a:1,https://b:2/",
		"control_url:\n    - http://a:1\n    - http://b:2": "http://a:1,http://b:2",
		`control_url: [http://a:1]`:                        "http://a:1",
	}
	for data, want := range cases {
		var cfg ServeConfig
		if err := decodeYAMLFile(writeConfig(t, "policies: {dir: policies}\ndata:\n    "+data+"\n"), &cfg); err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		if err := cfg.Data.ControlURL.Validate("data.control_url"); err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		if got := strings.Join(cfg.Data.ControlURL.URLs(), ","); got != want {
			t.Fatalf("%s: %q, want %q", data, got, want)
		}
	}
}
