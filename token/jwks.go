package token

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
)

// Limits of the key sources.
const (
	// maxJWKSBytes bounds a JWKS document, fetched or read from a file.
	maxJWKSBytes = 1 << 20
	// jwksFetchTimeout bounds one JWKS fetch, whatever the HTTP client does.
	jwksFetchTimeout = 10 * time.Second
)

// verifyKey is one public key an issuer's tokens may be signed with.
type verifyKey struct {
	kid string           // the JWK's kid; "" for PEM keys and JWKs without one
	alg string           // the JWK's alg; "" when the key is not restricted
	pub crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	der []byte           // PKIX encoding of pub, for key-set fingerprints
}

// newVerifyKey checks that pub is a key type and size Gatehouse accepts.
func newVerifyKey(kid, alg string, pub crypto.PublicKey) (*verifyKey, error) {
	if err := CheckPublicKey(pub); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	k := &verifyKey{kid: kid, alg: alg, pub: pub, der: der}
	if alg != "" && !k.fits(alg) {
		return nil, fmt.Errorf("key type does not fit its alg %q", alg)
	}
	return k, nil
}

// fits reports whether k may verify a signature made with alg: the key type
// (and ECDSA curve) must match the algorithm, and a JWK's own alg must equal it.
func (k *verifyKey) fits(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	return slices.Contains(AlgorithmsFor(k.pub), alg)
}

// keySet is an immutable set of verification keys.
type keySet struct {
	keys        []*verifyKey
	fingerprint [sha256.Size]byte // identifies the set regardless of order
}

// newKeySet builds a key set and its fingerprint.
func newKeySet(keys []*verifyKey) *keySet {
	parts := make([][]byte, 0, len(keys))
	for _, k := range keys {
		var b bytes.Buffer
		b.WriteString(k.kid)
		b.WriteByte(0)
		b.WriteString(k.alg)
		b.WriteByte(0)
		b.Write(k.der)
		parts = append(parts, b.Bytes())
	}
	slices.SortFunc(parts, bytes.Compare)
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	s := &keySet{keys: keys}
	h.Sum(s.fingerprint[:0])
	return s
}

// withKid returns the keys whose kid is kid; every key when kid is "".
func (s *keySet) withKid(kid string) []*verifyKey {
	if kid == "" {
		return s.keys
	}
	var out []*verifyKey
	for _, k := range s.keys {
		if k.kid == kid {
			out = append(out, k)
		}
	}
	return out
}

// withoutKid returns the keys that have no kid (PEM keys): they are tried for
// any token whose kid names no key.
func (s *keySet) withoutKid() []*verifyKey {
	var out []*verifyKey
	for _, k := range s.keys {
		if k.kid == "" {
			out = append(out, k)
		}
	}
	return out
}

