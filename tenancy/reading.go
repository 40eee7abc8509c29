package tenancy

import (
	"regexp"
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

// ambiguousPath matches a raw path that an upstream (or a proxy between)
// could read as another path than Gatehouse does; its alternatives, in
// order: not an origin-form path ("", "*", "t/x", "http://..."); "//"
// (merged by many readers); "\" (read as "/" by some); ";" (path
// parameters, cut by some); an encoded ".", "/", "\" or ";" (either hex
// case); a "." or ".." segment (resolved by most); any percent-encoding in
// the first two segments ("t" and the tenant could be spelled otherwise).
var (
	ambiguousPath = regexp.MustCompile(`^$|^[^/]|//|\\|;|%(?:2[eEfF]|5[cC]|3[bB])|/\.\.?(?:/|$)|^/[^/]*(?:/[^/]*)?%`)
	tenantPrefix  = regexp.MustCompile(`^/[tT]/`)
)

// PathTenant reads the tenant a raw request path names (Envoy's :path as
// the client sent it, never decoded or normalized; the query, from the
// first "?", never counts): a first segment "t" in any case names the
// tenant in the second segment ("/t" names none, "/t/" an empty, invalid
// one); a path an upstream could read differently is invalid, whatever it
// seems to name.
func PathTenant(path string) Reading {
	raw, _, _ := strings.Cut(path, "?")
	switch {
	case ambiguousPath.MatchString(raw):
		return Reading{Invalid: PathAmbiguous}
	case !tenantPrefix.MatchString(raw):
		return Reading{}
	}
	x := strings.SplitN(raw, "/", 4)[2]
	if !idPattern.MatchString(x) { // "." and ".." segments are ambiguous already
		return Reading{Invalid: PathInvalidTenant}
	}
	return Reading{Tenant: x, Named: true}
}
