package main

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

// runServe runs `gatehouse serve --config DIR/gatehouse.yaml` in-process
// until cancel (or the end of the test). It returns the exit code channel,
// the captured stderr (logged if the test fails) and an HTTP client that
// dials the ops listener at unix://DIR/o.sock.
func runServe(t *testing.T, dir string) (exit <-chan int, stderr *testutil.LogBuffer, ops *http.Client, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var stdout testutil.LogBuffer
	stderr = &testutil.LogBuffer{}
	ch := make(chan int, 1)
	go func() {
		ch <- run(ctx, []string{"serve", "--config", filepath.Join(dir, "gatehouse.yaml")}, &stdout, stderr)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr.String())
		}
	})
	ops = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(dir, "o.sock"))
	}}}
	t.Cleanup(ops.CloseIdleConnections)
	return ch, stderr, ops, cancel
}
