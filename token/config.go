package token

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of IssuerConfig.
const (
	defaultTokenLeeway            = 30 * time.Second
	defaultJWKSRefreshInterval    = 5 * time.Minute
	defaultJWKSMinRefreshInterval = 5 * time.Second
	defaultHTTPClientTimeout      = 10 * time.Second
	// maxTokenBytes bounds the raw token accepted for verification; longer
	// tokens are malformed (Envoy's default header limit is 60 KiB anyway).
	maxTokenBytes = 64 << 10
)

// defaultTokenAlgorithms is IssuerConfig.Algorithms when it is empty.
func defaultTokenAlgorithms() []string { return []string{"RS256", "ES256"} }

// tenantIDPattern is the id syntax of SPEC §5, checked on IssuerConfig.Tenant.
var tenantIDPattern = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,128}$`)

// IssuerConfig is one trusted token issuer (the `issuers:` list of the serve
// config). Exactly one of JWKSURL, JWKSFile and PublicKeyFile gives its keys.
// File paths are used as given: the config loader resolves them relative to
// the config file's folder.
type IssuerConfig struct {
	// Issuer is the exact `iss` claim of the issuer's tokens.
	Issuer string `yaml:"issuer"`
	// Audiences, when non-empty, requires the token's `aud` (string or
	// array) to contain at least one of them.
	Audiences []string `yaml:"audiences"`
	// Algorithms is the allow-list of JWS algorithms; default [RS256, ES256].
	// Only RS*, PS*, ES* and EdDSA are accepted: "none" and HS* never.
	Algorithms []string `yaml:"algorithms"`
	// JWKSURL is an http(s) URL serving the issuer's JWK Set.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSFile is a file holding the issuer's JWK Set.
	JWKSFile string `yaml:"jwks_file"`
	// PublicKeyFile is a PEM file with one or more PUBLIC KEY, RSA PUBLIC KEY
	// or CERTIFICATE blocks.
	PublicKeyFile string `yaml:"public_key_file"`
	// Leeway is the clock skew tolerated on exp and nbf. 0 means the
	// default, 30s (for practically no leeway, set 1ns).
	Leeway time.Duration `yaml:"leeway"`
	// Tenant, when set, binds the issuer to a tenant: its tokens act only for
	// users of that tenant (the policy enforces it via tenant_binding).
	Tenant string `yaml:"tenant"`
	// TrustTokenRoles lets the policy take roles from the token for subjects
	// absent from the tenancy data (SPEC §6 step 6).
	TrustTokenRoles bool `yaml:"trust_token_roles"`
	// JWKSRefreshInterval is the period of the jwks_url refresh; default 5m.
	JWKSRefreshInterval time.Duration `yaml:"jwks_refresh_interval"`
	// JWKSMinRefreshInterval rate-limits the refreshes triggered by tokens
	// naming an unknown kid; default 5s.
	JWKSMinRefreshInterval time.Duration `yaml:"jwks_min_refresh_interval"`
}

// SetDefaults fills the unset (zero) fields with their defaults.
func (c *IssuerConfig) SetDefaults() {
	if len(c.Algorithms) == 0 {
		c.Algorithms = defaultTokenAlgorithms()
	}
	if c.Leeway == 0 {
		c.Leeway = defaultTokenLeeway
	}
	if c.JWKSRefreshInterval == 0 {
		c.JWKSRefreshInterval = defaultJWKSRefreshInterval
	}
	if c.JWKSMinRefreshInterval == 0 {
		c.JWKSMinRefreshInterval = defaultJWKSMinRefreshInterval
	}
}

// Validate reports every problem of c, joined; each wraps ErrIssuerConfig and
// names the issuer and the bad value. Unset fields are valid (SetDefaults
// fills them).
func (c IssuerConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: issuer %q: %s", ErrIssuerConfig, c.Issuer, fmt.Sprintf(format, args...)))
	}
	if c.Issuer == "" {
		bad("issuer must not be empty")
	}
	var sources []string
	if c.JWKSURL != "" {
		sources = append(sources, "jwks_url")
	}
	if c.JWKSFile != "" {
		sources = append(sources, "jwks_file")
	}
	if c.PublicKeyFile != "" {
		sources = append(sources, "public_key_file")
	}
	switch len(sources) {
	case 0:
		bad("no key source: set one of jwks_url, jwks_file, public_key_file")
	case 1:
	default:
		bad("more than one key source (%s): set exactly one", strings.Join(sources, ", "))
	}
	if c.JWKSURL != "" {
		u, err := url.Parse(c.JWKSURL)
		switch {
		case err != nil:
			bad("jwks_url %q: %v", c.JWKSURL, err)
		case u.Scheme != "https" && u.Scheme != "http":
			bad("jwks_url %q: scheme must be https or http", c.JWKSURL)
		case u.Host == "":
			bad("jwks_url %q: no host", c.JWKSURL)
		}
	}
	for _, alg := range c.Algorithms {
		switch {
		case AlgorithmSupported(alg):
		case strings.EqualFold(alg, "none"), strings.HasPrefix(strings.ToUpper(alg), "HS"):
			bad("algorithm %q refused: Gatehouse verifies with public keys only (RS*, PS*, ES*, EdDSA)", alg)
		default:
			bad("algorithm %q unsupported (want RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512 or EdDSA)", alg)
		}
	}
	for _, aud := range c.Audiences {
		if aud == "" {
			bad("audiences: empty audience")
		}
	}
	if c.Tenant != "" && !tenantIDPattern.MatchString(c.Tenant) {
		bad("tenant %q: not a valid tenant id", c.Tenant)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"leeway", c.Leeway},
		{"jwks_refresh_interval", c.JWKSRefreshInterval},
		{"jwks_min_refresh_interval", c.JWKSMinRefreshInterval},
	} {
		if d.v < 0 {
			bad("%s %s: must not be negative", d.name, d.v)
		}
	}
	return errors.Join(errs...)
}

// ValidateIssuers reports every problem of an issuer list, joined: each
// issuer's Validate, and an issuer listed twice. Every error wraps
// ErrIssuerConfig. It is the one validation of the `issuers:` lists of the
// serve and control configurations, and NewVerifier's.
func ValidateIssuers(issuers []IssuerConfig) error {
	var errs []error
	seen := make(map[string]bool, len(issuers))
	for _, ic := range issuers {
		errs = append(errs, ic.Validate())
		if ic.Issuer != "" && seen[ic.Issuer] {
			errs = append(errs, fmt.Errorf("%w: issuer %q: listed twice", ErrIssuerConfig, ic.Issuer))
		}
		seen[ic.Issuer] = true
	}
	return errors.Join(errs...)
}

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Issuers are the trusted issuers; none means every token is
	// unknown_issuer.
	Issuers []IssuerConfig
	// CacheSize bounds the cached verified tokens; 0 means 5000, negative
	// disables the cache.
	CacheSize int
	// CacheBytes bounds the accounted size of the cached verified tokens
	// (their claims count, keys are SHA-256 hashes); 0 means 16 MiB,
	// negative disables the cache.
	CacheBytes int64
	// Now is the clock (test hook); default time.Now.
	Now func() time.Time
	// HTTPClient fetches jwks_url (test hook); default a client with a 10s
	// timeout.
	HTTPClient *http.Client
	// Registerer receives the verifier's metrics; nil means no metrics.
	Registerer prometheus.Registerer
}
