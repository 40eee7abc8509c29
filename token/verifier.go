// verifier.go is long (about 630 lines) on purpose: it is the whole of
// SPEC §3's verification — the Token value the policy sees, issuers, key
// selection, claim checks and error codes — kept in one file so that every
// rule of a bearer token is read in one place.

package token

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/gatehouse-dev/gatehouse/internal/jsonsize"
	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
)

// Token is the verification result. It is immutable once returned and may be
// shared between goroutines: callers must not modify it, its Claims, or the
// value returned by Value.
type Token struct {
	// Valid is true when the token verified.
	Valid bool
	// Error is the code when !Valid, "" when Valid.
	Error TokenError
	// Issuer is the verified iss.
	Issuer string
	// Subject is the verified sub ("" when absent).
	Subject string
	// Claims are the claims of a Token built by hand (numbers as
	// json.Number), from which Value builds input.token.claims. A Verifier's
	// tokens leave it nil: they carry their claims once, in Value (a cached
	// token would otherwise hold them twice); ClaimsMap reads either.
	Claims map[string]any
	// TenantBinding is the issuer's tenant, "" when unbound.
	TenantBinding string
	// TrustTokenRoles is the issuer's trust_token_roles.
	TrustTokenRoles bool
	// ExpiresAt is the verified exp.
	ExpiresAt time.Time

	value ast.Value // input.token, built once by the Verifier
	// claimsSize is the JSON size of the claims value holds (a Verifier's
	// tokens), for the cache's accounting.
	claimsSize int
}

// Value returns input.token as an OPA value:
//
//	{"valid": true, "issuer": ..., "subject": ..., "claims": {...}, "tenant_binding": "...", "trust_token_roles": bool}
//	{"valid": false, "error": "<code>"}
//
// For tokens returned by a Verifier it is built once, at verification; a
// Token built by hand computes it on each call. A nil Token is "missing".
func (t *Token) Value() ast.Value {
	if t == nil {
		return invalidTokenValue(TokenMissing)
	}
	if t.value != nil {
		return t.value
	}
	return buildTokenValue(t)
}

// buildTokenValue builds input.token for t.
func buildTokenValue(t *Token) ast.Value {
	if !t.Valid {
		code := t.Error
		if code == "" {
			code = TokenMalformed
		}
		return invalidTokenValue(code)
	}
	v, err := validTokenValue(t, t.Claims)
	if err != nil {
		// Unreachable for JSON-decoded claims; fail closed.
		return invalidTokenValue(TokenMalformed)
	}
	return v
}

// ClaimsMap returns the token's claims as JSON values (numbers as
// json.Number): Claims when set, else decoded from Value (a Verifier's
// tokens). nil for an invalid token.
func (t *Token) ClaimsMap() map[string]any {
	if t == nil || !t.Valid {
		return nil
	}
	if t.Claims != nil || t.value == nil {
		return t.Claims
	}
	obj, _ := t.value.(ast.Object)
	if obj == nil {
		return nil
	}
	c := obj.Get(termClaims)
	if c == nil {
		return nil
	}
	x, err := ast.JSON(c.Value)
	if err != nil {
		return nil
	}
	m, _ := x.(map[string]any)
	return m
}

// The keys of input.token and the claim names most tokens carry, shared by
// every token's value: a cached token then holds only what is its own.
var (
	termValid           = ast.StringTerm("valid")
	termError           = ast.StringTerm("error")
	termIssuer          = ast.StringTerm("issuer")
	termSubject         = ast.StringTerm("subject")
	termClaims          = ast.StringTerm("claims")
	termTenantBinding   = ast.StringTerm("tenant_binding")
	termTrustTokenRoles = ast.StringTerm("trust_token_roles")
	termTrue            = ast.BooleanTerm(true)
	termFalse           = ast.BooleanTerm(false)
	termEmpty           = ast.StringTerm("")

	claimNameTerms = func() map[string]*ast.Term {
		m := map[string]*ast.Term{}
		for _, n := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "scope", "scp", "tenant", "roles", "groups", "authorization", "email", "name", "client_id"} {
			m[n] = ast.StringTerm(n)
		}
		return m
	}()
)

