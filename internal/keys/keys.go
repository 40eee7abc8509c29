package keys

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gatehouse-dev/gatehouse/token"
)

// Names of the files WriteRSA creates.
const (
	// SigningFile holds the RSA private key (PKCS #8 PEM).
	SigningFile = "signing.pem"
	// PublicFile holds its public key (PKIX PEM), for an issuer's
	// public_key_file.
	PublicFile = "public.pem"
)

// WriteRSA generates an RSA-2048 key pair and writes it to dir (created if
// needed) as SigningFile (mode 0600) and PublicFile. It returns the
// paths written.
func WriteRSA(dir string) (signing, public string, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", fmt.Errorf("generate RSA key: %w", err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("encode private key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", fmt.Errorf("encode public key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("create key folder: %w", err)
	}
	signing = filepath.Join(dir, SigningFile)
	public = filepath.Join(dir, PublicFile)
	if err := os.WriteFile(signing, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), 0o600); err != nil {
		return "", "", fmt.Errorf("write signing key: %w", err)
	}
	if err := os.WriteFile(public, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return "", "", fmt.Errorf("write public key: %w", err)
	}
	return signing, public, nil
}

// LoadRSA reads an RSA private key from a PEM file (token.ParsePrivateKey:
// PKCS #8 or PKCS #1).
func LoadRSA(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	k, err := token.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("signing key %q: %w", path, err)
	}
	key, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %q: %T is not an RSA key", path, k)
	}
	return key, nil
}
