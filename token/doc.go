// Package token owns every rule about bearer tokens and keys: the trusted
// issuers' configuration (IssuerConfig, ValidateIssuers), the Verifier of
// bearer JWTs (SPEC §3) with its verified-token cache, the issuers' key
// sources (PEM files, JWKS files, jwks_url refreshed in the background) and
// the key parsers and algorithm tables shared by the sidecar, the control
// endpoint and bundle signing.
//
// Only asymmetric JWS algorithms are accepted (RS*, PS*, ES*, EdDSA): "none"
// and HS* never. RSA keys are at least 2048 bits. Keys named by a token
// itself (jwk, jku, x5u, x5c headers) are never used. A jwks_url over https
// is never redirected to http.
//
// # Concurrency
//
// A Verifier is safe for concurrent use, including while Run refreshes the
// keys. A Token it returns is immutable and shared.
//
// # Errors
//
// Verification never fails with an error: an invalid token is a Token with
// Valid false and one of the TokenError codes, which policies read as
// input.token.error. Configuration and key-source problems wrap
// ErrIssuerConfig or ErrKeySource; JWKS fetch failures wrap ErrJWKSFetch and
// show in IssuerStatus.LastError.
package token
