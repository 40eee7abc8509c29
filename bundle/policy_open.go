package bundle

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
	"github.com/open-policy-agent/opa/v1/ast"
	opabundle "github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/loader/filter"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/token"
)

// DefaultMaxBundleBytes bounds a bundle download (compressed) and, four
// times over, its unpacked size.
const DefaultMaxBundleBytes = 64 << 20

// maxBundleFiles bounds the number of files in a bundle.
const maxBundleFiles = 100000

// KeySet is the trusted public keys bundle signatures are checked against.
type KeySet struct {
	keys []crypto.PublicKey
	from string // where the keys came from, for messages
}

// NewKeySet returns a key set trusting keys; from names their origin
// (e.g. the key file) in error messages.
func NewKeySet(keys []crypto.PublicKey, from string) (*KeySet, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no public key", ErrKey)
	}
	for _, k := range keys {
		if err := token.CheckPublicKey(k); err != nil {
			return nil, fmt.Errorf("%s key cannot verify bundle signatures: %w", token.KeyKind(k), err)
		}
	}
	return &KeySet{keys: slices.Clone(keys), from: from}, nil
}

// OpenOptions configures OpenBundle.
type OpenOptions struct {
	// Keys check the signature and every file digest. Required unless
	// Unsigned is set.
	Keys *KeySet
	// Unsigned reads the bundle without any signature check. Only Build
	// uses it, to read back its own unsigned output.
	Unsigned bool
	// RegoVersion parses modules the manifest does not version (default v1).
	RegoVersion ast.RegoVersion
	// BaseDir prefixes module names (Build: the policy directory, so that
	// errors point at the source files).
	BaseDir string
	// Origin is recorded in the Source (e.g. the bundle URL).
	Origin string
	// MaxBytes bounds the unpacked size (default 4 × DefaultMaxBundleBytes).
	MaxBytes int64
}

// OpenBundle reads an OPA bundle tarball into a policy Source. With
// Keys, the bundle must carry exactly one signature that verifies with
// one of the trusted keys, and the signed file list must match the files
// of the bundle exactly (no file unlisted, none missing, every digest
// equal); only then are the files parsed. The Source's revision is the
// manifest's revision (or, when the manifest has none, the first 16 hex
// digits of the tarball's SHA-256). OpenBundle does not compile: call
// authz.Compile on the Source.
func OpenBundle(tarball []byte, opts OpenOptions) (authz.Source, error) {
	if opts.Keys == nil && !opts.Unsigned {
		return authz.Source{}, errors.New("open bundle: no trusted keys given")
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 4 * DefaultMaxBundleBytes
	}
	if opts.RegoVersion == ast.RegoUndefined {
		opts.RegoVersion = ast.RegoV1
	}
	files, err := untar(tarball, opts.MaxBytes)
	if err != nil {
		return authz.Source{}, err
	}
	var sigs *File
	n := 0
	for i := range files {
		if opabundle.IsSignaturesFile(files[i].Name) {
			if sigs != nil {
				return authz.Source{}, fmt.Errorf("%w: two signature files, %s and %s", ErrBundleFormat, sigs.Name, files[i].Name)
			}
			sigs = &File{Name: files[i].Name, Content: files[i].Content}
			continue
		}
		files[n] = files[i]
		n++
	}
	files = files[:n]
	if !opts.Unsigned {
		if sigs == nil {
			return authz.Source{}, fmt.Errorf("%w: no %s in the bundle; unsigned bundles are refused", ErrUnsigned, SignaturesFile)
		}
		listed, err := opts.Keys.verifyJWS(sigs.Content)
		if err != nil {
			return authz.Source{}, err
		}
		if err := checkFiles(files, listed); err != nil {
			return authz.Source{}, err
		}
	}
	// Hand OPA's reader exactly the bytes that were verified; structured
	// documents as the canonical JSON that was hashed, so that what is
	// parsed is what was signed.
	for i, f := range files {
		if opabundle.IsStructuredDoc(f.Name) {
			var v any
			if err := util.Unmarshal(f.Content, &v); err != nil {
				return authz.Source{}, fmt.Errorf("%w: %s: %v", ErrBundleFormat, f.Name, err)
			}
			canon, err := json.Marshal(v)
			if err != nil {
				return authz.Source{}, fmt.Errorf("%w: %s: %v", ErrBundleFormat, f.Name, err)
			}
			files[i].Content = canon
		}
	}
	b, err := opabundle.NewCustomReader(&memLoader{files: files}).
		WithSkipBundleVerification(true).
		WithProcessAnnotations(true).
		WithRegoVersion(opts.RegoVersion).
		WithBaseDir(opts.BaseDir).
		WithSizeLimitBytes(opts.MaxBytes + 1).
		Read()
	if err != nil {
		return authz.Source{}, fmt.Errorf("%w: %v", ErrBundleFormat, err)
	}
	switch {
	case b.Type() == opabundle.DeltaBundleType:
		return authz.Source{}, fmt.Errorf("%w: delta bundles are not supported", ErrBundleFormat)
	case len(b.WasmModules) > 0 || len(b.Wasm) > 0 || len(b.PlanModules) > 0:
		return authz.Source{}, fmt.Errorf("%w: Wasm and plan modules are not supported (Gatehouse evaluates the Rego)", ErrBundleFormat)
	}
	src := authz.Source{
		Modules:  make(map[string]*ast.Module, len(b.Modules)),
		Data:     b.Data,
		Revision: b.Manifest.Revision,
		Origin:   opts.Origin,
	}
	for _, m := range b.Modules {
		src.Modules[m.Path] = m.Parsed
	}
	if src.Data == nil {
		src.Data = map[string]any{}
	}
	if src.Revision == "" {
		sum := sha256.Sum256(tarball)
		src.Revision = hex.EncodeToString(sum[:])[:16]
	}
	return src, nil
}

