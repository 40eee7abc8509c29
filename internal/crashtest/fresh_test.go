package crashtest

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// freshness judges a sidecar's answers against the writes acknowledged so
// far: an answer decided at tenancy revision R, asked at time T, comes from
// data older than max_staleness when a revision after R had been
// acknowledged before T - max_staleness - slack (slack: the time a
// revision takes from the acknowledgement to the sidecar, etcd → replica →
// stream). The acknowledgement time is taken after the write's answer, so
// the rule never blames the sidecar for a write it could not know of.
type freshness struct {
	maxStale, slack time.Duration

	mu   sync.Mutex
	acks []revAt // in acknowledgement order
	top  uint64  // the highest revision acknowledged

	decided, staleDenied, unavailable int
	worst                             time.Duration // the oldest data an answer came from (superseded for so long)
	bad                               []string
}

type revAt struct {
	rev uint64
	at  time.Time
}

// ack records a write acknowledged at rev, now.
func (f *freshness) ack(rev uint64) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acks = append(f.acks, revAt{rev, now})
	f.top = max(f.top, rev)
}

func (f *freshness) latest() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.top
}

func (f *freshness) fail(format string, args ...any) {
	if len(f.bad) < 10 {
		f.bad = append(f.bad, fmt.Sprintf(format, args...))
	}
}

// judge records one answer: a decision at revision rev (err nil, reason
// the deny reason or ""), or the gRPC error; minRev is the minimum revision
// the request asked for (0: none).
func (f *freshness) judge(sent time.Time, minRev, rev uint64, reason string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		st := grpcstatus.Convert(err)
		if st.Code() == codes.Unavailable && strings.Contains(st.Message(), "stale") {
			f.unavailable++
			return
		}
		f.fail("asked at %s: cannot decide for another reason than stale data: %v", sent.Format("15:04:05.000"), err)
		return
	}
	if reason == "stale" {
		if minRev == 0 {
			f.fail("a stale deny to a request without a minimum revision")
		}
		f.staleDenied++
		return
	}
	f.decided++
	if rev < minRev {
		f.fail("decided at revision %d for a request asking at least %d", rev, minRev)
	}
	for _, a := range f.acks {
		if a.rev <= rev {
			continue
		}
		age := sent.Sub(a.at)
		f.worst = max(f.worst, age)
		if age > f.maxStale+f.slack {
			f.fail("asked at %s, decided at revision %d, superseded by revision %d acknowledged %v before (max_staleness %v)",
				sent.Format("15:04:05.000"), rev, a.rev, age.Round(time.Millisecond), f.maxStale)
		}
		break // the first acknowledged after rev is the oldest
	}
}

// probe asks the sidecar the queries in turn, one every ~15 ms, until stop
// is closed; with minRev, each asks at least the latest revision
// acknowledged (a client reading its own writes).
func (f *freshness) probe(t *testing.T, s *sidecar, qs []query, minRev bool, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(15 * time.Millisecond):
		}
		q := qs[i%len(qs)]
		ext := map[string]string{"project": q.project}
		if len(q.roles) > 0 {
			ext["roles"] = strings.Join(q.roles, ",")
		}
		h := map[string]string{"authorization": "Bearer " + token(t, q.user)}
		var want uint64
		if minRev {
			want = f.latest()
			h["x-gatehouse-min-revision"] = fmt.Sprint(want)
		}
		req := testutil.CheckRequest(testutil.Request{Path: "/t/" + q.tenant + "/api/items", Headers: h, ContextExtensions: ext})
		c, cancel := contextTimeout(t, 15*time.Second)
		sent := time.Now()
		resp, err := s.client.Check(c, req)
		cancel()
		if err != nil {
			f.judge(sent, want, 0, "", err)
			continue
		}
		a := toAnswer(t, resp)
		f.judge(sent, want, uint64(resp.GetDynamicMetadata().GetFields()["tenancy_revision"].GetNumberValue()), a.reason, nil)
	}
}

// stallProxy forwards TCP connections to target and, while stalled, holds
// back what the target sends (nothing is closed: a partition, not a
// crash). A sidecar following through it hears nothing, with its stream
// open.
type stallProxy struct {
	lis    net.Listener
	target string

	mu   sync.Mutex
	gate chan struct{} // closed while forwarding; open while stalled
}

func startStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{lis: lis, target: target, gate: make(chan struct{})}
	close(p.gate)
	var conns sync.Map
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				abort(c)
				continue
			}
			conns.Store(c, s)
			go func() {
				_, _ = io.Copy(s, c)
				abort(s)
			}()
			go func() {
				defer func() { abort(c); abort(s); conns.Delete(c) }()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						p.mu.Lock()
						gate := p.gate
						p.mu.Unlock()
						<-gate
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		p.resume()
		conns.Range(func(c, s any) bool {
			abort(c.(net.Conn))
			abort(s.(net.Conn))
			return true
		})
	})
	return p
}

func (p *stallProxy) url() string { return "http://" + p.lis.Addr().String() }

// stall holds back the target's bytes until resume.
func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default:
	}
}

func (p *stallProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}
