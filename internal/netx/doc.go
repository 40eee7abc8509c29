// Package netx opens the listeners Gatehouse serves on: TCP "host:port" or
// Unix sockets "unix:///path", optionally with TLS or mutual TLS.
package netx
