package token

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the key sources.
const (
	// maxJWKSBytes bounds a JWKS document, fetched or read from a file.
	maxJWKSBytes = 1 << 20
	// jwksFetchTimeout bounds one JWKS fetch, whatever the HTTP client does.
	jwksFetchTimeout = 10 * time.Second
	// minRSABits is the smallest RSA modulus accepted as a verification key.
	minRSABits = 2048
)

// tokenAlgorithmSupported reports whether alg is a JWS algorithm Gatehouse
// verifies: asymmetric signatures only.
func tokenAlgorithmSupported(alg string) bool {
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
		"ES256", "ES384", "ES512", "EdDSA":
		return true
	}
	return false
}

// verifyKey is one public key an issuer's tokens may be signed with.
type verifyKey struct {
	kid string           // the JWK's kid; "" for PEM keys and JWKs without one
	alg string           // the JWK's alg; "" when the key is not restricted
	pub crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	der []byte           // PKIX encoding of pub, for key-set fingerprints
}

// newVerifyKey checks that pub is a key type and size Gatehouse accepts.
func newVerifyKey(kid, alg string, pub crypto.PublicKey) (*verifyKey, error) {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if p.N == nil || p.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key smaller than %d bits", minRSABits)
		}
	case *ecdsa.PublicKey:
		if ecdsaAlgorithm(p) == "" {
			return nil, fmt.Errorf("unsupported ECDSA curve %s", p.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		if len(p) != ed25519.PublicKeySize {
			return nil, errors.New("Ed25519 key of wrong size")
		}
	default:
		return nil, fmt.Errorf("unsupported public key type %T", pub)
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

// ecdsaAlgorithm returns the only JWS algorithm an ECDSA key may be used with,
// or "" for curves Gatehouse does not accept.
func ecdsaAlgorithm(p *ecdsa.PublicKey) string {
	switch p.Curve {
	case elliptic.P256():
		return "ES256"
	case elliptic.P384():
		return "ES384"
	case elliptic.P521():
		return "ES512"
	}
	return ""
}

// fits reports whether k may verify a signature made with alg: the key type
// (and ECDSA curve) must match the algorithm, and a JWK's own alg must equal it.
func (k *verifyKey) fits(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch p := k.pub.(type) {
	case *rsa.PublicKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return true
		}
	case *ecdsa.PublicKey:
		return alg == ecdsaAlgorithm(p)
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
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

// parsePEMKeys parses one or more PEM blocks of type PUBLIC KEY (PKIX),
// RSA PUBLIC KEY (PKCS #1) or CERTIFICATE (only its public key is used: the
// certificate's validity and chain are not checked). Any other block is an
// error, so a private key handed by mistake is refused rather than skipped.
func parsePEMKeys(data []byte) ([]*verifyKey, error) {
	var keys []*verifyKey
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var (
			pub any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE") {
				return nil, fmt.Errorf("PEM block %d: %s refused: give the public key only", n, block.Type)
			}
			return nil, fmt.Errorf("PEM block %d: unsupported type %q (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", n, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): %w", n, block.Type, err)
		}
		k, err := newVerifyKey("", "", pub)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): %w", n, block.Type, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM block found")
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
// verification.
func parseJWK(j jwk) (k *verifyKey, expected bool, err error) {
	if j.Use != "" && j.Use != "sig" {
		return nil, true, fmt.Errorf("use %q is not sig", j.Use)
	}
	if len(j.KeyOps) > 0 && !slices.Contains(j.KeyOps, "verify") {
		return nil, true, errors.New("key_ops does not include verify")
	}
	if j.Alg != "" && !tokenAlgorithmSupported(j.Alg) {
		return nil, true, fmt.Errorf("alg %q is not a supported signature algorithm", j.Alg)
	}
	var pub crypto.PublicKey
	switch j.Kty {
	case "RSA":
		pub, err = parseRSAJWK(j)
	case "EC":
		pub, expected, err = parseECJWK(j)
	case "OKP":
		pub, expected, err = parseOKPJWK(j)
	case "oct":
		return nil, true, errors.New("symmetric (oct) keys are never used")
	default:
		return nil, true, fmt.Errorf("unsupported kty %q", j.Kty)
	}
	if err != nil {
		return nil, expected, err
	}
	k, err = newVerifyKey(j.Kid, j.Alg, pub)
	return k, false, err
}

// decodeJWKField decodes a base64url JWK member, tolerating padding.
func decodeJWKField(name, v string) ([]byte, error) {
	if v == "" {
		return nil, fmt.Errorf("member %q missing", name)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(v, "="))
	if err != nil {
		return nil, fmt.Errorf("member %q: %w", name, err)
	}
	return b, nil
}

// parseRSAJWK reads n and e.
func parseRSAJWK(j jwk) (*rsa.PublicKey, error) {
	nb, err := decodeJWKField("n", j.N)
	if err != nil {
		return nil, err
	}
	eb, err := decodeJWKField("e", j.E)
	if err != nil {
		return nil, err
	}
	eb = bytes.TrimLeft(eb, "\x00")
	if len(eb) == 0 || len(eb) > 4 {
		return nil, errors.New("RSA exponent out of range")
	}
	var e uint64
	for _, b := range eb {
		e = e<<8 | uint64(b)
	}
	if e < 3 || e%2 == 0 || e > 1<<31-1 {
		return nil, fmt.Errorf("RSA exponent %d invalid", e)
	}
	n := new(big.Int).SetBytes(nb)
	if n.Bit(0) == 0 {
		return nil, errors.New("RSA modulus is even")
	}
	return &rsa.PublicKey{N: n, E: int(e)}, nil
}

// parseECJWK reads crv, x and y and checks the point is on the curve.
func parseECJWK(j jwk) (*ecdsa.PublicKey, bool, error) {
	var curve elliptic.Curve
	switch j.Crv {
	case "P-256":
		curve = elliptic.P256()
	case "P-384":
		curve = elliptic.P384()
	case "P-521":
		curve = elliptic.P521()
	default:
		return nil, true, fmt.Errorf("unsupported EC curve %q", j.Crv)
	}
	size := (curve.Params().BitSize + 7) / 8
	x, err := decodeJWKField("x", j.X)
	if err != nil {
		return nil, false, err
	}
	y, err := decodeJWKField("y", j.Y)
	if err != nil {
		return nil, false, err
	}
	if len(x) != size || len(y) != size {
		return nil, false, fmt.Errorf("EC coordinates must be %d bytes for %s", size, j.Crv)
	}
	point := make([]byte, 0, 1+2*size)
	point = append(point, 4)
	point = append(point, x...)
	point = append(point, y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, false, fmt.Errorf("EC point invalid (not on %s?): %w", j.Crv, err)
	}
	return pub, false, nil
}

// parseOKPJWK reads an Ed25519 key (RFC 8037).
func parseOKPJWK(j jwk) (ed25519.PublicKey, bool, error) {
	if j.Crv != "Ed25519" {
		return nil, true, fmt.Errorf("unsupported OKP curve %q", j.Crv)
	}
	x, err := decodeJWKField("x", j.X)
	if err != nil {
		return nil, false, err
	}
	if len(x) != ed25519.PublicKeySize {
		return nil, false, fmt.Errorf("Ed25519 key must be %d bytes", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(x), false, nil
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