// boolTerm is the shared term of b.
func boolTerm(b bool) *ast.Term {
	if b {
		return termTrue
	}
	return termFalse
}

// stringTerm is a term of s, the shared one when s is "".
func stringTerm(s string) *ast.Term {
	if s == "" {
		return termEmpty
	}
	return ast.StringTerm(s)
}

// claimsValue converts JSON-decoded claims to an OPA object. The names of
// common claims use shared terms; the values are converted as
// ast.InterfaceToValue does.
func claimsValue(claims map[string]any) (ast.Value, error) {
	obj := ast.NewObjectWithCapacity(len(claims))
	for k, x := range claims {
		key := claimNameTerms[k]
		if key == nil {
			key = ast.StringTerm(k)
		}
		var val *ast.Term
		switch x := x.(type) {
		case string:
			val = stringTerm(x)
		case bool:
			val = boolTerm(x)
		default:
			v, err := ast.InterfaceToValue(x)
			if err != nil {
				return nil, err
			}
			val = ast.NewTerm(v)
		}
		obj.Insert(key, val)
	}
	return obj, nil
}

// validTokenValue builds input.token for a valid t from claims (t.Claims
// for a Token built by hand).
func validTokenValue(t *Token, claims map[string]any) (ast.Value, error) {
	c, err := claimsValue(claims)
	if err != nil {
		return nil, err
	}
	return ast.NewObject(
		[2]*ast.Term{termValid, termTrue},
		[2]*ast.Term{termIssuer, stringTerm(t.Issuer)},
		[2]*ast.Term{termSubject, stringTerm(t.Subject)},
		[2]*ast.Term{termClaims, ast.NewTerm(c)},
		[2]*ast.Term{termTenantBinding, stringTerm(t.TenantBinding)},
		[2]*ast.Term{termTrustTokenRoles, boolTerm(t.TrustTokenRoles)},
	), nil
}

// invalidTokenValue is {"valid": false, "error": code}.
func invalidTokenValue(code TokenError) ast.Value {
	return ast.NewObject(
		[2]*ast.Term{termValid, termFalse},
		[2]*ast.Term{termError, ast.StringTerm(string(code))},
	)
}

// IssuerStatus is the key state of one issuer, for /v1/status and logs.
type IssuerStatus struct {
	// Issuer is the configured iss.
	Issuer string `json:"issuer"`
	// KeyCount is the number of usable keys held now.
	KeyCount int `json:"key_count"`
	// LastRefresh is when the keys were last loaded successfully (zero if never).
	LastRefresh time.Time `json:"last_refresh"`
	// LastError is the error of the last load, "" after a success.
	LastError string `json:"last_error"`
}

// tokenIssuer is one configured issuer, ready to verify.
type tokenIssuer struct {
	cfg       IssuerConfig
	validator *jwt.Validator // exp (required), nbf, with the issuer's leeway
	keys      *issuerKeys
}

// allows reports whether alg is on the issuer's allow-list.
func (is *tokenIssuer) allows(alg string) bool {
	return AlgorithmSupported(alg) && slices.Contains(is.cfg.Algorithms, alg)
}

// Verifier verifies bearer JWTs against the configured issuers and caches the
// successful verifications.
//
// # Concurrency
//
// Verify, VerifyHeader and Status are safe for concurrent use, including
// while Run refreshes keys.
type Verifier struct {
	logger  *slog.Logger
	now     func() time.Time
	parser  *jwt.Parser
	issuers map[string]*tokenIssuer
	ordered []*tokenIssuer // config order, for Status and Run
	cache   *tokenCache    // nil when disabled
	metrics *tokenMetrics  // nil without a Registerer
	invalid map[TokenError]*Token
}

