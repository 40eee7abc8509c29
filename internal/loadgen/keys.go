package loadgen

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// KeyID is the kid header of every token the load generator mints.
	KeyID = "bench"
)

// Lifetimes of the tokens kept in a token cache file (PlanOptions.TokenCache).
const (
	// TokenCacheValidity is how long a token minted for the cache is
	// valid (its exp after its iat).
	TokenCacheValidity = 12 * time.Hour
	// TokenCacheMinValidity is how long a cached token must still be valid
	// to be reused.
	TokenCacheMinValidity = time.Hour
)

// garbageToken is what a request with token "garbage" carries: three
// dot-separated segments that are not base64url JSON.
const garbageToken = "not-a-jwt.%%%.garbage"

// minter mints the tokens of one plan. A token is signed once per distinct
// set of claims (clients reuse their token for all their requests, and an
// RSA-2048 signature costs ~1.4 ms); with a cache file, valid tokens are also
// kept across runs.
type minter struct {
	sc   *Scenario
	key  *rsa.PrivateKey
	hmac []byte // when set, tokens are HS256 with this secret instead
	now  time.Time
	// memo maps a request's token identity (tokenIdentity) to its token.
	memo map[string]string
	// cache, when non-nil, is the token cache file's content; keyPrint
	// identifies the signing key in its keys.
	cache     *tokenCacheFile
	cachePath string
	keyPrint  []byte
	dirty     bool
	minted    int
}

// tokenCacheFile is the JSON form of a token cache file.
type tokenCacheFile struct {
	Version int                    `json:"version"`
	Tokens  map[string]cachedToken `json:"tokens"`
}

type cachedToken struct {
	Token string `json:"token"`
	Exp   int64  `json:"exp"`
}

const tokenCacheVersion = 1

func newMinter(sc *Scenario, key *rsa.PrivateKey, secret []byte, now time.Time, cachePath string) (*minter, error) {
	m := &minter{sc: sc, key: key, hmac: secret, now: now, memo: map[string]string{}}
	if cachePath == "" || key == nil && secret == nil {
		return m, nil
	}
	var print [32]byte
	if secret != nil {
		print = sha256.Sum256(append([]byte("HS256\x00"), secret...))
	} else {
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("token cache: %w", err)
		}
		print = sha256.Sum256(pub)
	}
	m.keyPrint, m.cachePath = print[:], cachePath
	m.cache = &tokenCacheFile{Version: tokenCacheVersion, Tokens: map[string]cachedToken{}}
	b, err := os.ReadFile(cachePath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("token cache: %w", err)
	default:
		var f tokenCacheFile
		// An unreadable or other-version file is replaced, not fatal: it
		// only saves time.
		if json.Unmarshal(b, &f) == nil && f.Version == tokenCacheVersion && f.Tokens != nil {
			m.cache = &f
		}
	}
	return m, nil
}

// token returns the bearer token for one scenario request, or "" for none.
func (m *minter) token(r *Request) (string, error) {
	switch r.Token {
	case "", TokenNone:
		return "", nil
	case TokenGarbage:
		return garbageToken, nil
	case TokenValid, TokenExpired:
	default:
		return "", fmt.Errorf("%w: token %q", ErrScenario, r.Token)
	}
	if m.key == nil && m.hmac == nil {
		return "", fmt.Errorf("request %q wants a %s token: %w", r.Name, r.Token, ErrNoSigningKey)
	}
	id, err := m.identity(r)
	if err != nil {
		return "", err
	}
	if tok, ok := m.memo[id]; ok {
		return tok, nil
	}
	_, setsTime := r.Claims["exp"]
	if _, ok := r.Claims["iat"]; ok {
		setsTime = true
	}
	cacheable := m.cache != nil && r.Token == TokenValid && !setsTime
	var ckey string
	if cacheable {
		h := sha256.New()
		h.Write(m.keyPrint)
		h.Write([]byte(id))
		ckey = hex.EncodeToString(h.Sum(nil))
		if c, ok := m.cache.Tokens[ckey]; ok && time.Unix(c.Exp, 0).Sub(m.now) >= TokenCacheMinValidity {
			m.memo[id] = c.Token
			return c.Token, nil
		}
	}
	var iat, exp time.Time
	switch {
	case r.Token == TokenExpired:
		iat, exp = m.now.Add(-2*time.Hour), m.now.Add(-time.Hour)
	case cacheable:
		iat, exp = m.now, m.now.Add(TokenCacheValidity)
	default:
		iat, exp = m.now, m.now.Add(time.Hour)
	}
	claims := jwt.MapClaims{
		"iss": m.sc.Issuer,
		"exp": exp.Unix(),
		"iat": iat.Unix(),
	}
	if m.sc.Audience != "" {
		claims["aud"] = m.sc.Audience
	}
	if r.Subject != "" {
		claims["sub"] = r.Subject
	}
	for k, v := range r.Claims {
		claims[k] = v
	}
	var s string
	if m.hmac != nil {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
		tok.Header["kid"] = KeyID
		s, err = tok.SignedString(m.hmac)
	} else {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
		tok.Header["kid"] = KeyID
		s, err = tok.SignedString(m.key)
	}
	if err != nil {
		return "", fmt.Errorf("sign token for request %q: %w", r.Name, err)
	}
	m.minted++
	m.memo[id] = s
	if cacheable {
		m.cache.Tokens[ckey] = cachedToken{Token: s, Exp: exp.Unix()}
		m.dirty = true
	}
	return s, nil
}

// identity is what makes two requests' tokens the same token: the kind,
// issuer, audience, subject and extra claims.
func (m *minter) identity(r *Request) (string, error) {
	b, err := json.Marshal(struct {
		Kind     string         `json:"k"`
		Issuer   string         `json:"i"`
		Audience string         `json:"a"`
		Subject  string         `json:"s"`
		Claims   map[string]any `json:"c"`
	}{r.Token, m.sc.Issuer, m.sc.Audience, r.Subject, r.Claims})
	if err != nil {
		return "", fmt.Errorf("%w: request %q: claims: %w", ErrScenario, r.Name, err)
	}
	return string(b), nil
}

// save writes the cache file back when tokens were added, without the
// entries that have expired (written to a temporary file, then renamed).
func (m *minter) save() error {
	if m.cache == nil || !m.dirty {
		return nil
	}
	for k, c := range m.cache.Tokens {
		if c.Exp <= m.now.Unix() {
			delete(m.cache.Tokens, k)
		}
	}
	b, err := json.Marshal(m.cache)
	if err != nil {
		return fmt.Errorf("token cache: %w", err)
	}
	dir := filepath.Dir(m.cachePath)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("token cache: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tokens-*")
	if err != nil {
		return fmt.Errorf("token cache: %w", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), m.cachePath)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("token cache: %w", err)
	}
	m.dirty = false
	return nil
}
