package bundle

// Policy bundles
//
// A policy bundle is an OPA bundle (https://www.openpolicyagent.org/docs/management-bundles):
// a gzipped tarball of .rego files, data.json / data.yaml files (loaded at
// the path of their folder), a /.manifest (revision, roots, rego_version)
// and, when signed, a /.signatures.json in OPA's format:
//
//	{"signatures": ["<JWS compact>"]}
//
// whose JWT payload lists every other file of the bundle with its digest:
//
//	{"files": [{"name": "envoy/authz.rego", "hash": "<hex>", "algorithm": "SHA-256"}, ...],
//	 "keyid": "<optional>"}
//
// Digests are computed as OPA computes them, so that `opa build` bundles and
// Gatehouse bundles are interchangeable: raw bytes for every file except
// data.json, data.yaml/yml and .manifest, which are hashed in OPA's
// canonical JSON form (keys sorted, no insignificant whitespace). Build
// writes bundles (policy_build.go), OpenBundle reads and verifies them
// (policy_open.go), PolicySource keeps an engine in step with a bundle URL
// (policy_source.go).

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
	opabundle "github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/gatehouse-dev/gatehouse/token"
)

// Names of the bundle's own files.
const (
	// ManifestFile is the bundle manifest (revision, roots).
	ManifestFile = ".manifest"
	// SignaturesFile holds the bundle signature.
	SignaturesFile = ".signatures.json"
)

// DigestAlgorithm is the digest Gatehouse writes into signatures.
const DigestAlgorithm = opabundle.SHA256

// digestAlgorithms are the digests accepted in a signature's file list.
// OPA also accepts MD5 and SHA-1; Gatehouse does not.
var digestAlgorithms = []opabundle.HashingAlgorithm{opabundle.SHA256, opabundle.SHA384, opabundle.SHA512}

// File is one file of a bundle tarball.
type File struct {
	// Name is the slash-separated path in the bundle, without a leading
	// slash, e.g. "envoy/authz.rego" or ".manifest".
	Name string
	// Content is the file's bytes.
	Content []byte
}

// fileDigest is the digest OPA computes for a bundle file: the canonical
// JSON of structured documents (data.json, data.yaml, .manifest), the raw
// bytes otherwise.
func fileDigest(alg opabundle.HashingAlgorithm, name string, content []byte) ([]byte, error) {
	h, err := opabundle.NewSignatureHasher(alg)
	if err != nil {
		return nil, err
	}
	if opabundle.IsStructuredDoc(name) {
		var v any
		if err := util.Unmarshal(content, &v); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return h.HashFile(v)
	}
	return h.HashFile(content)
}

// signedFiles is the JWT payload of a bundle signature (OPA's format).
type signedFiles struct {
	Files []opabundle.FileInfo `json:"files"`
	KeyID string               `json:"keyid,omitempty"`
	Scope string               `json:"scope,omitempty"`
	jwt.RegisteredClaims
}

// signaturesDoc is the content of .signatures.json.
type signaturesDoc struct {
	Signatures []string `json:"signatures"`
	Plugin     string   `json:"plugin,omitempty"`
}

// Signer signs the file list of a bundle with a private key.
type Signer struct {
	key    crypto.Signer
	method jwt.SigningMethod
	keyID  string
}

// NewSigner returns a signer for key. alg is one of token.Algorithms() that
// fits the key ("" = RS256 for RSA keys, ES256/ES384/ES512 by curve, EdDSA
// for Ed25519). keyID, when set, goes into the JWS header ("kid") and the
// payload ("keyid"), as `opa build` writes it.
func NewSigner(key crypto.Signer, alg, keyID string) (*Signer, error) {
	m, err := token.SigningMethod(key, alg)
	if err != nil {
		return nil, err
	}
	return &Signer{key: key, method: m, keyID: keyID}, nil
}

// Algorithm returns the JWS algorithm, e.g. "RS256".
func (s *Signer) Algorithm() string { return s.method.Alg() }

// KeyID returns the key id written into signatures ("" = none).
func (s *Signer) KeyID() string { return s.keyID }

// Public returns the public key that verifies the signer's signatures.
func (s *Signer) Public() crypto.PublicKey { return s.key.Public() }

// Sign returns the compact JWS over the digests of files (every file of
// the bundle except .signatures.json itself).
func (s *Signer) Sign(files []File) (string, error) {
	claims := signedFiles{KeyID: s.keyID, Files: make([]opabundle.FileInfo, 0, len(files))}
	for _, f := range files {
		d, err := fileDigest(DigestAlgorithm, f.Name, f.Content)
		if err != nil {
			return "", fmt.Errorf("digest %s: %w", f.Name, err)
		}
		claims.Files = append(claims.Files, opabundle.NewFile(f.Name, hex.EncodeToString(d), string(DigestAlgorithm)))
	}
	tok := jwt.NewWithClaims(s.method, claims)
	if s.keyID != "" {
		tok.Header["kid"] = s.keyID
	}
	signed, err := tok.SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("sign bundle: %w", err)
	}
	return signed, nil
}

// WriteBundle writes files as a gzipped tarball in name order. With a
// signer, it adds /.signatures.json signing every file. It checks nothing
// else: Build is what compiles a policy before writing it. The output is
// deterministic (fixed timestamps and modes), so an unchanged bundle
// rebuilt with a deterministic signature (RSA, Ed25519) has the same bytes
// and the same ETag.
func WriteBundle(w io.Writer, files []File, s *Signer) error {
	files = slices.Clone(files)
	slices.SortFunc(files, func(a, b File) int { return cmp.Compare(a.Name, b.Name) })
	if s != nil {
		tok, err := s.Sign(files)
		if err != nil {
			return err
		}
		doc, err := json.MarshalIndent(signaturesDoc{Signatures: []string{tok}}, "", " ")
		if err != nil {
			return err
		}
		files = append([]File{{Name: SignaturesFile, Content: doc}}, files...)
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	epoch := time.Unix(0, 0).UTC()
	for _, f := range files {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     f.Name,
			Mode:     0o644,
			Size:     int64(len(f.Content)),
			ModTime:  epoch,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write bundle: %s: %w", f.Name, err)
		}
		if _, err := tw.Write(f.Content); err != nil {
			return fmt.Errorf("write bundle: %s: %w", f.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}
