// Command gatehouse is the Gatehouse policy decision point: the Envoy
// ext_authz sidecar (serve), the control endpoint (control), both together on
// a demo world (dev), and the policy tools (test, eval, check, fmt, bundle).
package main