// untar reads every regular file of a gzipped tarball, with clean,
// unique names. Directories, links and special files are skipped, as OPA
// skips them.
func untar(tarball []byte, maxBytes int64) ([]File, error) {
	gz, err := gzip.NewReader(bytes.NewReader(tarball))
	if err != nil {
		return nil, fmt.Errorf("%w: not a gzip-compressed tarball: %v", ErrBundleFormat, err)
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	var (
		files []File
		total int64
		seen  = map[string]bool{}
	)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read tarball: %v", ErrBundleFormat, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name, err := cleanName(h.Name)
		if err != nil {
			return nil, err
		}
		if seen[name] {
			return nil, fmt.Errorf("%w: %s appears twice", ErrBundleFormat, name)
		}
		seen[name] = true
		if len(files) >= maxBundleFiles {
			return nil, fmt.Errorf("%w: more than %d files", ErrBundleFormat, maxBundleFiles)
		}
		if h.Size < 0 || h.Size > maxBytes-total {
			return nil, fmt.Errorf("%w: unpacked content exceeds %d bytes (at %s)", ErrBundleFormat, maxBytes, name)
		}
		content := make([]byte, h.Size)
		if _, err := io.ReadFull(tr, content); err != nil {
			return nil, fmt.Errorf("%w: read %s: %v", ErrBundleFormat, name, err)
		}
		total += h.Size
		files = append(files, File{Name: name, Content: content})
	}
	slices.SortFunc(files, func(a, b File) int { return cmp.Compare(a.Name, b.Name) })
	return files, nil
}

// cleanName turns a tar entry name into a bundle path: no leading "/" or
// "./"; empty, "." and ".." segments are refused.
func cleanName(name string) (string, error) {
	n := name
	for {
		switch {
		case strings.HasPrefix(n, "/"):
			n = n[1:]
			continue
		case strings.HasPrefix(n, "./"):
			n = n[2:]
			continue
		}
		break
	}
	if n == "" {
		return "", fmt.Errorf("%w: empty file name %q", ErrBundleFormat, name)
	}
	for seg := range strings.SplitSeq(n, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("%w: unsafe file name %q", ErrBundleFormat, name)
		}
	}
	return n, nil
}

