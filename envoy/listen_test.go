package envoy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/internal/netx"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
)

const allowAll = "package envoy.authz\nallow := true\n"

// socketDir is a short temporary folder: Unix socket paths are limited to
// about 100 bytes, and t.TempDir() paths carry the test name.
func socketDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "gh")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestListenUnixSockets serves gRPC and HTTP on Unix sockets.
func TestListenUnixSockets(t *testing.T) {
	t.Parallel()
	dir := socketDir(t)
	grpcSock, httpSock := filepath.Join(dir, "x.sock"), filepath.Join(dir, "h.sock")
	// A stale socket file left by a crashed process is replaced.
	stale, err := net.Listen("unix", grpcSock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	sc := startPolicy(t, allowAll, testutil.Options{Server: envoy.Config{GRPCAddr: "unix://" + grpcSock, HTTPAddr: "unix://" + httpSock}})
	if got := sc.Server.GRPCAddr().Network(); got != "unix" {
		t.Fatalf("gRPC listens on %s", got)
	}
	resp, err := sc.Check(t.Context(), testutil.Request{})
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("Check over unix socket: %v, %v", resp, err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", httpSock)
	}}}
	t.Cleanup(client.CloseIdleConnections)
	h := testutil.DoHTTP(t, t.Context(), client, "http://gatehouse", testutil.Request{})
	if h.Status != http.StatusOK {
		t.Errorf("HTTP over unix socket: %d %q", h.Status, h.Body)
	}
	// A socket in use is not stolen.
	if _, err := netx.Listen("unix://" + grpcSock); err == nil {
		t.Error("a second listener took over a live socket")
	}
}

// TestListenTLS serves gRPC and HTTP over TLS, and with a client CA
// configured, refuses clients without a certificate from it.
func TestListenTLS(t *testing.T) {
	t.Parallel()
	ca := testutil.NewCA(t)
	certFile, keyFile, _ := ca.Issue(t, "server", true)
	_, _, clientPair := ca.Issue(t, "envoy", false)
	otherCA := testutil.NewCA(t)
	_, _, strangerPair := otherCA.Issue(t, "stranger", false)

	tests := map[string]struct {
		mtls   bool
		client []tls.Certificate
		wantOK bool
	}{
		"TLS":                                   {client: nil, wantOK: true},
		"mTLS with a client certificate":        {mtls: true, client: []tls.Certificate{clientPair}, wantOK: true},
		"mTLS without a client certificate":     {mtls: true, client: nil, wantOK: false},
		"mTLS with a certificate of another CA": {mtls: true, client: []tls.Certificate{strangerPair}, wantOK: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := envoy.Config{TLS: netx.TLSConfig{CertFile: certFile, KeyFile: keyFile}}
			if tc.mtls {
				cfg.TLS.ClientCAFile = ca.CertFile
			}
			sc := startPolicy(t, allowAll, testutil.Options{Server: cfg})
			clientTLS := &tls.Config{RootCAs: ca.Pool, Certificates: tc.client, ServerName: "localhost", MinVersion: tls.VersionTLS12}

			// A plaintext client never gets an answer.
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			if _, err := sc.Client.Check(ctx, testutil.CheckRequest(testutil.Request{})); err == nil {
				t.Error("plaintext Check answered on a TLS listener")
			}

			conn := testutil.Dial(t, sc.Server.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
			resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, testutil.CheckRequest(testutil.Request{}))
			if tc.wantOK {
				if err != nil || resp.GetOkResponse() == nil {
					t.Fatalf("gRPC Check over TLS: %v, %v", resp, err)
				}
			} else if status.Code(err) != codes.Unavailable {
				t.Fatalf("gRPC Check without a trusted client certificate: %v, %v; want a refused handshake", resp, err)
			}

			tr := &http.Transport{TLSClientConfig: clientTLS}
			t.Cleanup(tr.CloseIdleConnections)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+sc.Server.HTTPAddr().String()+"/x", nil)
			hresp, err := (&http.Client{Transport: tr}).Do(req)
			if tc.wantOK {
				if err != nil {
					t.Fatalf("HTTP over TLS: %v", err)
				}
				hresp.Body.Close()
				if hresp.StatusCode != http.StatusOK {
					t.Errorf("HTTP over TLS: %d", hresp.StatusCode)
				}
			} else if err == nil {
				hresp.Body.Close()
				t.Errorf("HTTP service answered %d to a client without a trusted certificate", hresp.StatusCode)
			}
		})
	}
}

