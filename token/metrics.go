package token

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
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
	results, err := registerTokenCollector(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_token_verifications_total",
		Help: "Bearer token verifications by result: valid, or the error code of input.token.",
	}, []string{"result"}))
	if err != nil {
		return nil, err
	}
	hits, err := registerTokenCollector(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gatehouse_token_cache_hits_total",
		Help: "Bearer token verifications answered from the verified-token cache.",
	}))
	if err != nil {
		return nil, err
	}
	refreshes, err := registerTokenCollector(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
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

// registerTokenCollector registers c, or returns the equal collector already
// registered.
func registerTokenCollector[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("register token metrics: %w", err)
	}
	return c, nil
}
