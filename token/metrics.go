package token

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/internal/promx"
)

// tokenMetrics are the verifier's Prometheus counters.
type tokenMetrics struct {
	results   map[TokenError]prometheus.Counter // "" = valid
	cacheHits prometheus.Counter
	refreshes *prometheus.CounterVec
}

// newTokenMetrics registers (or reuses, when already registered by another
// Verifier on the same registry) the verifier's metrics.
func newTokenMetrics(reg prometheus.Registerer) (*tokenMetrics, error) {
	results, err := promx.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_token_verifications_total",
		Help: "Bearer token verifications by result: valid, or the error code of input.token.",
	}, []string{"result"}))
	if err != nil {
		return nil, err
	}
	hits, err := promx.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gatehouse_token_cache_hits_total",
		Help: "Bearer token verifications answered from the verified-token cache.",
	}))
	if err != nil {
		return nil, err
	}
	refreshes, err := promx.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_jwks_refreshes_total",
		Help: "JWKS fetches of jwks_url issuers by issuer and result (ok or error).",
	}, []string{"issuer", "result"}))
	if err != nil {
		return nil, err
	}
	m := &tokenMetrics{
		results:   map[TokenError]prometheus.Counter{"": results.WithLabelValues("valid")},
		cacheHits: hits,
		refreshes: refreshes,
	}
	for _, code := range tokenErrorCodes() {
		m.results[code] = results.WithLabelValues(string(code))
	}
	return m, nil
}
