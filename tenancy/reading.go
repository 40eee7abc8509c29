package tenancy

import (
	"strings"
)

// Reading is the tenant a request names (SPEC §6 step 3): a valid id
// (Named), none (the caller's home tenant), or something that is not a
// tenant an upstream would read the same way (Invalid says why: the
// reason tenant_unknown).
type Reading struct {
	Tenant  string
	Named   bool
	Invalid string
}

// Why a raw path names no valid tenant (the deny's message says it).
const (
	PathAmbiguous     = "the path could be read as another tenant (dot segment, //, \\, ; or percent-encoding)"
	PathInvalidTenant = "the path's tenant segment is not a valid tenant id"
)

// PathTenant reads the tenant a raw request path names (Envoy's :path as
// the client sent it, never decoded or normalized; the query, from the
// first "?", never counts): a first segment "t" in any case names the
// tenant in the second segment ("/t" names none, "/t/" an empty, invalid
// one); a path an upstream could read differently is invalid, whatever it
// seems to name (see ambiguous).
func PathTenant(path string) Reading {
	raw, _, _ := strings.Cut(path, "?")
	if ambiguous(raw) {
		return Reading{Invalid: PathAmbiguous}
	}
	if len(raw) < 3 || raw[1] != 't' && raw[1] != 'T' || raw[2] != '/' {
		return Reading{}
	}
	x, _, _ := strings.Cut(raw[3:], "/")
	if !validID(x) { // "." and ".." segments are ambiguous already
		return Reading{Invalid: PathInvalidTenant}
	}
	return Reading{Tenant: x, Named: true}
}

// ambiguous reports whether an upstream (or a proxy between) could read a
// raw path as another path than Gatehouse does: not an origin-form path
// ("", "*", "t/x", "http://..."); "//" (merged by many readers); "\" (read
// as "/" by some); ";" (path parameters, cut by some); an encoded ".",
// "/", "\" or ";" in either hex case; a "." or ".." segment (resolved by
// most); any percent-encoding in the first two segments ("t" and the
// tenant could be spelled otherwise). It is the regular expression
// ^$|^[^/]|//|\\|;|%(?:2[eEfF]|5[cC]|3[bB])|/\.\.?(?:/|$)|^/[^/]*(?:/[^/]*)?%
// written out.
func ambiguous(raw string) bool {
	if raw == "" || raw[0] != '/' {
		return true
	}
	slashes := 0 // the "/" seen so far: the first two segments end at the third
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '/':
			slashes++
			if i+1 < len(raw) && raw[i+1] == '/' {
				return true
			}
			if dotSegment(raw[i+1:]) {
				return true
			}
		case '\\', ';':
			return true
		case '%':
			if slashes < 3 {
				return true
			}
			if i+2 < len(raw) {
				h, l := raw[i+1], raw[i+2]|0x20 // the second hex digit in either case
				if h == '2' && (l == 'e' || l == 'f') || h == '5' && l == 'c' || h == '3' && l == 'b' {
					return true
				}
			}
		}
	}
	return false
}

// dotSegment reports whether rest (what follows a "/") starts with a "."
// or ".." segment.
func dotSegment(rest string) bool {
	switch {
	case rest == "." || rest == "..":
		return true
	case strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../"):
		return true
	}
	return false
}

// validID is ValidID without the regular expression ("." and ".." aside).
func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
