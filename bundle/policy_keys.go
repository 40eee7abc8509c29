package bundle

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

// SigningAlgorithms are the JWS algorithms a bundle signature may use, for
// signing and for verification. "none" and the HMAC algorithms are never
// accepted: a bundle is verified with a public key.
var SigningAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// ParsePrivateKey reads the first private key of a PEM file: PKCS#1 ("RSA
// PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS#8 ("PRIVATE KEY": RSA,
// ECDSA or Ed25519). Encrypted keys are not supported.
func ParsePrivateKey(pemData []byte) (crypto.Signer, error) {
	rest := pemData
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
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
			continue // e.g. EC PARAMETERS before the key
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

// ParsePublicKeys reads every public key of a PEM file: "PUBLIC KEY"
// (PKIX), "RSA PUBLIC KEY" (PKCS#1) or "CERTIFICATE" (its key). Several keys
// let a signing key be rotated: a signature that verifies with any of them
// is accepted.
func ParsePublicKeys(pemData []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	rest := pemData
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var (
			k   any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				k = cert.PublicKey
			}
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%w: a private key (%s) where a public key is expected: give the sidecar only the public key", ErrKey, block.Type)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrKey, block.Type, err)
		}
		switch k := k.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			keys = append(keys, k)
		default:
			return nil, fmt.Errorf("%w: public key of type %T is not RSA, ECDSA or Ed25519", ErrKey, k)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no PEM public key found", ErrKey)
	}
	return keys, nil
}

// signingMethod returns the JWS method for key: alg when given (it must be
// on the allow-list and fit the key), else the natural one for the key
// type (RS256, ES256/ES384/ES512 by curve, EdDSA).
func signingMethod(key crypto.Signer, alg string) (jwt.SigningMethod, error) {
	allowed := methodsFor(key.Public())
	if len(allowed) == 0 {
		return nil, fmt.Errorf("%w: key of type %T cannot sign bundles", ErrKey, key)
	}
	if alg == "" {
		alg = allowed[0]
	}
	if !slices.Contains(SigningAlgorithms, alg) {
		return nil, fmt.Errorf("%w: signing algorithm %q is not one of %s", ErrKey, alg, strings.Join(SigningAlgorithms, ", "))
	}
	if !slices.Contains(allowed, alg) {
		return nil, fmt.Errorf("%w: signing algorithm %s does not fit a %s key (use %s)", ErrKey, alg, keyKind(key.Public()), strings.Join(allowed, ", "))
	}
	m := jwt.GetSigningMethod(alg)
	if m == nil {
		return nil, fmt.Errorf("%w: signing algorithm %s is not available", ErrKey, alg)
	}
	return m, nil
}

// methodsFor lists the algorithms a public key verifies, the default first.
// An ECDSA key verifies only the algorithm of its curve.
func methodsFor(pub crypto.PublicKey) []string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
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

func keyKind(pub crypto.PublicKey) string {
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