// parsePEMKeys parses the keys of a public_key_file (ParsePublicKeys).
func parsePEMKeys(data []byte) ([]*verifyKey, error) {
	pubs, err := ParsePublicKeys(data)
	if err != nil {
		return nil, err
	}
	keys := make([]*verifyKey, 0, len(pubs))
	for _, pub := range pubs {
		k, err := newVerifyKey("", "", pub)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// jwk is the subset of RFC 7517/7518/8037 JSON Web Key members Gatehouse reads.
type jwk struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Use    string   `json:"use"`
	Alg    string   `json:"alg"`
	KeyOps []string `json:"key_ops"`
	Crv    string   `json:"crv"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
}

// jwkSkip tells why one JWK of a set was not used.
type jwkSkip struct {
	index int
	kid   string
	err   error
	// expected is true for keys that are fine but not for us (encryption
	// keys, symmetric keys, other curves); false for broken keys.
	expected bool
}

// parseJWKS parses a JWK Set. Keys Gatehouse cannot or must not use are
// skipped and reported in skips; an unparsable document, or one without any
// usable key, is an error.
func parseJWKS(data []byte) ([]*verifyKey, []jwkSkip, error) {
	var doc struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("decode JWKS: %w", err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New("decode JWKS: no \"keys\" member")
	}
	var (
		keys  []*verifyKey
		skips []jwkSkip
	)
	for i, raw := range *doc.Keys {
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			skips = append(skips, jwkSkip{index: i, err: fmt.Errorf("decode JWK: %w", err)})
			continue
		}
		k, expected, err := parseJWK(j)
		if err != nil {
			skips = append(skips, jwkSkip{index: i, kid: j.Kid, err: err, expected: expected})
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, skips, fmt.Errorf("JWKS holds no usable signature verification key (%d keys skipped)", len(skips))
	}
	return keys, skips, nil
}

// parseJWK turns one JWK into a verification key. expected is true when the
// key is valid but not meant for (or not supported in) signature
// verification. The key material is decoded and checked (base64url, the
// EC point on its curve, the RSA exponent's range) by jwkset; our rules come
// on top: signature keys only, the algorithm allow-list, the curves and the
// RSA size floor of CheckPublicKey, an odd RSA modulus and exponent of at
// most 32 bits.
func parseJWK(j jwk) (k *verifyKey, expected bool, err error) {
	if j.Use != "" && j.Use != "sig" {
		return nil, true, fmt.Errorf("use %q is not sig", j.Use)
	}
	if len(j.KeyOps) > 0 && !slices.Contains(j.KeyOps, "verify") {
		return nil, true, errors.New("key_ops does not include verify")
	}
	if j.Alg != "" && !AlgorithmSupported(j.Alg) {
		return nil, true, fmt.Errorf("alg %q is not a supported signature algorithm", j.Alg)
	}
	switch {
	case j.Kty == "oct":
		return nil, true, errors.New("symmetric (oct) keys are never used")
	case j.Kty == "EC" && j.Crv != "P-256" && j.Crv != "P-384" && j.Crv != "P-521":
		return nil, true, fmt.Errorf("unsupported EC curve %q", j.Crv)
	case j.Kty == "OKP" && j.Crv != "Ed25519":
		return nil, true, fmt.Errorf("unsupported OKP curve %q", j.Crv)
	case j.Kty != "RSA" && j.Kty != "EC" && j.Kty != "OKP":
		return nil, true, fmt.Errorf("unsupported kty %q", j.Kty)
	}
	// Only the key material is handed over: the metadata rules are ours,
	// and x5c/x5u are never used (keys come from the configured source).
	parsed, err := jwkset.NewJWKFromMarshal(jwkset.JWKMarshal{
		KTY: jwkset.KTY(j.Kty), CRV: jwkset.CRV(j.Crv), N: j.N, E: j.E, X: j.X, Y: j.Y,
	}, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
	if err != nil {
		return nil, false, err
	}
	pub := parsed.Key()
	if p, ok := pub.(*rsa.PublicKey); ok {
		if err := checkRSAJWK(j.E, p); err != nil {
			return nil, false, err
		}
	}
	k, err = newVerifyKey(j.Kid, j.Alg, pub)
	return k, false, err
}

// checkRSAJWK adds the rules jwkset does not check: the exponent as written
// fits 32 bits (jwkset keeps only its low 64 bits), and the modulus and the
// exponent are odd.
func checkRSAJWK(e string, p *rsa.PublicKey) error {
	eb, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(e, "="))
	if err != nil {
		return fmt.Errorf("member \"e\": %w", err)
	}
	if eb = bytes.TrimLeft(eb, "\x00"); len(eb) > 4 {
		return errors.New("RSA exponent out of range")
	}
	if p.E < 3 || p.E%2 == 0 {
		return fmt.Errorf("RSA exponent %d invalid", p.E)
	}
	if p.N.Bit(0) == 0 {
		return errors.New("RSA modulus is even")
	}
	return nil
}

// loadKeyFile reads the PEM or JWKS file of an issuer.
func loadKeyFile(path string, isJWKS bool, logger *slog.Logger, issuer string) ([]*verifyKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !isJWKS {
		return parsePEMKeys(data)
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("file larger than %d bytes", maxJWKSBytes)
	}
	keys, skips, err := parseJWKS(data)
	logJWKSkips(logger, issuer, skips)
	return keys, err
}

// logJWKSkips logs why keys of a JWKS were not used: broken keys at Warn,
// keys that are simply not signature keys for us at Debug.
func logJWKSkips(logger *slog.Logger, issuer string, skips []jwkSkip) {
	for _, s := range skips {
		level := slog.LevelWarn
		if s.expected {
			level = slog.LevelDebug
		}
		logger.Log(context.Background(), level, "jwks key skipped",
			"issuer", issuer, "index", s.index, "kid", s.kid, "err", s.err)
	}
}

// fetchJWKS GETs and parses a JWKS document.
func fetchJWKS(ctx context.Context, client *http.Client, url string) ([]*verifyKey, []jwkSkip, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrJWKSFetch, err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrJWKSFetch, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, nil, fmt.Errorf("%w: unexpected status %s", ErrJWKSFetch, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: read body: %w", ErrJWKSFetch, err)
	}
	if len(body) > maxJWKSBytes {
		return nil, nil, fmt.Errorf("%w: body larger than %d bytes", ErrJWKSFetch, maxJWKSBytes)
	}
	keys, skips, err := parseJWKS(body)
	if err != nil {
		return nil, skips, fmt.Errorf("%w: %w", ErrKeySource, err)
	}
	return keys, skips, nil
}

// jwksFetch is one in-flight JWKS fetch; waiters block on done.
type jwksFetch struct {
	done chan struct{}
	err  error // set before done is closed
}

// issuerKeys holds the current key set of one issuer and, for a jwks_url
// issuer, fetches it: periodically (run), and on demand when a token names an
// unknown kid (refresh with onDemand), at most once per minInterval.
//
// # Concurrency
//
// The key set is read lock-free on every verification. Concurrent refreshes
// share one in-flight fetch. A fetch requested by a verification runs
// detached from that request's context (bounded by jwksFetchTimeout), so a
// short request deadline cannot keep the keys from ever being learnt.
type issuerKeys struct {
	issuer      string
	url         string // "" for file sources: never refreshed
	client      *http.Client
	minInterval time.Duration
	now         func() time.Time
	logger      *slog.Logger
	// onChange runs after a fetch changed the key set (the verifier
	// invalidates its cache there).
	onChange func()
	// onResult runs after every completed fetch (metrics).
	onResult func(ok bool)

	set atomic.Pointer[keySet]

	mu           sync.Mutex
	inflight     *jwksFetch
	lastOnDemand time.Time // start of the last fetch triggered by an unknown kid
	lastRefresh  time.Time // end of the last successful load
	lastError    string    // error of the last load, "" after a success
}

// keys returns the current key set (never nil).
func (k *issuerKeys) keys() *keySet { return k.set.Load() }

// refresh fetches the JWKS, or joins the fetch already in flight, and waits
// for it (or for ctx). With onDemand, a new fetch is started only if the last
// on-demand fetch began at least minInterval ago; otherwise refresh returns
// nil at once and the current keys stay.
func (k *issuerKeys) refresh(ctx context.Context, onDemand bool) error {
	k.mu.Lock()
	f := k.inflight
	if f == nil {
		if onDemand {
			now := k.now()
			if !k.lastOnDemand.IsZero() && now.Sub(k.lastOnDemand) < k.minInterval {
				k.mu.Unlock()
				return nil
			}
			k.lastOnDemand = now
		}
		f = &jwksFetch{done: make(chan struct{})}
		k.inflight = f
		fetchCtx := ctx
		if onDemand {
			fetchCtx = context.WithoutCancel(ctx)
		}
		go k.fetch(fetchCtx, f)
	}
	k.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fetch runs one fetch and installs its result.
func (k *issuerKeys) fetch(ctx context.Context, f *jwksFetch) {
	fctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
	keys, skips, err := fetchJWKS(fctx, k.client, k.url)
	cancel()
	if err == nil {
		err = k.install(keys, skips)
	} else if ctx.Err() == nil {
		k.recordFailure(err)
	}
	k.mu.Lock()
	k.inflight = nil
	k.mu.Unlock()
	f.err = err
	close(f.done)
}

// install replaces the key set when it changed, and records a success.
func (k *issuerKeys) install(keys []*verifyKey, skips []jwkSkip) error {
	set := newKeySet(keys)
	old := k.set.Load()
	if old == nil || old.fingerprint != set.fingerprint {
		// Store first, then invalidate: a verification that reads the
		// cache generation after the invalidation sees the new keys.
		k.set.Store(set)
		if k.onChange != nil {
			k.onChange()
		}
		logJWKSkips(k.logger, k.issuer, skips)
		k.logger.Info("jwks keys loaded", "issuer", k.issuer, "key_count", len(keys), "skipped", len(skips))
	}
	k.mu.Lock()
	k.lastRefresh = k.now()
	k.lastError = ""
	k.mu.Unlock()
	if k.onResult != nil {
		k.onResult(true)
	}
	return nil
}

// recordFailure keeps the last good keys and records err.
func (k *issuerKeys) recordFailure(err error) {
	k.mu.Lock()
	k.lastError = err.Error()
	k.mu.Unlock()
	if k.onResult != nil {
		k.onResult(false)
	}
	k.logger.Warn("jwks refresh failed; keeping the last good keys", "issuer", k.issuer,
		"key_count", len(k.keys().keys), "err", err)
}

// run refreshes the JWKS every interval until ctx is done. After a failure
// it retries sooner: minInterval, doubling up to interval.
func (k *issuerKeys) run(ctx context.Context, interval time.Duration) {
	k.mu.Lock()
	failing := k.lastError != ""
	k.mu.Unlock()
	failures := 0
	wait := interval
	if failing {
		failures = 1
		wait = min(interval, max(k.minInterval, time.Millisecond))
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := k.refresh(ctx, false); err != nil && ctx.Err() == nil {
			wait = min(interval, max(k.minInterval, time.Millisecond)<<min(failures, 20))
			failures++
		} else {
			failures = 0
			wait = interval
		}
		t.Reset(wait)
	}
}

// status reports the key count and the last load's outcome.
func (k *issuerKeys) status() IssuerStatus {
	k.mu.Lock()
	defer k.mu.Unlock()
	return IssuerStatus{
		Issuer:      k.issuer,
		KeyCount:    len(k.keys().keys),
		LastRefresh: k.lastRefresh,
		LastError:   k.lastError,
	}
}
