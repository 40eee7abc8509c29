package bundle

import (
	"errors"

	"github.com/gatehouse-dev/gatehouse/token"
)

// Sentinel errors of policy bundles. Errors returned by OpenBundle, Build
// and PolicySource wrap one of them with the details (file names, hashes,
// the key file), so callers can classify a refusal with errors.Is and show
// the message as is.
var (
	// ErrUnsigned is returned by OpenBundle when the bundle has no
	// .signatures.json (or an empty one) and a signature is required.
	ErrUnsigned = errors.New("bundle is not signed")

	// ErrSignature is returned by OpenBundle when the bundle's JWS does not
	// verify with any configured public key, uses an algorithm off the
	// allow-list (none, HS*, or one that does not fit the key), or carries
	// claims Gatehouse cannot honour (a scope, a signature plugin).
	ErrSignature = errors.New("bundle signature does not verify")

	// ErrTampered is returned by OpenBundle when the files of the bundle do
	// not match the signed list: a file not listed, a listed file missing,
	// a digest mismatch, or a weak or unknown digest algorithm.
	ErrTampered = errors.New("bundle files do not match their signature")

	// ErrBundleFormat is returned by OpenBundle when the tarball cannot be
	// read as an OPA bundle: not gzip/tar, a file too large, an unsafe or
	// duplicate path, an invalid manifest, data outside the manifest roots,
	// a Rego parse error, or content Gatehouse does not evaluate (delta
	// bundles, Wasm and plan modules).
	ErrBundleFormat = errors.New("malformed bundle")

	// ErrKey is returned when a PEM signing or verification key cannot be
	// used: not PEM, encrypted, an unsupported key type, or an algorithm that
	// does not fit the key.
	// It is token.ErrKey: the key parsers are package token's.
	ErrKey = token.ErrKey
)
