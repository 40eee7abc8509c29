package loadgen

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Names of the files WriteKeys creates.
const (
	// SigningKeyFile holds the RSA private key (PKCS #8 PEM).
	SigningKeyFile = "signing.pem"
	// PublicKeyFile holds its public key (PKIX PEM), for the server's issuer
	// configuration.
	PublicKeyFile = "public.pem"
	// KeyID is the kid header of every token the load generator mints.
	KeyID = "bench"
)

// WriteKeys generates an RSA-2048 key pair and writes it to dir (created if
// needed) as SigningKeyFile (mode 0600) and PublicKeyFile. It returns the
// paths written.
func WriteKeys(dir string) (signing, public string, err error) {
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
	signing = filepath.Join(dir, SigningKeyFile)
	public = filepath.Join(dir, PublicKeyFile)
	if err := os.WriteFile(signing, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), 0o600); err != nil {
		return "", "", fmt.Errorf("write signing key: %w", err)
	}
	if err := os.WriteFile(public, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return "", "", fmt.Errorf("write public key: %w", err)
	}
	return signing, public, nil
}

// LoadSigningKey reads an RSA private key from a PEM file (PKCS #8 or
// PKCS #1).
func LoadSigningKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("signing key %q: no PEM block", path)
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("signing key %q: %w", path, err)
		}
		return key, nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("signing key %q: %w", path, err)
		}
		key, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("signing key %q: %T is not an RSA key", path, k)
		}
		return key, nil
	}
	return nil, fmt.Errorf("signing key %q: PEM block %q is not a private key", path, block.Type)
}

// garbageToken is what a request with token "garbage" carries: three
// dot-separated segments that are not base64url JSON.
const garbageToken = "not-a-jwt.%%%.garbage"

// mintToken returns the bearer token for one scenario request, or "" for
// none.
func mintToken(sc *Scenario, r *Request, key *rsa.PrivateKey, now time.Time) (string, error) {
	var exp, iat time.Time
	switch r.Token {
	case "", TokenNone:
		return "", nil
	case TokenGarbage:
		return garbageToken, nil
	case TokenValid:
		iat, exp = now, now.Add(time.Hour)
	case TokenExpired:
		iat, exp = now.Add(-2*time.Hour), now.Add(-time.Hour)
	default:
		return "", fmt.Errorf("%w: token %q", ErrScenario, r.Token)
	}
	if key == nil {
		return "", fmt.Errorf("request %q wants a %s token: %w", r.Name, r.Token, ErrNoSigningKey)
	}
	claims := jwt.MapClaims{
		"iss": sc.Issuer,
		"exp": exp.Unix(),
		"iat": iat.Unix(),
	}
	if sc.Audience != "" {
		claims["aud"] = sc.Audience
	}
	if r.Subject != "" {
		claims["sub"] = r.Subject
	}
	for k, v := range r.Claims {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = KeyID
	s, err := tok.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign token for request %q: %w", r.Name, err)
	}
	return s, nil
}
