package authzen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/netx"
)

// Listener serves a Server's handler on listen.authzen: TCP or a Unix
// socket, with TLS (mutual TLS with a client CA) like the other listeners.
type Listener struct {
	addr   string
	tls    *tls.Config
	srv    *http.Server
	ln     net.Listener
	logger *slog.Logger
}

// NewListener prepares a listener for s on addr; TLS applies when tlsCfg
// is enabled. Call Listen, then Serve.
func NewListener(s *Server, addr string, tlsCfg netx.TLSConfig, logger *slog.Logger) (*Listener, error) {
	tc, err := tlsCfg.Load()
	if err != nil {
		return nil, err
	}
	return &Listener{
		addr: addr, tls: tc, logger: logger,
		srv: &http.Server{
			Handler:           s.Handler(),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		},
	}, nil
}

// Listen opens the socket.
func (l *Listener) Listen() error {
	ln, err := netx.Listen(l.addr)
	if err != nil {
		return fmt.Errorf("listen.authzen: %w", err)
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	l.ln = ln
	return nil
}

// Addr is the address listened on ("" before Listen).
func (l *Listener) Addr() string {
	if l.ln == nil {
		return ""
	}
	return l.ln.Addr().String()
}

// Serve answers until ctx is done, then drains for up to 5 seconds.
func (l *Listener) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- l.srv.Serve(l.ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("authzen: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.srv.Shutdown(sctx); err != nil {
		_ = l.srv.Close()
	}
	<-errc
	return nil
}
