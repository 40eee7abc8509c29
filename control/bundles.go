package control

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// bundleName is the syntax of a bundle name.
var bundleName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,128}$`)

// gzipMagic starts every OPA bundle tarball (.tar.gz).
var gzipMagic = []byte{0x1f, 0x8b}

// etagAnswer is the answer of PUT /v1/bundles/{name}.
type etagAnswer struct {
	ETag string `json:"etag"`
}

func bundlePathName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if !bundleName.MatchString(name) || name == "." || name == ".." {
		return "", badRequest("bundle name %q is not valid ([a-zA-Z0-9._-]{1,128}, not . or ..)", name)
	}
	return name, nil
}

// bundleAudit is a bundle's value in its audit records.
type bundleAudit struct {
	ETag  string `json:"etag"`
	Bytes int    `json:"bytes"`
}

// etag is the quoted sha256 of a bundle.
func etag(sum []byte) string { return `"` + hex.EncodeToString(sum) + `"` }

// handlePutBundle is PUT /v1/bundles/{name} (admin token): the body, an OPA
// bundle tarball of at most max_body_bytes, is stored as is; the answer
// carries its ETag. The token is checked before the body is read.
func (s *Server) handlePutBundle(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	name, err := bundlePathName(r)
	if err == nil {
		err = requireAdmin(p, "uploading a bundle")
	}
	body, release, err := s.readBody(err, w, r, s.bodyLimit())
	defer release()
	if err == nil && !bytes.HasPrefix(body, gzipMagic) {
		err = errorf(http.StatusUnprocessableEntity, tenancy.CodeInvalid, "bundle %q: the body is not a gzip-compressed tarball (OPA bundle)", name)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sum := sha256.Sum256(body)
	var trimmed int
	audit := func(tx *bolt.Tx, old []byte) error {
		var before json.RawMessage
		if len(old) >= sha256.Size {
			before, _ = json.Marshal(bundleAudit{ETag: etag(old[:sha256.Size]), Bytes: len(old) - sha256.Size})
		}
		after, _ := json.Marshal(bundleAudit{ETag: etag(sum[:]), Bytes: len(body)})
		var err error
		trimmed, err = appendRecord(tx, AuditRecord{
			Revision: tenancy.Revision(tx), Time: s.now().UTC(), Actor: actorOf(p),
			Request: requestPut, Op: tenancy.OpPut, Collection: "bundles", ID: name,
			Tenants: []string{}, Before: before, After: after,
		}, s.cfg.Audit.Retention)
		return err
	}
	v := make([]byte, 0, len(sum)+len(body))
	err = s.store.putBundle(name, append(append(v, sum[:]...), body...), audit)
	if err == nil {
		s.metrics.auditRecords.Inc()
		s.metrics.auditTrimmed.Add(float64(trimmed))
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	tag := etag(sum[:])
	s.logger.Info("bundle stored", "bundle", name, "bytes", len(body), "etag", tag)
	w.Header().Set("ETag", tag)
	writeJSON(w, http.StatusOK, etagAnswer{ETag: tag})
}

// handleGetBundle is GET /v1/bundles/{name} (admin or sync token), with
// ETag and If-None-Match (304).
func (s *Server) handleGetBundle(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	name, err := bundlePathName(r)
	if err == nil {
		err = requireReader(p, "downloading a bundle")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var (
		tag      string
		content  []byte
		found    bool
		notModif bool
	)
	inm := r.Header.Get("If-None-Match")
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBundles).Get([]byte(name))
		if len(v) < sha256.Size {
			return nil
		}
		found = true
		tag = etag(v[:sha256.Size])
		if inm != "" && etagMatch(inm, tag) {
			notModif = true
			return nil
		}
		content = append([]byte(nil), v[sha256.Size:]...)
		return nil
	})
	switch {
	case err != nil:
		s.writeError(w, r, err)
		return
	case !found:
		s.writeError(w, r, notFound("bundle %q does not exist", name))
		return
	}
	w.Header().Set("ETag", tag)
	w.Header().Set("Cache-Control", "no-cache")
	if notModif {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("Content-Length", strconv.Itoa(len(content)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(content)
	}
}

// etagMatch implements If-None-Match's weak comparison: "*", or any of a
// comma-separated list of entity tags (W/ prefixes ignored).
func etagMatch(header, tag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == tag {
			return true
		}
	}
	return false
}