// NewVerifier validates cfg, loads the PEM and JWKS files and makes a first
// fetch of every jwks_url. A failed fetch is not fatal: it is logged at Warn
// and the keys are fetched on demand and by Run later. logger may be nil.
func NewVerifier(cfg VerifierConfig, logger *slog.Logger) (*Verifier, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	v := &Verifier{
		logger:  logger,
		now:     cfg.Now,
		parser:  jwt.NewParser(jwt.WithJSONNumber(), jwt.WithoutClaimsValidation()),
		issuers: make(map[string]*tokenIssuer, len(cfg.Issuers)),
		cache:   newTokenCache(cfg.CacheSize, cfg.CacheBytes),
		invalid: make(map[TokenError]*Token),
	}
	if v.now == nil {
		v.now = time.Now
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: defaultHTTPClientTimeout, CheckRedirect: refuseSchemeDowngrade}
	}
	for _, code := range tokenErrorCodes() {
		t := &Token{Error: code}
		t.value = buildTokenValue(t)
		v.invalid[code] = t
	}
	if cfg.Registerer != nil {
		m, err := newTokenMetrics(cfg.Registerer)
		if err != nil {
			return nil, err
		}
		v.metrics = m
	}

	issuers := make([]IssuerConfig, len(cfg.Issuers))
	for i, ic := range cfg.Issuers {
		ic.Algorithms = slices.Clone(ic.Algorithms)
		ic.Audiences = slices.Clone(ic.Audiences)
		ic.SetDefaults()
		issuers[i] = ic
	}
	if err := ValidateIssuers(issuers); err != nil {
		return nil, err
	}
	var errs []error
	for _, ic := range issuers {
		is := &tokenIssuer{
			cfg: ic,
			validator: jwt.NewValidator(jwt.WithLeeway(ic.Leeway), jwt.WithExpirationRequired(),
				jwt.WithTimeFunc(v.now)),
		}
		is.keys = &issuerKeys{
			issuer:      ic.Issuer,
			url:         ic.JWKSURL,
			client:      client,
			minInterval: ic.JWKSMinRefreshInterval,
			now:         v.now,
			logger:      logger,
			onChange:    v.keysChanged,
			onResult:    v.refreshResult(ic.Issuer),
		}
		is.keys.set.Store(newKeySet(nil))
		if err := v.loadStaticKeys(is); err != nil {
			errs = append(errs, err)
			continue
		}
		v.issuers[ic.Issuer] = is
		v.ordered = append(v.ordered, is)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	var wg sync.WaitGroup
	for _, is := range v.ordered {
		if is.cfg.JWKSURL != "" {
			wg.Go(func() { _ = is.keys.refresh(context.Background(), false) })
		}
	}
	wg.Wait()
	for _, is := range v.ordered {
		v.logIssuer(is)
	}
	return v, nil
}

// refuseSchemeDowngrade is the redirect policy of the default JWKS client:
// at most 5 redirects, never from https to http (keys fetched over https
// must not be replaceable by a network attacker through a redirect).
func refuseSchemeDowngrade(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("stopped after 5 redirects")
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refused redirect from https to %s", req.URL.Scheme)
	}
	return nil
}

// loadStaticKeys loads a public_key_file or jwks_file.
func (v *Verifier) loadStaticKeys(is *tokenIssuer) error {
	var (
		path, kind string
		isJWKS     bool
	)
	switch {
	case is.cfg.PublicKeyFile != "":
		path, kind = is.cfg.PublicKeyFile, "public_key_file"
	case is.cfg.JWKSFile != "":
		path, kind, isJWKS = is.cfg.JWKSFile, "jwks_file", true
	default:
		return nil
	}
	keys, err := loadKeyFile(path, isJWKS, v.logger, is.cfg.Issuer)
	if err != nil {
		return fmt.Errorf("%w: load %s %q for issuer %q: %w", ErrKeySource, kind, path, is.cfg.Issuer, err)
	}
	is.keys.set.Store(newKeySet(keys))
	is.keys.lastRefresh = v.now()
	return nil
}

// logIssuer logs an issuer's key state once at start, warning when no key
// fits any allowed algorithm (every token would be unsupported_algorithm).
func (v *Verifier) logIssuer(is *tokenIssuer) {
	keys := is.keys.keys().keys
	fitting := 0
	for _, k := range keys {
		if slices.ContainsFunc(is.cfg.Algorithms, k.fits) {
			fitting++
		}
	}
	if u, err := url.Parse(is.cfg.JWKSURL); err == nil && u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		v.logger.Warn("jwks_url is plain http: keys can be replaced by anyone on the path", "issuer", is.cfg.Issuer)
	}
	if len(keys) > 0 && fitting == 0 {
		v.logger.Warn("no key of the issuer fits its algorithms", "issuer", is.cfg.Issuer,
			"algorithms", is.cfg.Algorithms, "key_count", len(keys))
		return
	}
	v.logger.Info("token issuer configured", "issuer", is.cfg.Issuer, "key_count", len(keys),
		"algorithms", is.cfg.Algorithms, "tenant", is.cfg.Tenant)
}

