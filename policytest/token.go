package policytest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.yaml.in/yaml/v3"

	"github.com/gatehouse-dev/gatehouse/token"
)

// DefaultIssuer is the issuer of minted tokens when a fixture configures
// none.
const DefaultIssuer = "https://issuer.fixtures.gatehouse.test/"

// fixtureKid is the key id of the per-run signing key in the JWKS file the
// fixture verifier trusts.
const fixtureKid = "gatehouse-fixture"

// IssuerSpec is one trusted issuer of a fixture (`issuers:` in
// fixture.yaml): a subset of the serve configuration's issuer, keyed to the
// per-run signing key.
type IssuerSpec struct {
	// Issuer is the iss of the issuer's tokens.
	Issuer string `yaml:"issuer" json:"issuer"`
	// Audiences, when set, are required in aud; minted tokens carry the first.
	Audiences []string `yaml:"audiences" json:"audiences,omitempty"`
	// Tenant binds the issuer to a tenant (serve's issuers[].tenant).
	Tenant string `yaml:"tenant" json:"tenant,omitempty"`
	// TrustTokenRoles is serve's issuers[].trust_token_roles.
	TrustTokenRoles bool `yaml:"trust_token_roles" json:"trust_token_roles,omitempty"`
}

// TokenSpec describes the bearer token of a fixture case (`token:`). The
// scalar "none" sends no Authorization header.
type TokenSpec struct {
	// None sends no Authorization header.
	None bool `yaml:"-"`
	// Subject is the sub claim.
	Subject string `yaml:"subject"`
	// Issuer is the iss claim; default the fixture's first issuer.
	Issuer string `yaml:"issuer"`
	// Claims are added to (and override) the standard claims.
	Claims map[string]any `yaml:"claims"`
	// Valid false without Error mints a token with a bad signature.
	Valid *bool `yaml:"valid"`
	// Error mints a token that fails verification with this code of
	// input.token.error: missing, malformed, unknown_issuer,
	// unsupported_algorithm, unknown_key, bad_signature, expired,
	// not_yet_valid, bad_audience.
	Error string `yaml:"error"`
}

// UnmarshalYAML accepts "none" or a mapping with the fields above (unknown
// fields are refused).
func (t *TokenSpec) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value == "none" || n.Value == "" {
			*t = TokenSpec{None: true}
			return nil
		}
		return fmt.Errorf("line %d: token: want \"none\" or a mapping (subject, issuer, claims, valid, error)", n.Line)
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i < len(n.Content); i += 2 {
			switch k := n.Content[i].Value; k {
			case "subject", "issuer", "claims", "valid", "error":
			default:
				return fmt.Errorf("line %d: token: unknown field %q (want subject, issuer, claims, valid, error)", n.Content[i].Line, k)
			}
		}
	}
	type plain TokenSpec
	return n.Decode((*plain)(t))
}

// mintableErrors are the token error codes a fixture can ask for.
var mintableErrors = []string{
	string(token.TokenMissing), string(token.TokenMalformed), string(token.TokenUnknownIssuer),
	string(token.TokenUnsupportedAlgorithm), string(token.TokenUnknownKey), string(token.TokenBadSignature),
	string(token.TokenExpired), string(token.TokenNotYetValid), string(token.TokenBadAudience),
}

// minter signs fixture tokens with a key made for the run. The verifier it
// configures trusts that key through a JWKS file: tokens are verified for
// real, exactly as serve verifies them.
type minter struct {
	key, other *rsa.PrivateKey
	jwksFile   string
	now        func() time.Time
}

// newMinter generates the run's keys and writes the JWKS file into dir.
func newMinter(dir string) (*minter, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	jwks := map[string]any{"keys": []any{map[string]any{
		"kty": "RSA", "kid": fixtureKid, "alg": "RS256", "use": "sig",
		"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes()),
	}}}
	b, _ := json.Marshal(jwks)
	file := filepath.Join(dir, "fixture-jwks.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return nil, err
	}
	return &minter{key: key, other: other, jwksFile: file, now: time.Now}, nil
}

// issuers returns the verifier's issuer configuration for specs.
func (m *minter) issuers(specs []IssuerSpec) []token.IssuerConfig {
	return issuerConfigs(specs, m.jwksFile)
}

// issuerConfigs is the verifier's configuration of specs, with jwksFile as
// every issuer's key source.
func issuerConfigs(specs []IssuerSpec, jwksFile string) []token.IssuerConfig {
	out := make([]token.IssuerConfig, 0, len(specs))
	for _, s := range specs {
		c := token.IssuerConfig{
			Issuer:          s.Issuer,
			Audiences:       s.Audiences,
			Algorithms:      []string{"RS256"},
			JWKSFile:        jwksFile,
			Tenant:          s.Tenant,
			TrustTokenRoles: s.TrustTokenRoles,
		}
		c.SetDefaults()
		out = append(out, c)
	}
	return out
}

// authorization returns the Authorization header value for spec ("" = no
// header). specs are the fixture's issuers; the first is the default.
func (m *minter) authorization(spec *TokenSpec, specs []IssuerSpec) (string, error) {
	if spec == nil || spec.None || spec.Error == string(token.TokenMissing) {
		return "", nil
	}
	if spec.Error != "" && !slices.Contains(mintableErrors, spec.Error) {
		return "", fmt.Errorf("token: error %q is not one of %s", spec.Error, strings.Join(mintableErrors, ", "))
	}
	if spec.Error == string(token.TokenMalformed) {
		return "Bearer not-a.jwt", nil
	}
	iss := spec.Issuer
	var is *IssuerSpec
	for i := range specs {
		if iss == "" || specs[i].Issuer == iss {
			is = &specs[i]
			iss = specs[i].Issuer
			break
		}
	}
	now := m.now()
	claims := jwt.MapClaims{
		"iss": iss,
		"iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	if spec.Subject != "" {
		claims["sub"] = spec.Subject
	}
	if is != nil && len(is.Audiences) > 0 {
		claims["aud"] = is.Audiences[0]
	}
	key, method, kid := any(m.key), jwt.SigningMethod(jwt.SigningMethodRS256), fixtureKid
	switch {
	case spec.Error == string(token.TokenExpired):
		claims["iat"] = now.Add(-2 * time.Hour).Unix()
		claims["exp"] = now.Add(-time.Hour).Unix()
	case spec.Error == string(token.TokenNotYetValid):
		claims["nbf"] = now.Add(time.Hour).Unix()
	case spec.Error == string(token.TokenUnknownIssuer):
		if is != nil && spec.Issuer == "" {
			claims["iss"] = "https://unknown.fixtures.gatehouse.test/"
		}
	case spec.Error == string(token.TokenBadAudience):
		if is == nil || len(is.Audiences) == 0 {
			return "", fmt.Errorf("token: error bad_audience needs an issuer with audiences")
		}
		claims["aud"] = "not-" + is.Audiences[0]
	case spec.Error == string(token.TokenUnsupportedAlgorithm):
		key, method = []byte("a shared secret is never accepted"), jwt.SigningMethodHS256
	case spec.Error == string(token.TokenUnknownKey):
		kid = "no-such-key"
	case spec.Error == string(token.TokenBadSignature), spec.Valid != nil && !*spec.Valid:
		key = m.other
	}
	for k, v := range spec.Claims {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(method, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("token: sign: %w", err)
	}
	return "Bearer " + s, nil
}
