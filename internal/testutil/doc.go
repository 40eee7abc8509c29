// Package testutil holds the fixtures Gatehouse's tests share: real keys and
// signed JWTs, a JWKS endpoint, policy directories in t.TempDir(), a CA for
// TLS and mTLS listeners, CheckRequests shaped as Envoy sends them, and a
// sidecar (engine + ext_authz server) on 127.0.0.1:0 with a gRPC client.
//
// Every helper takes a testing.TB, calls Helper, and registers Cleanup for
// what it starts. Nothing here is used outside tests.
package testutil