// verifyJWS checks the signatures document and returns the signed file
// list by name.
func (v *KeySet) verifyJWS(doc []byte) (map[string]opabundle.FileInfo, error) {
	var sd signaturesDoc
	if err := json.Unmarshal(doc, &sd); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrSignature, SignaturesFile, err)
	}
	switch {
	case len(sd.Signatures) == 0:
		return nil, fmt.Errorf("%w: %s holds no signature; unsigned bundles are refused", ErrUnsigned, SignaturesFile)
	case len(sd.Signatures) > 1:
		return nil, fmt.Errorf("%w: %s holds %d signatures (expected exactly one, as OPA)", ErrSignature, SignaturesFile, len(sd.Signatures))
	case sd.Plugin != "" && sd.Plugin != "_default": // OPA writes its default signer's id
		return nil, fmt.Errorf("%w: signature plugin %q is not supported", ErrSignature, sd.Plugin)
	}
	var (
		claims signedFiles
		errs   []string
		ok     bool
	)
	for _, k := range v.keys {
		claims = signedFiles{}
		p := jwt.NewParser(jwt.WithValidMethods(token.AlgorithmsFor(k)))
		_, err := p.ParseWithClaims(sd.Signatures[0], &claims, func(*jwt.Token) (any, error) { return k, nil })
		if err == nil {
			ok = true
			break
		}
		errs = append(errs, fmt.Sprintf("%s key: %v", token.KeyKind(k), err))
	}
	if !ok {
		return nil, fmt.Errorf("%w with the key(s) in %s: %s", ErrSignature, v.from, strings.Join(errs, "; "))
	}
	if claims.Scope != "" {
		return nil, fmt.Errorf("%w: the signature is scoped to %q and this sidecar verifies unscoped signatures only", ErrSignature, claims.Scope)
	}
	listed := make(map[string]opabundle.FileInfo, len(claims.Files))
	for _, f := range claims.Files {
		name, err := cleanName(f.Name)
		if err != nil {
			return nil, fmt.Errorf("%w: the signature lists an unsafe file name %q", ErrTampered, f.Name)
		}
		if _, dup := listed[name]; dup {
			return nil, fmt.Errorf("%w: the signature lists %s twice", ErrTampered, name)
		}
		listed[name] = f
	}
	return listed, nil
}

// checkFiles compares the files of the bundle with the signed list.
func checkFiles(files []File, listed map[string]opabundle.FileInfo) error {
	var problems []string
	present := make(map[string]bool, len(files))
	for _, f := range files {
		present[f.Name] = true
		fi, ok := listed[f.Name]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s is not listed in the signature", f.Name))
			continue
		}
		alg := opabundle.HashingAlgorithm(fi.Algorithm)
		if !slices.Contains(digestAlgorithms, alg) {
			problems = append(problems, fmt.Sprintf("%s: digest algorithm %q is not accepted (SHA-256, SHA-384, SHA-512)", f.Name, fi.Algorithm))
			continue
		}
		want, err := hex.DecodeString(fi.Hash)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: signed digest %q is not hex", f.Name, fi.Hash))
			continue
		}
		got, err := fileDigest(alg, f.Name, f.Content)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", f.Name, err))
			continue
		}
		if !bytes.Equal(want, got) {
			problems = append(problems, fmt.Sprintf("%s: digest mismatch (signed %x, got %x)", f.Name, want, got))
		}
	}
	var missing []string
	for name := range listed {
		if !present[name] {
			missing = append(missing, name)
		}
	}
	slices.Sort(missing)
	for _, name := range missing {
		problems = append(problems, fmt.Sprintf("%s is listed in the signature but missing from the bundle", name))
	}
	switch len(problems) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%w: %s", ErrTampered, problems[0])
	}
	return fmt.Errorf("%w: %s (and %d more problems)", ErrTampered, problems[0], len(problems)-1)
}

// memLoader feeds verified in-memory files to OPA's bundle reader.
type memLoader struct {
	files []File
	next  int
}

var _ opabundle.DirectoryLoader = (*memLoader)(nil)

func (l *memLoader) NextFile() (*opabundle.Descriptor, error) {
	if l.next >= len(l.files) {
		return nil, io.EOF
	}
	f := l.files[l.next]
	l.next++
	return opabundle.NewDescriptor(f.Name, f.Name, bytes.NewBuffer(f.Content)), nil
}

func (l *memLoader) WithFilter(filter.LoaderFilter) opabundle.DirectoryLoader { return l }

func (l *memLoader) WithPathFormat(opabundle.PathFormat) opabundle.DirectoryLoader { return l }

func (l *memLoader) WithSizeLimitBytes(int64) opabundle.DirectoryLoader { return l }

func (l *memLoader) WithFollowSymlinks(bool) opabundle.DirectoryLoader { return l }
