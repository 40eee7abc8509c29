package crashtest

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// gatehouseBin is the binary under test, built once by TestMain.
var gatehouseBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(etcdMemberEnv); spec != "" {
		os.Exit(runEtcdMember(spec))
	}
	flag.Parse()
	dir, err := os.MkdirTemp("", "gatehouse-crashtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gatehouseBin = filepath.Join(dir, "gatehouse")
	goTool, err := exec.LookPath("go")
	if err != nil && os.Getenv("GOROOT") != "" {
		goTool, err = filepath.Join(os.Getenv("GOROOT"), "bin", "go"), nil
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crashtest: the go command is needed to build gatehouse:", err)
		os.Exit(1)
	}
	build := exec.Command(goTool, "build", "-o", gatehouseBin, "github.com/gatehouse-dev/gatehouse/cmd/gatehouse")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "crashtest: build gatehouse:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	for _, d := range worldDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// proc is a child process whose JSON log lines (stderr) are kept.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on every new line
}

// startProc starts gatehouse with args; it is killed when the test ends,
// and its last log lines are shown if the test failed.
func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(gatehouseBin, args...), exited: make(chan struct{}), changed: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	go func() {
		<-read // Wait closes the pipe: read it to the end first
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			p.mu.Lock()
			from := max(0, len(p.lines)-25)
			t.Logf("last log lines of %s (pid %d):\n  %s", p.name, p.cmd.Process.Pid, strings.Join(p.lines[from:], "\n  "))
			p.mu.Unlock()
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and waits (SIGKILL after 15 s).
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.kill()
	}
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitLog returns the first log line (from the start) with msg whose
// fields satisfy match (nil: any), waiting up to timeout.
func (p *proc) waitLog(t *testing.T, timeout time.Duration, msg string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		p.mu.Lock()
		lines, ch := p.lines[seen:], p.changed
		seen = len(p.lines)
		p.mu.Unlock()
		for _, l := range lines {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil || m["msg"] != msg {
				continue
			}
			if match == nil || match(m) {
				return m
			}
		}
		select {
		case <-ch:
		case <-p.exited:
			t.Fatalf("%s exited while waiting for %q", p.name, msg)
		case <-deadline:
			t.Fatalf("%s: no %q log line within %v", p.name, msg, timeout)
		}
	}
}

// logged reports whether a line with msg was logged so far.
func (p *proc) logged(msg string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if strings.Contains(l, `"msg":"`+msg+`"`) {
			return true
		}
	}
	return false
}

// addr reads a listener address from a log field: "host:port" or
// {"IP": ..., "Port": ...}.
func addr(v any) string {
	switch a := v.(type) {
	case string:
		return a
	case map[string]any:
		port, _ := a["Port"].(float64)
		ip, _ := a["IP"].(string)
		return net.JoinHostPort(ip, strconv.Itoa(int(port)))
	}
	return ""
}

// keys are the files a test's processes share: tokens and the issuer key.
type keys struct {
	dir, adminFile, syncFile, pubFile string
	admin                             string
}

// control is a `gatehouse control` process.
type control struct {
	*proc
	dir, addr, url string
}

// startControl starts a control endpoint on dataDir at addr ("127.0.0.1:0"
// the first time; the same address on a restart, so that sidecars find it).
func startControl(t *testing.T, k *keys, dataDir, address string) *control {
	t.Helper()
	p := startProc(t, "control", "control", "--addr", address, "--data-dir", dataDir,
		"--admin-token-file", k.adminFile, "--sync-token-file", k.syncFile, "--log-format", "json")
	m := p.waitLog(t, 30*time.Second, "control listening", nil)
	c := &control{proc: p, dir: dataDir, addr: addr(m["addr"])}
	c.url = "http://" + c.addr
	return c
}

// sidecar is a `gatehouse serve` process.
type sidecar struct {
	*proc
	dataDir                string
	grpcAddr, opsURL, http string
	client                 authv3.AuthorizationClient
}

// sidecarOpts are the settings a test varies.
type sidecarOpts struct {
	controlURL   string
	dataDir      string
	maxStaleness time.Duration // data.max_staleness; 0: none
}

// startSidecar starts a sidecar with the shipped policies, the test issuer
// and a short reconnect backoff; it returns once the listeners are open
// (not necessarily ready).
func startSidecar(t *testing.T, k *keys, o sidecarOpts) *sidecar {
	t.Helper()
	policies, err := filepath.Abs("../../policies")
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", ops: "127.0.0.1:0"}
policies: {dir: %q}
data:
  dir: %q
  control_url: %q
  token_file: %q
  reconnect_max_backoff: 300ms
  min_revision_wait: 5s
  verify_on_start: true
  max_staleness: %s
issuers:
  - {issuer: %q, audiences: [api], algorithms: [RS256], public_key_file: %q}
log: {level: info, format: json}
`, policies, o.dataDir, o.controlURL, k.syncFile, o.maxStaleness, issuer, k.pubFile)
	file := filepath.Join(t.TempDir(), "serve.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "sidecar", "serve", "--config", file)
	m := p.waitLog(t, 30*time.Second, "gatehouse serve starting", nil)
	s := &sidecar{proc: p, dataDir: o.dataDir, grpcAddr: addr(m["grpc"]), http: addr(m["http"]), opsURL: "http://" + addr(m["ops"])}
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	s.client = authv3.NewAuthorizationClient(conn)
	return s
}

// ready reports whether /readyz answers 200.
func (s *sidecar) ready() bool {
	resp, err := http.Get(s.opsURL + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady waits for /readyz.
func (s *sidecar) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !s.ready() {
		if !s.alive() {
			t.Fatalf("the sidecar exited before it was ready")
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar was not ready within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// status is the sidecar's /v1/status.
type status struct {
	Ready   bool `json:"ready"`
	Tenancy struct {
		Revision  uint64 `json:"revision"`
		LastError string `json:"last_error"`
	} `json:"tenancy"`
}

func (s *sidecar) status(t *testing.T) status {
	t.Helper()
	resp, err := http.Get(s.opsURL + "/v1/status")
	if err != nil {
		t.Fatalf("sidecar status: %v", err)
	}
	defer resp.Body.Close()
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("sidecar status: %v", err)
	}
	return st
}

// waitRevision waits until the sidecar's data is at least at rev.
func (s *sidecar) waitRevision(t *testing.T, rev uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := s.status(t)
		if st.Tenancy.Revision >= rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar is at revision %d, not %d, after %v (last error %q)", st.Tenancy.Revision, rev, timeout, st.Tenancy.LastError)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// contextTimeout bounds one call.
func contextTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
