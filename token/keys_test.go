package token_test

import (
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/bundle"
	"github.com/gatehouse-dev/gatehouse/token"
)

// TestKeyRulesHaveOneOwner: the public keys of a token issuer
// (public_key_file) and of a bundle signature (policies.bundle's
// public_key_file) go through one parser with one set of rules: an RSA key
// under 2048 bits, an unsupported curve, a private key or an unknown PEM
// block is refused by both, with token.ErrKey; good keys are taken by both.
// (The bundle side used to skip unknown blocks and had no RSA size floor.)
func TestKeyRulesHaveOneOwner(t *testing.T) {
	t.Parallel()
	priv, err := x509.MarshalPKCS8PrivateKey(rsaKeyA())
	if err != nil {
		t.Fatal(err)
	}
	good := append(pemOf(t, &rsaKeyA().PublicKey), pemOf(t, edKeyA().Public())...)
	tests := map[string]struct {
		pem     []byte
		wantErr string // "" = accepted
	}{
		"RSA-2048 and Ed25519": {good, ""},
		"RSA PUBLIC KEY":       {pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKeyA().PublicKey)}), ""},
		"ECDSA P-256":          {pemOf(t, &ecKeyA().PublicKey), ""},
		"RSA-1024":             {pemOf(t, &mustRSA(1024).PublicKey), "smaller than 2048 bits"},
		"RSA-1024 after good":  {append(append([]byte{}, good...), pemOf(t, &mustRSA(1024).PublicKey)...), "smaller than 2048 bits"},
		"ECDSA P-224":          {pemOf(t, &mustEC(elliptic.P224()).PublicKey), "P-224"},
		"private key":          {pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), "give the sidecar only the public key"},
		"unknown block":        {append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42}}), good...), `unsupported type "EC PARAMETERS"`},
		"no PEM":               {[]byte("hello"), "no PEM public key"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			keys, err := token.ParsePublicKeys(tc.pem)
			if err == nil {
				_, err = bundle.NewKeySet(keys, "keys.pem")
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, token.ErrKey) || !errors.Is(err, bundle.ErrKey) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q wrapping ErrKey", err, tc.wantErr)
			}
		})
	}
	t.Run("bundle verifier refuses a small RSA key given directly", func(t *testing.T) {
		t.Parallel()
		small := &mustRSA(1024).PublicKey
		if _, err := bundle.NewKeySet([]crypto.PublicKey{small}, "test"); !errors.Is(err, token.ErrKey) {
			t.Fatalf("NewVerifier(RSA-1024) = %v, want ErrKey", err)
		}
	})
}

// TestAlgorithmTable: the one algorithm table answers for the token
// verifier, the bundle signer and their messages alike.
func TestAlgorithmTable(t *testing.T) {
	t.Parallel()
	algs := token.Algorithms()
	algs[0] = "none" // a copy: the table is not changed
	for _, alg := range []string{"RS256", "PS512", "ES384", "EdDSA"} {
		if !token.AlgorithmSupported(alg) {
			t.Errorf("%s not supported", alg)
		}
	}
	for _, alg := range []string{"none", "HS256", "rs256", ""} {
		if token.AlgorithmSupported(alg) {
			t.Errorf("%q supported", alg)
		}
	}
	tests := map[string]struct {
		pub  any
		want string
	}{
		"RSA":     {&rsaKeyA().PublicKey, "RS256 RS384 RS512 PS256 PS384 PS512"},
		"P-256":   {&ecKeyA().PublicKey, "ES256"},
		"P-521":   {&mustEC(elliptic.P521()).PublicKey, "ES512"},
		"Ed25519": {edKeyA().Public(), "EdDSA"},
		"P-224":   {&mustEC(elliptic.P224()).PublicKey, ""},
	}
	for name, tc := range tests {
		if got := strings.Join(token.AlgorithmsFor(tc.pub), " "); got != tc.want {
			t.Errorf("%s: AlgorithmsFor = %q, want %q", name, got, tc.want)
		}
	}
	if got := token.AlgorithmsFor(&rsaKeyA().PublicKey); cap(got) != len(got) {
		t.Errorf("AlgorithmsFor(RSA) has spare capacity %d: an append would overwrite the table", cap(got)-len(got))
	}
}
