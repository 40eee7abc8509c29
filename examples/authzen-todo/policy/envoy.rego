# This example serves applications over AuthZEN only: an Envoy check
# (the sidecar's ext_authz listeners) is always denied.
package envoy.authz

default allow := false
