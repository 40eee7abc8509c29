package testutil

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/envoy"
	"github.com/gatehouse-dev/gatehouse/ops"
	"github.com/gatehouse-dev/gatehouse/token"
)

// Options configures StartSidecar.
type Options struct {
	// Policies are written into a fresh policy directory (relative path →
	// content), unless PolicyDir is set.
	Policies map[string]string
	// PolicyDir is an existing policy directory.
	PolicyDir string
	// Decision is the decision rule path (default envoy/authz/allow).
	Decision string
	// NoPolicy leaves the engine without a policy (not ready); a policy
	// directory is still created and watched when Watch is set.
	NoPolicy bool
	// Watch runs the directory source (hot reload).
	Watch bool
	// Issuers configure the token verifier.
	Issuers []token.IssuerConfig
	// Engine configures the engine (Registerer is set by StartSidecar).
	Engine authz.Config
	// Tenancy is the tenancy store (default authz.EmptyTenancy()).
	Tenancy authz.Tenancy
	// Server configures the ext_authz listeners; GRPCAddr and HTTPAddr
	// default to "127.0.0.1:0". Set them to "-" to disable one.
	Server envoy.Config
	// Ops also starts the ops server on 127.0.0.1:0.
	Ops bool
	// Logger defaults to a logger at LogLevel into Logs.
	Logger *slog.Logger
	// LogLevel of the default logger: Info (the zero value, as in
	// production, where decisions are cached) or Debug (decision logs, Rego
	// print; the decision cache is bypassed).
	LogLevel slog.Level
}

// Sidecar is an engine and its ext_authz server on real sockets, with a
// gRPC client connected.
type Sidecar struct {
	Engine    *authz.Engine
	Verifier  *token.Verifier
	Server    *envoy.Server
	Ops       *ops.Server
	Policies  *bundle.DirSource
	PolicyDir string
	Registry  *prometheus.Registry
	// Logs holds the log output (when Options.Logger was nil).
	Logs *LogBuffer
	// Conn and Client talk gRPC to the server (nil when gRPC is disabled).
	Conn   *grpc.ClientConn
	Client authv3.AuthorizationClient
	// HTTPURL is the base URL of the HTTP service ("" when disabled).
	HTTPURL string
	// OpsURL is the base URL of the ops server ("" without Options.Ops).
	OpsURL string

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
	serveErr error
}

// StartSidecar builds an engine (loading the policies), a verifier, and an
// envoy.Server listening on 127.0.0.1:0, serves until the test ends, and
// dials it.
func StartSidecar(tb testing.TB, opts Options) *Sidecar {
	tb.Helper()
	s := &Sidecar{Registry: prometheus.NewRegistry()}
	logger := opts.Logger
	if logger == nil {
		logger, s.Logs = LoggerAt(tb, opts.LogLevel)
	}
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: opts.Issuers, Registerer: s.Registry}, logger)
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	s.Verifier = v
	ecfg := opts.Engine
	ecfg.Registerer = s.Registry
	s.Engine = authz.New(ecfg, v, opts.Tenancy, logger)

	s.PolicyDir = opts.PolicyDir
	if s.PolicyDir == "" {
		s.PolicyDir = PolicyDir(tb, opts.Policies)
	}
	src, err := bundle.NewDirSource(bundle.PolicyConfig{Dir: s.PolicyDir, Decision: opts.Decision}, s.Engine, logger)
	if err != nil {
		tb.Fatalf("NewDirSource: %v", err)
	}
	s.Policies = src
	if !opts.NoPolicy {
		if err := src.Load(); err != nil {
			tb.Fatalf("load policies: %v", err)
		}
	}

	scfg := opts.Server
	scfg.GRPCAddr = addrOr(scfg.GRPCAddr)
	scfg.HTTPAddr = addrOr(scfg.HTTPAddr)
	scfg.Registerer = s.Registry
	srv, err := envoy.New(scfg, s.Engine, logger)
	if err != nil {
		tb.Fatalf("envoy.New: %v", err)
	}
	if err := srv.Listen(); err != nil {
		tb.Fatalf("Listen: %v", err)
	}
	s.Server = srv
	if opts.Ops {
		s.Ops = ops.New(ops.Config{Addr: "127.0.0.1:0", Gatherer: s.Registry, Registerer: s.Registry}, s.Engine, logger)
		if err := s.Ops.Listen(); err != nil {
			tb.Fatalf("ops Listen: %v", err)
		}
		s.OpsURL = "http://" + s.Ops.Addr().String()
	}

	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Go(func() {
		if err := srv.Serve(ctx); err != nil {
			s.serveErr = err
		}
	})
	if s.Ops != nil {
		s.wg.Go(func() { _ = s.Ops.Serve(ctx) })
	}
	if opts.Watch {
		s.wg.Go(func() { _ = src.Run(ctx) })
	}
	s.wg.Go(func() { _ = v.Run(ctx) })
	tb.Cleanup(func() {
		s.Stop()
		if s.serveErr != nil {
			tb.Errorf("Serve: %v", s.serveErr)
		}
	})

	if a := srv.GRPCAddr(); a != nil {
		s.Conn = Dial(tb, Target(a.Network(), a.String()))
		s.Client = authv3.NewAuthorizationClient(s.Conn)
	}
	if a := srv.HTTPAddr(); a != nil && scfg.TLS.CertFile == "" {
		s.HTTPURL = "http://" + a.String()
	}
	return s
}

func addrOr(a string) string {
	switch a {
	case "":
		return "127.0.0.1:0"
	case "-":
		return ""
	}
	return a
}

// Stop shuts the servers down (as a cancelled serve context does), waits for
// them, then closes the client connection. It is idempotent.
func (s *Sidecar) Stop() {
	s.stopOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		if s.Conn != nil {
			_ = s.Conn.Close()
		}
	})
}

// Check sends r over gRPC.
func (s *Sidecar) Check(ctx context.Context, r Request) (*authv3.CheckResponse, error) {
	return s.Client.Check(ctx, CheckRequest(r))
}

// CheckHTTP sends r to the HTTP service.
func (s *Sidecar) CheckHTTP(tb testing.TB, ctx context.Context, r Request) HTTPResponse {
	tb.Helper()
	if s.HTTPURL == "" {
		tb.Fatal("the HTTP service is disabled")
	}
	return DoHTTP(tb, ctx, http.DefaultClient, s.HTTPURL, r)
}

// Target turns a listener address into a gRPC dial target.
func Target(network, addr string) string {
	if network == "unix" {
		return "unix://" + addr
	}
	return addr
}

// Dial opens a gRPC client connection to target (plaintext unless opts say
// otherwise), closed when the test ends.
func Dial(tb testing.TB, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	tb.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		tb.Fatalf("dial %s: %v", target, err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Get fetches url and returns the status and body.
func Get(tb testing.TB, ctx context.Context, url string) (int, string) {
	tb.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}
