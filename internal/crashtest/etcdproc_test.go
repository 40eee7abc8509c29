package crashtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// etcdMemberEnv, when set, makes the test binary run one etcd member
// (described by the variable's JSON) instead of the tests, until it is
// killed: TestMain checks it first.
const etcdMemberEnv = "GATEHOUSE_CRASHTEST_ETCD_MEMBER"

// memberSpec is what a member process needs.
type memberSpec struct {
	Name, Dir, Peer, Client, Cluster string
}

// runEtcdMember runs the member described by the environment, prints
// "ready" on stdout once it serves, and blocks until killed. It is the
// whole life of a member process.
func runEtcdMember(spec string) int {
	var s memberSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "etcd member:", err)
		return 2
	}
	peer, err1 := url.Parse(s.Peer)
	client, err2 := url.Parse(s.Client)
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "etcd member: bad URL", err1, err2)
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Name = s.Name
	cfg.Dir = s.Dir
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.InitialCluster = s.Cluster
	cfg.InitialClusterToken = "gatehouse-test"
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.TickMs, cfg.ElectionMs = 50, 500
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{s.Dir + ".log"}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd member:", err)
		return 1
	}
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("ready")
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcd member:", err)
		return 1
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd member: not ready within 60s")
		return 1
	}
	// a member's parent is the test: when it goes, so does the member
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		e.Close()
		os.Exit(0)
	}()
	err = <-e.Err()
	fmt.Fprintln(os.Stderr, "etcd member:", err)
	return 1
}

// etcdMember is one member of a test etcd cluster: a child process (this
// test binary running runEtcdMember) with real raft, WAL files and sockets
// on 127.0.0.1, killed with SIGKILL.
type etcdMember struct {
	name   string
	client string // client URL
	cmd    *exec.Cmd
	stdin  io.WriteCloser // kept open (and referenced) while the member lives
	exited chan struct{}
}

// kill sends SIGKILL to the member process and waits for it to be gone.
func (m *etcdMember) kill() {
	select {
	case <-m.exited:
		return
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
}

func (m *etcdMember) down() bool {
	select {
	case <-m.exited:
		return true
	default:
		return false
	}
}

// startEtcd starts an n-member etcd cluster, one process per member,
// killed at cleanup.
func startEtcd(t *testing.T, n int) []*etcdMember {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	specs := make([]memberSpec, n)
	var initial []string
	for i := range specs {
		specs[i] = memberSpec{
			Name:   fmt.Sprintf("m%d", i),
			Peer:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			Client: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		}
		specs[i].Dir = filepath.Join(dir, specs[i].Name)
		initial = append(initial, specs[i].Name+"="+specs[i].Peer)
	}
	members := make([]*etcdMember, n)
	ready := make([]chan error, n)
	for i := range specs {
		specs[i].Cluster = strings.Join(initial, ",")
		js, _ := json.Marshal(specs[i])
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), etcdMemberEnv+"="+string(js), "GOMAXPROCS=1")
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdin, err := cmd.StdinPipe() // closed when the test process exits
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start etcd member %s: %v", specs[i].Name, err)
		}
		m := &etcdMember{name: specs[i].Name, client: specs[i].Client, cmd: cmd, stdin: stdin, exited: make(chan struct{})}
		members[i] = m
		t.Cleanup(m.kill)
		ready[i] = make(chan error, 1)
		go func() {
			line, err := bufio.NewReader(out).ReadString('\n')
			if err == nil && line != "ready\n" {
				err = fmt.Errorf("said %q", line)
			}
			ready[i] <- err
			_, _ = io.Copy(io.Discard, out)
			_ = cmd.Wait()
			close(m.exited)
		}()
	}
	for i, ch := range ready {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("etcd member %s: %v", members[i].name, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("etcd member %s not ready within 60s", members[i].name)
		}
	}
	return members
}

// leader returns the member the live members agree leads the cluster
// (the client's Status API), waiting up to 10 s for one.
func leader(t *testing.T, members []*etcdMember) *etcdMember {
	t.Helper()
	var eps []string
	for _, m := range members {
		if !m.down() {
			eps = append(eps, m.client)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, m := range members {
			if m.down() {
				continue
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			st, err := cli.Status(ctx, m.client)
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the etcd cluster has no leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killLeader kills the cluster's leader with SIGKILL and returns it.
func killLeader(t *testing.T, members []*etcdMember) *etcdMember {
	t.Helper()
	m := leader(t, members)
	m.kill()
	return m
}
