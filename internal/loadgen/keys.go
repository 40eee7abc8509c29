package loadgen

import (
	"crypto/rsa"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// KeyID is the kid header of every token the load generator mints.
	KeyID = "bench"
)

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