// isLoopbackHost reports whether host is localhost or a loopback address.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// keysChanged runs after any issuer's key set changed: cached results may
// rest on a removed key, so they are all dropped.
func (v *Verifier) keysChanged() {
	if v.cache != nil {
		v.cache.invalidate()
	}
}

// refreshResult returns the metrics hook of one issuer's JWKS fetches.
func (v *Verifier) refreshResult(issuer string) func(bool) {
	if v.metrics == nil {
		return nil
	}
	ok := v.metrics.refreshes.WithLabelValues(issuer, "ok")
	failed := v.metrics.refreshes.WithLabelValues(issuer, "error")
	return func(success bool) {
		if success {
			ok.Inc()
		} else {
			failed.Inc()
		}
	}
}

// Run refreshes every jwks_url periodically (JWKSRefreshInterval; sooner
// after a failure) until ctx is done, and then returns nil. Fetches started
// on demand by Verify are not waited for; each is bounded by 10s.
func (v *Verifier) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, is := range v.ordered {
		if is.cfg.JWKSURL != "" {
			wg.Go(func() { is.keys.run(ctx, is.cfg.JWKSRefreshInterval) })
		}
	}
	wg.Wait()
	return nil
}

// Status returns the key state of every issuer, in configuration order.
func (v *Verifier) Status() []IssuerStatus {
	out := make([]IssuerStatus, 0, len(v.ordered))
	for _, is := range v.ordered {
		out = append(out, is.keys.status())
	}
	return out
}

// VerifyHeader verifies the bearer token of an Authorization header value:
// no header, an empty one or another scheme is "missing".
func (v *Verifier) VerifyHeader(ctx context.Context, authorization string) *Token {
	raw, ok := BearerToken(authorization)
	if !ok {
		return v.count(v.invalid[TokenMissing])
	}
	return v.Verify(ctx, raw)
}

// Verify verifies raw (the token text, without "Bearer "). It never returns
// nil. A successful result is cached until the token's exp (at most 10
// minutes, and only while no issuer's key set changes).
func (v *Verifier) Verify(ctx context.Context, raw string) *Token {
	if raw == "" {
		return v.count(v.invalid[TokenMissing])
	}
	if len(raw) > maxTokenBytes {
		return v.count(v.invalid[TokenMalformed])
	}
	now := v.now()
	var (
		key tokenCacheKey
		gen uint64
	)
	if v.cache != nil {
		key = tokenCacheKeyOf(raw)
		if t := v.cache.get(key, now); t != nil {
			if v.metrics != nil {
				v.metrics.cacheHits.Inc()
			}
			return v.count(t)
		}
		gen = v.cache.generation()
	}
	t := v.verify(ctx, raw)
	if t.Valid && v.cache != nil {
		v.cache.put(gen, key, t, now)
	}
	return v.count(t)
}

// count records t in the metrics and returns it.
func (v *Verifier) count(t *Token) *Token {
	if v.metrics != nil {
		v.metrics.results[t.Error].Inc()
	}
	return t
}

// reject returns the shared result of code, logging why at Debug (never the
// token itself).
func (v *Verifier) reject(ctx context.Context, code TokenError, err error) *Token {
	if err != nil && v.logger.Enabled(ctx, slog.LevelDebug) {
		v.logger.DebugContext(ctx, "token rejected", "code", string(code), "err", err)
	}
	return v.invalid[code]
}

