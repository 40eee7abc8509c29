package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/netx"
	"github.com/gatehouse-dev/gatehouse/replica"
)

// TestNewSidecarClosesWhatItOpenedOnFailure: when a late start-up step
// fails (here the ops listener, the last one, on an address in use),
// newSidecar closes what the earlier steps opened: the cache file (another
// opener would get ErrInUse) and the ext_authz listeners (their addresses
// could not be bound again). Each step that can fail is tried.
func TestNewSidecarClosesWhatItOpenedOnFailure(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = busy.Close() })
	policies := filepath.Join(t.TempDir(), "policies")
	writeTestFile(t, filepath.Join(policies, "policy.rego"), "package envoy.authz\nallow := true\n")
	tests := map[string]func(c *ServeConfig){
		"ops listener in use":  func(c *ServeConfig) { c.Listen.Ops = busy.Addr().String() },
		"http listener in use": func(c *ServeConfig) { c.Listen.HTTP = busy.Addr().String() },
		"grpc listener in use": func(c *ServeConfig) { c.Listen.GRPC = busy.Addr().String() },
	}
	for name, breakIt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
			cfg := ServeConfig{
				Listen: ListenConfig{GRPC: grpcAddr, HTTP: httpAddr, Ops: "127.0.0.1:0"},
				Data:   DataConfig{Dir: t.TempDir(), ControlURL: "http://127.0.0.1:1"},
			}
			cfg.Policies.Dir = policies
			cfg.SetDefaults()
			breakIt(&cfg)
			if _, err := newSidecar(cfg, slog.New(slog.DiscardHandler)); err == nil {
				t.Fatal("newSidecar succeeded on an address in use")
			}
			st, err := replica.OpenStore(replica.StoreConfig{Dir: cfg.Data.Dir}, slog.New(slog.DiscardHandler))
			if errors.Is(err, replica.ErrInUse) {
				t.Fatal("the cache file is still open")
			}
			if err != nil {
				t.Fatal(err)
			}
			_ = st.Close()
			for _, addr := range []string{grpcAddr, httpAddr} {
				if addr == cfg.Listen.GRPC || addr == cfg.Listen.HTTP {
					l, err := netx.Listen(addr)
					if err != nil {
						t.Fatalf("%s still bound: %v", addr, err)
					}
					_ = l.Close()
				}
			}
		})
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// TestSidecarRunShutsDownAndClosesTheStore: Run returns once its context
// ends — the listeners drained, the background work (here a syncer that
// cannot reach its control endpoint and a policy directory watcher)
// stopped — and the cache file is closed when it returns.
func TestSidecarRunShutsDownAndClosesTheStore(t *testing.T) {
	t.Parallel()
	policies := filepath.Join(t.TempDir(), "policies")
	writeTestFile(t, filepath.Join(policies, "policy.rego"), "package envoy.authz\nallow := true\n")
	cfg := ServeConfig{
		Listen: ListenConfig{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0", Ops: "127.0.0.1:0"},
		Data:   DataConfig{Dir: t.TempDir(), ControlURL: "http://127.0.0.1:1"},
	}
	cfg.Policies.Dir = policies
	cfg.SetDefaults()
	sc, err := newSidecar(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	time.Sleep(100 * time.Millisecond) // serving, syncer retrying
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	st, err := replica.OpenStore(replica.StoreConfig{Dir: cfg.Data.Dir}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("the cache file is still held after Run returned: %v", err)
	}
	_ = st.Close()
}
