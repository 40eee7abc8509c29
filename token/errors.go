package token

import "errors"

// Errors of the token verifier's configuration and key sources.
var (
	// ErrIssuerConfig is wrapped by every problem IssuerConfig.Validate and
	// NewVerifier report about the issuers configuration.
	ErrIssuerConfig = errors.New("invalid issuer config")
	// ErrKeySource is wrapped when a public_key_file or jwks_file cannot be
	// read or parsed, or holds no usable key (NewVerifier), and when a fetched
	// JWKS document is unusable (IssuerStatus.LastError).
	ErrKeySource = errors.New("unusable key source")
	// ErrJWKSFetch is wrapped when fetching a jwks_url fails: transport
	// error, non-200 status, or a body over 1 MiB. It is never returned by
	// NewVerifier (the first fetch may fail; keys are fetched later) but shows
	// in IssuerStatus.LastError and the logs.
	ErrJWKSFetch = errors.New("fetch jwks")
)

// ErrKey is wrapped by every error of the key parsers (ParsePublicKeys,
// ParsePrivateKey, CheckPublicKey, SigningMethod): not PEM, a private key
// where a public one is expected, an encrypted or unsupported key, an RSA
// key under 2048 bits, or an algorithm that does not fit the key.
var ErrKey = errors.New("unusable key")

// TokenError is the code of an invalid token (SPEC §3), the `error` of
// input.token. It implements error so that it can be matched with errors.Is.
type TokenError string

// The token error codes, in the order the checks are made.
const (
	// TokenMissing: no Authorization header, an empty one, or a non-Bearer scheme.
	TokenMissing TokenError = "missing"
	// TokenMalformed: not three base64url segments of JSON, a claim of the
	// wrong type, an exp/nbf/iat outside [0, 9999-12-31], or no (or an
	// empty) sub.
	TokenMalformed TokenError = "malformed"
	// TokenUnknownIssuer: no iss, or an iss that is not configured.
	TokenUnknownIssuer TokenError = "unknown_issuer"
	// TokenUnsupportedAlgorithm: alg off the issuer's allow-list (incl. none
	// and HS*), or not fitting the key's type or the JWK's own alg.
	TokenUnsupportedAlgorithm TokenError = "unsupported_algorithm"
	// TokenUnknownKey: no key for the kid, even after a JWKS refresh.
	TokenUnknownKey TokenError = "unknown_key"
	// TokenBadSignature: the signature does not verify.
	TokenBadSignature TokenError = "bad_signature"
	// TokenExpired: exp missing, or past beyond the leeway.
	TokenExpired TokenError = "expired"
	// TokenNotYetValid: nbf in the future beyond the leeway.
	TokenNotYetValid TokenError = "not_yet_valid"
	// TokenBadAudience: aud shares no value with the issuer's audiences.
	TokenBadAudience TokenError = "bad_audience"
)

// tokenErrorCodes lists every TokenError, for metrics and shared results.
func tokenErrorCodes() []TokenError {
	return []TokenError{TokenMissing, TokenMalformed, TokenUnknownIssuer, TokenUnsupportedAlgorithm,
		TokenUnknownKey, TokenBadSignature, TokenExpired, TokenNotYetValid, TokenBadAudience}
}

// Error returns "token " followed by the code.
func (e TokenError) Error() string { return "token " + string(e) }