// TestHealth: grpc.health.v1 says NOT_SERVING until a policy loads, SERVING
// once ready, and NOT_SERVING again as soon as shutdown begins.
func TestHealth(t *testing.T) {
	t.Parallel()
	sc := testutil.StartSidecar(t, testutil.Options{NoPolicy: true, Policies: map[string]string{"policy.rego": allowAll}})
	health := healthpb.NewHealthClient(sc.Conn)
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		resp, err := health.Check(t.Context(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("health check %q: %v", service, err)
		}
		return resp.GetStatus()
	}
	for _, svc := range []string{"", envoy.AuthorizationService} {
		if got := check(svc); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("before a policy: %q is %v, want NOT_SERVING", svc, got)
		}
	}
	if err := sc.Policies.Load(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() (bool, string) {
		got := check(envoy.AuthorizationService)
		return got == healthpb.HealthCheckResponse_SERVING, got.String()
	})
	if got := check(""); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("overall health %v once ready", got)
	}

	// A watcher sees NOT_SERVING when shutdown begins, before the server
	// closes (Envoy and load balancers stop sending checks).
	watchCtx, cancelWatch := context.WithCancel(t.Context())
	defer cancelWatch()
	stream, err := health.Watch(watchCtx, &healthpb.HealthCheckRequest{Service: envoy.AuthorizationService})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v, %v", m, err)
	}
	stopped := make(chan struct{})
	go func() {
		sc.Stop()
		close(stopped)
	}()
	m, err := stream.Recv()
	if err != nil || m.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch after shutdown began: %v, %v; want NOT_SERVING", m, err)
	}
	cancelWatch() // the last open stream: draining can finish
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
}

// TestHealthFollowsReadinessAsSignalled: grpc.health.v1 follows the
// engine's readiness as soon as it changes — a policy applied, the tenancy
// data lost and back — because the change is signalled to the server
// (Engine.WatchReadiness), not found by a poll (the server used to look
// every 200 ms, the ready log every 5 ms). Each flip must be seen by a
// watcher within 100 ms, ten times in a row.
func TestHealthFollowsReadinessAsSignalled(t *testing.T) {
	t.Parallel()
	ten := testutil.NewTenancy(1, nil)
	sc := testutil.StartSidecar(t, testutil.Options{NoPolicy: true, Tenancy: ten, Policies: map[string]string{"policy.rego": allowAll}})
	stream, err := healthpb.NewHealthClient(sc.Conn).Watch(t.Context(), &healthpb.HealthCheckRequest{Service: envoy.AuthorizationService})
	if err != nil {
		t.Fatal(err)
	}
	statuses := make(chan healthpb.HealthCheckResponse_ServingStatus, 16)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				close(statuses)
				return
			}
			statuses <- m.GetStatus()
		}
	}()
	expect := func(what string, want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		deadline := time.After(100 * time.Millisecond)
		for {
			select {
			case got, ok := <-statuses:
				if !ok {
					t.Fatalf("%s: watch ended", what)
				}
				if got == want {
					return
				}
			case <-deadline:
				t.Fatalf("%s: health not %v within 100 ms", what, want)
			}
		}
	}
	expect("before a policy", healthpb.HealthCheckResponse_NOT_SERVING)
	if err := sc.Policies.Load(); err != nil {
		t.Fatal(err)
	}
	expect("policy loaded", healthpb.HealthCheckResponse_SERVING)
	for i := range 10 {
		ten.Set(authz.TenancyState{Present: false, Revision: uint64(i + 1)})
		expect(fmt.Sprintf("flip %d: data lost", i), healthpb.HealthCheckResponse_NOT_SERVING)
		ten.Set(authz.TenancyState{Present: true, Revision: uint64(i + 2), SyncedAt: time.Now()})
		expect(fmt.Sprintf("flip %d: data back", i), healthpb.HealthCheckResponse_SERVING)
	}
}
