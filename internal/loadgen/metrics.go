package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Gatehouse's counters a run reads from the server's /metrics
// (Config.MetricsURL) at the start and the end of its recorded window.
const (
	// MetricDecisionCache counts decisions by result: hit, miss, stale,
	// bypass.
	MetricDecisionCache = "gatehouse_decision_cache_total"
	// MetricTokenVerifications counts bearer token verifications by
	// result, those answered from the verified-token cache included.
	MetricTokenVerifications = "gatehouse_token_verifications_total"
	// MetricTokenCacheHits counts the verifications answered from the
	// verified-token cache.
	MetricTokenCacheHits = "gatehouse_token_cache_hits_total"
)

// CacheStats is what a server's cache answered over a recorded window.
type CacheStats struct {
	// Lookups counts the answers the cache was asked for.
	Lookups int64 `json:"lookups"`
	// Hits counts those it answered.
	Hits int64 `json:"hits"`
	// HitRate is Hits over Lookups (0 without lookups).
	HitRate float64 `json:"hit_rate"`
	// ByResult breaks Lookups down by the counter's result label, when it
	// has one.
	ByResult map[string]int64 `json:"by_result,omitempty"`
}

// counters maps a metric family to its samples' values by the value of
// their "result" label ("" for none).
type counters map[string]map[string]float64

// scrapeMetrics reads the families named from a Prometheus text exposition
// at url.
func scrapeMetrics(ctx context.Context, url string, names ...string) (counters, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: GET %s: %s", url, resp.Status)
	}
	return parseMetrics(io.LimitReader(resp.Body, 64<<20), names...)
}

// parseMetrics reads the samples of the families named from the Prometheus
// text format: `name{label="value",...} value [timestamp]`. Samples of the
// same family with the same result label are added up.
func parseMetrics(r io.Reader, names ...string) (counters, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	out := counters{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		end := strings.IndexAny(line, "{ \t")
		if end < 0 {
			end = len(line)
		}
		if !want[line[:end]] {
			continue
		}
		name, rest := line[:end], line[end:]
		var labels map[string]string
		if strings.HasPrefix(rest, "{") {
			var err error
			if labels, rest, err = parseLabels(rest[1:]); err != nil {
				return nil, fmt.Errorf("metrics: %s: %w", name, err)
			}
		}
		f := strings.Fields(rest)
		if len(f) < 1 || len(f) > 2 {
			return nil, fmt.Errorf("metrics: %s: no value in %q", name, line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || math.IsNaN(v) {
			return nil, fmt.Errorf("metrics: %s: value %q", name, f[0])
		}
		if out[name] == nil {
			out[name] = map[string]float64{}
		}
		out[name][labels["result"]] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return out, nil
}

// parseLabels parses `a="x",b="y"}` and returns the labels and what
// follows the closing brace.
func parseLabels(s string) (map[string]string, string, error) {
	labels := map[string]string{}
	for {
		s = strings.TrimLeft(s, " \t")
		if strings.HasPrefix(s, "}") {
			return labels, s[1:], nil
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || len(s) < eq+2 || s[eq+1] != '"' {
			return nil, "", fmt.Errorf("bad labels at %q", s)
		}
		name := strings.TrimSpace(s[:eq])
		s = s[eq+2:]
		var v strings.Builder
		closed := false
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					v.WriteByte('\n')
				default: // \\ and \"
					v.WriteByte(s[i])
				}
				continue
			}
			if c == '"' {
				s, closed = s[i+1:], true
				break
			}
			v.WriteByte(c)
		}
		if !closed {
			return nil, "", fmt.Errorf("unterminated label %s", name)
		}
		labels[name] = v.String()
		s = strings.TrimLeft(s, " \t")
		s = strings.TrimPrefix(s, ",")
	}
}

// delta returns family's growth between two scrapes, by result label, and
// whether the family appeared at all.
func (c counters) delta(before counters, family string) (map[string]int64, bool) {
	after, ok := c[family]
	if !ok {
		return nil, false
	}
	d := make(map[string]int64, len(after))
	for k, v := range after {
		d[k] = int64(math.Round(v - before[family][k]))
	}
	return d, true
}

// cacheStats computes the decision and token cache figures of a window
// from the scrapes at its start and end; nil where the server does not
// export the counters.
func cacheStats(before, after counters) (decisions, tokens *CacheStats) {
	if d, ok := after.delta(before, MetricDecisionCache); ok {
		decisions = &CacheStats{ByResult: d}
		for k, n := range d {
			decisions.Lookups += n
			if k == "hit" {
				decisions.Hits += n
			}
		}
		decisions.HitRate = rate(decisions.Hits, decisions.Lookups)
	}
	if v, ok := after.delta(before, MetricTokenVerifications); ok {
		tokens = &CacheStats{}
		for _, n := range v {
			tokens.Lookups += n
		}
		if h, ok := after.delta(before, MetricTokenCacheHits); ok {
			tokens.Hits = h[""]
		}
		tokens.HitRate = rate(tokens.Hits, tokens.Lookups)
	}
	return decisions, tokens
}

func rate(hits, lookups int64) float64 {
	if lookups <= 0 {
		return 0
	}
	return float64(hits) / float64(lookups)
}