// verify does the full verification of raw.
func (v *Verifier) verify(ctx context.Context, raw string) *Token {
	var is *tokenIssuer
	claims := jwt.MapClaims{}
	keyfunc := func(t *jwt.Token) (any, error) {
		var (
			key any
			err error
		)
		is, key, err = v.selectKey(ctx, t)
		return key, err
	}
	parsed, err := v.parser.ParseWithClaims(raw, claims, keyfunc)
	if err != nil {
		return v.reject(ctx, v.classifyParseError(parsed, err), err)
	}
	if is == nil { // unreachable: the keyfunc ran and succeeded
		return v.reject(ctx, TokenUnknownIssuer, errors.New("no issuer selected"))
	}
	// The signature verified: the claims below are trustworthy.
	if err := checkSegments(raw); err != nil {
		return v.reject(ctx, TokenMalformed, err)
	}
	if err := checkNumericDates(claims); err != nil {
		return v.reject(ctx, TokenMalformed, err)
	}
	if err := is.validator.Validate(claims); err != nil {
		switch {
		case errors.Is(err, jwt.ErrInvalidType):
			return v.reject(ctx, TokenMalformed, err)
		case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
			return v.reject(ctx, TokenExpired, err)
		case errors.Is(err, jwt.ErrTokenNotValidYet):
			return v.reject(ctx, TokenNotYetValid, err)
		default:
			return v.reject(ctx, TokenMalformed, err)
		}
	}
	if len(is.cfg.Audiences) > 0 {
		aud, err := claims.GetAudience()
		if err != nil {
			return v.reject(ctx, TokenMalformed, err)
		}
		if !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }) {
			return v.reject(ctx, TokenBadAudience, fmt.Errorf("aud %q not among %q", aud, is.cfg.Audiences))
		}
	}
	sub, err := claims.GetSubject()
	if err != nil {
		return v.reject(ctx, TokenMalformed, err)
	}
	if sub == "" {
		// Every decision acts for a subject: a token naming none would be
		// a user with an empty id (and, with trust_token_roles, roles).
		return v.reject(ctx, TokenMalformed, errors.New("no sub"))
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return v.reject(ctx, TokenExpired, err)
	}
	t := &Token{
		Valid:           true,
		Issuer:          is.cfg.Issuer,
		Subject:         sub,
		TenantBinding:   is.cfg.Tenant,
		TrustTokenRoles: is.cfg.TrustTokenRoles,
		ExpiresAt:       exp.Time,
	}
	t.claimsSize = jsonsize.Of(map[string]any(claims))
	if t.value, err = validTokenValue(t, claims); err != nil {
		return v.reject(ctx, TokenMalformed, err)
	}
	return t
}

// checkSegments checks that the header and the payload of raw (already
// parsed and verified) are each exactly one JSON object: golang-jwt decodes
// the first value and ignores what follows, so `{"sub":"a"}{"sub":"b"}` or
// trailing bytes would verify while other readers of the same token see
// other claims or refuse it.
//
// Each segment is decoded into a buffer on the stack when it fits (tokens
// are a few hundred bytes), read in place (Decode only reads its source).
func checkSegments(raw string) error {
	var stack [2048]byte
	rest := raw
	for i := range 2 {
		seg, after, _ := strings.Cut(rest, ".")
		rest = after
		buf := stack[:]
		if n := base64.RawURLEncoding.DecodedLen(len(seg)); n > len(buf) {
			buf = make([]byte, n)
		}
		n, err := base64.RawURLEncoding.Decode(buf, unsafe.Slice(unsafe.StringData(seg), len(seg)))
		if err != nil {
			return fmt.Errorf("segment %d: %w", i, err)
		}
		if !json.Valid(buf[:n]) {
			return fmt.Errorf("segment %d: not exactly one JSON value", i)
		}
	}
	return nil
}

// maxNumericDate is the latest NumericDate accepted in exp, nbf and iat:
// 9999-12-31T23:59:59Z. Later values are not dates anyone issues, and
// beyond int64 seconds they would wrap into the past when converted.
const maxNumericDate = 253402300799

// checkNumericDates checks that exp, nbf and iat, when present, are numbers
// within [0, maxNumericDate]: a NaN, infinite, negative or huge date is
// malformed, never compared (golang-jwt converts float seconds to int64, and
// 1e19 wraps to a date in the past: an nbf that always passes).
func checkNumericDates(claims jwt.MapClaims) error {
	for _, name := range [...]string{"exp", "nbf", "iat"} {
		v, ok := claims[name]
		if !ok {
			continue
		}
		var f float64
		switch n := v.(type) {
		case json.Number:
			var err error
			if f, err = strconv.ParseFloat(string(n), 64); err != nil {
				return fmt.Errorf("%s %q: %w", name, string(n), err)
			}
		case float64:
			f = n
		default:
			return fmt.Errorf("%s is a %T, not a number", name, v)
		}
		if math.IsNaN(f) || f < 0 || f > maxNumericDate {
			return fmt.Errorf("%s %v is outside [0, %d]", name, f, maxNumericDate)
		}
	}
	return nil
}

