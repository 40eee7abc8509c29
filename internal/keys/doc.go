// Package keys writes and reads the RSA signing keys of Gatehouse's own
// token issuers: the dev issuer of `gatehouse dev` and the load generator's.
package keys
