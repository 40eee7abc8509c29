package token

import (
	"fmt"
	"net/http"
	"os"
	"strings"
)

// BearerToken extracts the token of an Authorization header value of the
// form "Bearer <token>" (RFC 6750 §2.1). The scheme is matched
// case-insensitively; surrounding whitespace is ignored and the scheme may be
// followed by one or more spaces, after which exactly one token must follow
// (no further spaces). Anything else — an empty value, another scheme,
// "Bearer" alone — is not ok.
func BearerToken(authorization string) (token string, ok bool) {
	const scheme = "bearer"
	h := strings.Trim(authorization, " \t")
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return "", false
	}
	rest := h[len(scheme):]
	if rest[0] != ' ' {
		return "", false // e.g. "Bearerabc" or "Bearer\tabc"
	}
	token = strings.TrimLeft(rest, " ")
	if token == "" || strings.ContainsAny(token, " \t\r\n") {
		return "", false
	}
	return token, true
}

// SetBearer sets the Authorization header from a token file (re-read at
// every request, so the token can be rotated in place); no file, no header.
func SetBearer(req *http.Request, file, what string) error {
	if file == "" {
		return nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return fmt.Errorf("%s: %s is empty", what, file)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return nil
}
