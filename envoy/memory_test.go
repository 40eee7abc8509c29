package envoy_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// exactCodec marshals into exactly sized buffers (gRPC's shared pool hands
// out 1 MiB for anything over 32 KiB): the load generator's own memory
// stays small.
type exactCodec struct{}

func (exactCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (exactCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

func (exactCodec) Name() string { return "proto" }

// memHelperEnv makes the test binary the server process of
// TestConcurrentLargeChecksMemory.
const memHelperEnv = "GATEHOUSE_ENVOY_MEMORY_HELPER"

// echoPath denies with a body quoting the path twice: deny bodies that
// echo client strings.
const echoPath = `package envoy.authz
allow := {"allowed": false, "http_status": 403, "body": json.marshal({"path": input.parsed_path, "p": input.attributes.request.http.path})}
`

// TestConcurrentLargeChecksMemory: 500 concurrent checks with 60 KB paths
// (within Envoy's default 60 KiB header limit) used to take the sidecar's
// resident set to about 500 MB: every check was decoded, its input built and
// evaluated at once, in 1 MiB pool buffers. With the default limits
// (bytes in flight, evaluation workers, exactly sized buffers for large
// messages) the server process's peak RSS grows by far less. The server
// runs in its own process (this test binary), so only its memory counts.
func TestConcurrentLargeChecksMemory(t *testing.T) {
	if os.Getenv(memHelperEnv) == "1" {
		memoryHelper(t)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	if testing.Short() || raceEnabled {
		t.Skip("a load test; it measures memory (not under the race detector)")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestConcurrentLargeChecksMemory$", "-test.count=1")
	cmd.Env = append(os.Environ(), memHelperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	var addr string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		t.Fatal("the helper printed no address")
	}
	go func() { // drain
		for sc.Scan() {
		}
	}()
	conn := testutil.Dial(t, addr)
	warm := &authv3.CheckResponse{}
	if err := conn.Invoke(t.Context(), "/envoy.service.auth.v3.Authorization/Check", testutil.CheckRequest(testutil.Request{Path: "/warm"}), warm, grpc.ForceCodecV2(exactCodec{})); err != nil {
		t.Fatal(err)
	}
	before := procStatusKB(t, cmd.Process.Pid, "VmRSS")

	const n, pathBytes = 500, 60_000
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int{}
	)
	for i := range n {
		wg.Go(func() {
			req := testutil.CheckRequest(testutil.Request{Path: fmt.Sprintf("/t/%06d/%s", i, strings.Repeat("x", pathBytes))})
			resp := &authv3.CheckResponse{}
			err := conn.Invoke(t.Context(), "/envoy.service.auth.v3.Authorization/Check", req, resp, grpc.ForceCodecV2(exactCodec{}))
			if err != nil {
				t.Errorf("Check: %v", err) // never an error status
				return
			}
			mu.Lock()
			statuses[int(resp.GetDeniedResponse().GetStatus().GetCode())]++
			mu.Unlock()
		})
	}
	wg.Wait()
	peak := procStatusKB(t, cmd.Process.Pid, "VmHWM")
	grown := (peak - before) >> 10
	t.Logf("server RSS %d MiB before, peak %d MiB (+%d MiB); answers by status %v", before>>10, peak>>10, grown, statuses)
	if statuses[403]+statuses[429] != n {
		t.Errorf("answers %v, want %d denies (403, or 429 overloaded)", statuses, n)
	}
	if statuses[403] == 0 {
		t.Error("no check was evaluated")
	}
	if grown > 320 { // about 600 before the limits, 150-220 after
		t.Errorf("peak RSS grew by %d MiB, want at most 320", grown)
	}
}

// memoryHelper is the server process: a sidecar with default limits that
// prints its gRPC address and serves until stdin closes.
func memoryHelper(t *testing.T) {
	sc := startPolicy(t, echoPath, testutil.Options{Server: envoy.Config{HTTPAddr: "-"}, Logger: discard()})
	fmt.Printf("ADDR %s\n", sc.Server.GRPCAddr())
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until EOF
}

// procStatusKB reads a "kB" field of /proc/<pid>/status.
func procStatusKB(tb testing.TB, pid int, field string) int {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// quoteProject allows with metadata quoting the route's project and reads
// every header (so the input holds them all, in its term blocks).
const quoteProject = `package envoy.authz
allow := {"allowed": true, "dynamic_metadata": {"project": input.attributes.contextExtensions.project, "n": count(input.attributes.request.http.headers)}}
`

// TestCachedDecisionsDoNotHoldInputs: a cached decision whose dynamic
// metadata quotes an input value (the route's project) holds that value,
// not the input it came from. Input terms are allocated in blocks; the
// metadata kept as evaluated once held the request's whole block (here 80
// headers) alive for as long as the decision stayed cached: the heap per
// cached decision was several times its accounted size. Not parallel: it
// measures the heap.
func TestCachedDecisionsDoNotHoldInputs(t *testing.T) {
	const n = 3000
	e := policyEngine(t, authz.Config{DecisionCacheEntries: 2 * n}, nil, quoteProject)
	reqs := make([]*authv3.CheckRequest, n)
	for i := range reqs {
		headers := map[string]string{"x-request": fmt.Sprint(i)}
		for h := range 80 {
			headers[fmt.Sprintf("x-header-%02d", h)] = "v"
		}
		reqs[i] = testutil.CheckRequest(testutil.Request{Path: "/p", Headers: headers, ContextExtensions: map[string]string{"project": fmt.Sprintf("project-%06d", i)}})
	}
	base := testutil.HeapInUse()
	for i, req := range reqs {
		d, _, err := envoy.Decide(t.Context(), e, req, nil)
		if err != nil || !d.Allowed {
			t.Fatalf("check %d: %+v, %v", i, d, err)
		}
		if p, _ := d.DynamicMetadata.String("project"); p != fmt.Sprintf("project-%06d", i) {
			t.Fatalf("check %d: project %q", i, p)
		}
	}
	held := float64(testutil.HeapInUse()-base) / n
	accounted := float64(e.DecisionCacheBytes()) / n
	runtime.KeepAlive(reqs)
	runtime.KeepAlive(e)
	t.Logf("a cached decision holds %.0f bytes of heap, accounted %.0f", held, accounted)
	if held > accounted {
		t.Errorf("a cached decision holds %.0f bytes of heap, accounted %.0f: it holds more than its own values", held, accounted)
	}
}
