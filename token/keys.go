package token

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// minRSABits is the smallest RSA modulus accepted, for tokens and bundles.
const minRSABits = 2048

// algorithms are the JWS algorithms Gatehouse signs and verifies with:
// asymmetric signatures only ("none" and HS* never).
var algorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// rsaAlgorithms are the algorithms of an RSA key, the default first.
var rsaAlgorithms = algorithms[:6:6]

// Algorithms returns the JWS algorithms Gatehouse accepts anywhere (token
// issuers' allow-lists, bundle signatures), in a new slice.
func Algorithms() []string { return slices.Clone(algorithms) }

// AlgorithmSupported reports whether alg is one of Algorithms.
func AlgorithmSupported(alg string) bool { return slices.Contains(algorithms, alg) }

// AlgorithmsFor lists the algorithms pub may verify (and its private key
// sign), the default first: RS256 and the other RS*/PS* for RSA, the one
// algorithm of an ECDSA key's curve, EdDSA for Ed25519. It is nil for any
// other key. It does not check sizes (see CheckPublicKey). The result is
// shared: callers must not modify it.
func AlgorithmsFor(pub crypto.PublicKey) []string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return rsaAlgorithms
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}
		case elliptic.P384():
			return []string{"ES384"}
		case elliptic.P521():
			return []string{"ES512"}
		}
	case ed25519.PublicKey:
		return []string{"EdDSA"}
	}
	return nil
}

// KeyKind names the type of pub for messages: "RSA", "ECDSA P-256",
// "Ed25519".
func KeyKind(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return "RSA"
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// CheckPublicKey checks that pub is a key type and size Gatehouse accepts:
// RSA of at least 2048 bits, ECDSA on P-256, P-384 or P-521, Ed25519.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N == nil || p.N.BitLen() < minRSABits {
			return fmt.Errorf("%w: RSA key smaller than %d bits", ErrKey, minRSABits)
		}
	case *ecdsa.PublicKey:
		if AlgorithmsFor(p) == nil {
			return fmt.Errorf("%w: unsupported ECDSA curve %s", ErrKey, p.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		if len(p) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: Ed25519 key of wrong size", ErrKey)
		}
	default:
		return fmt.Errorf("%w: unsupported public key type %T (want RSA, ECDSA or Ed25519)", ErrKey, pub)
	}
	return nil
}

// ParsePublicKeys parses one or more PEM blocks of type PUBLIC KEY (PKIX),
// RSA PUBLIC KEY (PKCS #1) or CERTIFICATE (only its public key is used: the
// certificate's validity and chain are not checked), each checked by
// CheckPublicKey. Any other block is an error, so a private key handed by
// mistake is refused rather than skipped. Several keys let a key be rotated.
func ParsePublicKeys(data []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var (
			pub any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE") {
				return nil, fmt.Errorf("%w: PEM block %d: a private key (%s) where a public key is expected: give the sidecar only the public key", ErrKey, n, block.Type)
			}
			return nil, fmt.Errorf("%w: PEM block %d: unsupported type %q (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", ErrKey, n, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: PEM block %d (%s): %w", ErrKey, n, block.Type, err)
		}
		if err := CheckPublicKey(pub); err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): %w", n, block.Type, err)
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no PEM public key found", ErrKey)
	}
	return keys, nil
}

// ParsePrivateKey reads the first private key of a PEM file: PKCS #1 ("RSA
// PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS #8 ("PRIVATE KEY": RSA,
// ECDSA or Ed25519). Other blocks before it (e.g. EC PARAMETERS) are
// skipped. Encrypted keys are not supported.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%w: no PEM private key found", ErrKey)
		}
		var (
			k   any
			err error
		)
		switch block.Type {
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%w: encrypted private keys are not supported", ErrKey)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrKey, block.Type, err)
		}
		switch k := k.(type) {
		case *rsa.PrivateKey:
			return k, nil
		case *ecdsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("%w: private key of type %T is not RSA, ECDSA or Ed25519", ErrKey, k)
	}
}

// SigningMethod returns the JWS method for key: alg when given (it must be
// one of Algorithms and fit the key), else the key's default (RS256,
// ES256/ES384/ES512 by curve, EdDSA).
func SigningMethod(key crypto.Signer, alg string) (jwt.SigningMethod, error) {
	allowed := AlgorithmsFor(key.Public())
	if len(allowed) == 0 {
		return nil, fmt.Errorf("%w: key of type %T cannot sign", ErrKey, key)
	}
	if alg == "" {
		alg = allowed[0]
	}
	if !AlgorithmSupported(alg) {
		return nil, fmt.Errorf("%w: signing algorithm %q is not one of %s", ErrKey, alg, strings.Join(algorithms, ", "))
	}
	if !slices.Contains(allowed, alg) {
		return nil, fmt.Errorf("%w: signing algorithm %s does not fit a %s key (use %s)", ErrKey, alg, KeyKind(key.Public()), strings.Join(allowed, ", "))
	}
	m := jwt.GetSigningMethod(alg)
	if m == nil {
		return nil, fmt.Errorf("%w: signing algorithm %s is not available", ErrKey, alg)
	}
	return m, nil
}
