package token

// CacheUsage reports the verified-token cache's entries and accounted bytes
// (for the memory tests of package token_test).
func (v *Verifier) CacheUsage() (entries int, bytes int64) {
	if v.cache == nil {
		return 0, 0
	}
	return v.cache.c.Len(), v.cache.c.Bytes()
}
