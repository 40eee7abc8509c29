// Package jsonsize accounts the memory held by decoded JSON values, for the
// byte bounds of the decision cache (authz) and the verified-token cache
// (token).
package jsonsize
