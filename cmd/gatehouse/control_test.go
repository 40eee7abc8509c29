package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// controlRun runs the gatehouse command line and returns its exit code and
// stderr.
func controlRun(ctx context.Context, args ...string) (int, string) {
	var stdout, stderr controlLogBuffer
	code := run(ctx, args, &stdout, &stderr)
	return code, stderr.String()
}

// controlLogBuffer is a bytes.Buffer safe for the logger and the test to share.
type controlLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *controlLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *controlLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestControlConfigErrorsExit2(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	badYAML := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badYAML, []byte("addr: 127.0.0.1:0\nadmin_token: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yamlFile := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("admin_token_file: empty.token\n"+body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	empty := filepath.Join(dir, "empty.token")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(token, []byte("a-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		args []string
		want string
	}{
		"missing admin token file": {[]string{"--admin-token-file", filepath.Join(dir, "nope.token")}, "admin_token_file"},
		"no admin token file":      {nil, "admin_token_file: required"},
		"empty admin token":        {[]string{"--admin-token-file", empty}, "holds no token"},
		"unknown config key":       {[]string{"--config", badYAML}, "admin_token"},
		"bad address":              {[]string{"--admin-token-file", empty, "--addr", "nowhere"}, `addr: "nowhere"`},
		"bad history":              {[]string{"--admin-token-file", empty, "--history", "-3"}, "history: -3"},
		"unknown store":            {[]string{"--admin-token-file", empty, "--store", "raft"}, `store: "raft" is not a store`},
		"etcd without endpoints":   {[]string{"--admin-token-file", empty, "--store", "etcd"}, "etcd.endpoints: required"},
		"bad etcd endpoint":        {[]string{"--admin-token-file", empty, "--store", "etcd", "--etcd-endpoints", "nohost"}, `etcd.endpoints: "nohost"`},
		"etcd endpoint scheme":     {[]string{"--admin-token-file", empty, "--store", "etcd", "--etcd-endpoints", "ftp://h:1"}, `scheme "ftp"`},
		"etcd cert without key":    {[]string{"--admin-token-file", empty, "--store", "etcd", "--etcd-endpoints", "127.0.0.1:2379", "--etcd-cert-file", "c.pem"}, "etcd.cert_file and etcd.key_file"},
		"etcd CA file missing":     {[]string{"--admin-token-file", token, "--store", "etcd", "--etcd-endpoints", "127.0.0.1:2379", "--etcd-ca-file", filepath.Join(dir, "nope.pem")}, "etcd.ca_file"},
		"etcd CA file not PEM":     {[]string{"--admin-token-file", token, "--store", "etcd", "--etcd-endpoints", "127.0.0.1:2379", "--etcd-ca-file", token}, "holds no PEM certificate"},
		"bad audit retention":      {[]string{"--config", yamlFile("r.yaml", "audit: {retention: 10m}\n")}, "audit.retention: 10m0s must be at least 1h"},
		"bad decisions.max_mb":     {[]string{"--config", yamlFile("d.yaml", "decisions: {max_mb: -1}\n")}, "decisions.max_mb: -1"},
		"bad sidecar_ttl":          {[]string{"--config", yamlFile("s.yaml", "sidecar_ttl: 100ms\n")}, "sidecar_ttl: 100ms must be at least 1s"},
		"unknown audit key":        {[]string{"--config", yamlFile("u.yaml", "audit: {keep: 1h}\n")}, "keep"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"control", "--data-dir", filepath.Join(t.TempDir(), "data")}, c.args...)
			code, stderr := controlRun(t.Context(), args...)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitUsage, stderr)
			}
			if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 || !strings.Contains(lines[0], c.want) {
				t.Fatalf("stderr %q: want one line naming %q", stderr, c.want)
			}
		})
	}
}

// TestControlRuns starts `gatehouse control` from a config file with
// relative paths on a Unix socket, the admin token file given by the
// environment, writes through it, and stops it as a signal would.
func TestControlRuns(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("admin.token", "s3cret-admin-token\n")
	write("control.yaml", "addr: unix://"+sock+"\ndata_dir: data\nhistory: 10\nheartbeat: 1s\nlog:\n  level: debug\n")
	t.Setenv("GATEHOUSE_ADMIN_TOKEN_FILE", filepath.Join(dir, "admin.token"))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		code   int
		stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, stderr := controlRun(ctx, "control", "--config", filepath.Join(dir, "control.yaml"))
		done <- result{code, stderr}
	}()

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get("http://control/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case r := <-done:
			t.Fatalf("control exited %d early:\n%s", r.code, r.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("control not up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	req, _ := http.NewRequest("PUT", "http://control/v1/tenants/acme", strings.NewReader(`{"id":"acme","name":"ACME"}`))
	req.Header.Set("Authorization", "Bearer s3cret-admin-token")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"revision":1`) {
		t.Fatalf("PUT: %d %s", resp.StatusCode, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "control.db")); err != nil {
		t.Fatalf("data_dir not relative to the config file: %v", err)
	}

	cancel()
	select {
	case r := <-done:
		if r.code != exitOK {
			t.Fatalf("exit %d after the stop signal:\n%s", r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "s3cret-admin-token") {
			t.Fatal("the admin token was logged")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("control did not stop")
	}
}