// selectKey is the Keyfunc: it picks the issuer from the (not yet verified)
// iss, checks alg against the issuer's allow-list, and returns the issuer's
// keys that may verify the token. Its errors are TokenErrors. Keys named by
// the token itself (jwk, jku, x5u, x5c headers) are never used.
func (v *Verifier) selectKey(ctx context.Context, t *jwt.Token) (*tokenIssuer, any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515 §4.1.11: critical extensions must be understood; we
		// understand none.
		return nil, nil, fmt.Errorf("%w: crit header present", TokenMalformed)
	}
	claims, _ := t.Claims.(jwt.MapClaims)
	iss, _ := claims["iss"].(string)
	is := v.issuers[iss]
	if is == nil {
		return nil, nil, fmt.Errorf("%w: iss %q", TokenUnknownIssuer, iss)
	}
	alg := t.Method.Alg()
	if !is.allows(alg) {
		return nil, nil, fmt.Errorf("%w: alg %q not allowed for issuer %q", TokenUnsupportedAlgorithm, alg, iss)
	}
	kid := ""
	if k, present := t.Header["kid"]; present {
		s, ok := k.(string)
		if !ok {
			return nil, nil, fmt.Errorf("%w: kid is not a string", TokenMalformed)
		}
		kid = s
	}
	set := is.keys.keys()
	cands := set.withKid(kid)
	if len(cands) == 0 && is.cfg.JWKSURL != "" {
		_ = is.keys.refresh(ctx, true)
		set = is.keys.keys()
		cands = set.withKid(kid)
	}
	if len(cands) == 0 && kid != "" {
		cands = set.withoutKid()
	}
	if len(cands) == 0 {
		return nil, nil, fmt.Errorf("%w: no key for kid %q of issuer %q", TokenUnknownKey, kid, iss)
	}
	var fit []jwt.VerificationKey
	for _, k := range cands {
		if k.fits(alg) {
			fit = append(fit, k.pub)
		}
	}
	switch len(fit) {
	case 0:
		return nil, nil, fmt.Errorf("%w: no key for kid %q of issuer %q fits alg %q", TokenUnsupportedAlgorithm, kid, iss, alg)
	case 1:
		return is, fit[0], nil
	default:
		return is, jwt.VerificationKeySet{Keys: fit}, nil
	}
}

// classifyParseError maps an error of ParseWithClaims to its code, keeping
// the order of SPEC §3: malformed, unknown_issuer, unsupported_algorithm,
// unknown_key, bad_signature.
func (v *Verifier) classifyParseError(parsed *jwt.Token, err error) TokenError {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed), errors.Is(err, TokenMalformed):
		return TokenMalformed
	case errors.Is(err, TokenUnknownIssuer):
		return TokenUnknownIssuer
	case errors.Is(err, TokenUnsupportedAlgorithm):
		return TokenUnsupportedAlgorithm
	case errors.Is(err, TokenUnknownKey):
		return TokenUnknownKey
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return TokenBadSignature
	case errors.Is(err, jwt.ErrTokenUnverifiable) && parsed != nil:
		// The keyfunc did not run: the alg header is missing or names an
		// algorithm golang-jwt does not know. The rest of the token was
		// not checked yet, so check it here to keep the order of codes.
		alg, ok := parsed.Header["alg"].(string)
		if !ok || alg == "" {
			return TokenMalformed
		}
		if parts := strings.Split(parsed.Raw, "."); len(parts) != 3 {
			return TokenMalformed
		} else if _, err := v.parser.DecodeSegment(parts[2]); err != nil {
			return TokenMalformed
		}
		claims, _ := parsed.Claims.(jwt.MapClaims)
		iss, _ := claims["iss"].(string)
		if v.issuers[iss] == nil {
			return TokenUnknownIssuer
		}
		return TokenUnsupportedAlgorithm
	default:
		return TokenMalformed
	}
}
