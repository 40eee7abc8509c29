package testutil

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
)

// JWKSServer is a real HTTP JWKS endpoint on 127.0.0.1.
type JWKSServer struct {
	// URL is the JWKS URL.
	URL string
	mu  sync.Mutex
	doc []byte
	// Hits counts the requests served.
	Hits atomic.Int64
}

// NewJWKSServer serves a JWK Set of keys until the test ends.
func NewJWKSServer(tb testing.TB, keys ...map[string]any) *JWKSServer {
	tb.Helper()
	s := &JWKSServer{doc: JWKS(tb, keys...)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.Hits.Add(1)
		s.mu.Lock()
		doc := s.doc
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	}))
	tb.Cleanup(srv.Close)
	s.URL = srv.URL + "/.well-known/jwks.json"
	return s
}

// Set replaces the served keys (a rotation).
func (s *JWKSServer) Set(tb testing.TB, keys ...map[string]any) {
	tb.Helper()
	doc := JWKS(tb, keys...)
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
}
