// Package promx holds the Prometheus registration helper shared by the
// components that take a Registerer (authz, token).
package promx
