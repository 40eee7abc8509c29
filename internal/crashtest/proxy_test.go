package crashtest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// proxy is a TCP proxy between sidecars and a control endpoint that cuts
// connections: each new connection takes the next byte budget (control →
// sidecar) from a queue, and is cut — closed on both sides, abruptly —
// once it has forwarded that many bytes. An empty queue forwards without
// limit.
type proxy struct {
	lis    net.Listener
	target string

	mu      sync.Mutex
	budgets []int64
	open    map[net.Conn]net.Conn // client → server
	cuts    int                   // connections cut by a budget
	midLine int                   // ... whose last forwarded byte was not a newline
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target, open: map[net.Conn]net.Conn{}}
	go p.accept()
	t.Cleanup(func() {
		lis.Close()
		p.cutAll()
	})
	return p
}

func (p *proxy) url() string { return "http://" + p.lis.Addr().String() }

// setBudgets queues byte budgets for the next connections.
func (p *proxy) setBudgets(b ...int64) {
	p.mu.Lock()
	p.budgets = append(p.budgets[:0], b...)
	p.mu.Unlock()
}

// cutAll closes every open connection now.
func (p *proxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, s := range p.open {
		abort(c)
		abort(s)
	}
}

func (p *proxy) stats() (cuts, midLine int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts, p.midLine
}

// abort closes a TCP connection with a reset, as a crash or a network cut
// would.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func (p *proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		budget := int64(-1)
		if len(p.budgets) > 0 {
			budget, p.budgets = p.budgets[0], p.budgets[1:]
		}
		p.open[c] = s
		p.mu.Unlock()
		go func() {
			_, _ = io.Copy(s, c)
			abort(s)
		}()
		go p.down(c, s, budget)
	}
}

// down forwards control → sidecar, cutting after budget bytes (-1: none).
func (p *proxy) down(c, s net.Conn, budget int64) {
	defer func() {
		abort(c)
		abort(s)
		p.mu.Lock()
		delete(p.open, c)
		p.mu.Unlock()
	}()
	if budget < 0 {
		_, _ = io.Copy(c, s)
		return
	}
	buf := make([]byte, 32<<10)
	var last byte = '\n'
	for budget > 0 {
		n, err := s.Read(buf[:min(int64(len(buf)), budget)])
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			budget -= int64(n)
			last = buf[n-1]
		}
		if err != nil {
			return // the control endpoint ended the stream: not a cut
		}
	}
	p.mu.Lock()
	p.cuts++
	if last != '\n' {
		p.midLine++
	}
	p.mu.Unlock()
}
