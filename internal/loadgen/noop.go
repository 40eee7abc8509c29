package loadgen

import (
	"context"
	"errors"
	"net"
	"runtime"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Noop is an ext_authz v3 Authorization service that allows every request
// with an empty OkHttpResponse, doing no work at all: the floor that a real
// server's throughput and latency are compared with.
type Noop struct {
	authv3.UnimplementedAuthorizationServer
}

var _ authv3.AuthorizationServer = Noop{}

// noopResponse is shared by every call: grpc only reads it to marshal it.
var noopResponse = &authv3.CheckResponse{
	Status:       &rpcstatus.Status{Code: int32(codes.OK)},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

// Check allows the request.
func (Noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return noopResponse, nil
}

// NewNoopServer returns a grpc server with Noop registered, tuned as a
// production server would be: calls run on GOMAXPROCS reusable stream
// workers instead of a fresh goroutine each.
func NewNoopServer() *grpc.Server {
	s := grpc.NewServer(grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))))
	authv3.RegisterAuthorizationServer(s, Noop{})
	return s
}

// ServeNoop serves the no-op server on lis until ctx is done, then stops
// gracefully (at most 5 s) and returns nil.
func ServeNoop(ctx context.Context, lis net.Listener) error {
	s := NewNoopServer()
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		s.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
