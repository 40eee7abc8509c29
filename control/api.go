package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// Paging of GET /v1/{collection}.
const (
	defaultLimit = 100
	maxLimit     = 1000
)

// RevisionHeader carries the revision a read was made at.
const RevisionHeader = "X-Gatehouse-Revision"

// bodyReadTimeout bounds reading a request body.
const bodyReadTimeout = time.Minute

// entityBucket is the bucket of a collection in tenancy's layout.
func entityBucket(collection string) []byte { return []byte("e/" + collection) }

// pathEntity returns the collection and id of /v1/{collection}/{id}: an
// unknown collection is 404, an invalid id 400.
func pathEntity(r *http.Request) (collection, id string, err error) {
	collection, err = pathCollection(r)
	if err != nil {
		return "", "", err
	}
	id = r.PathValue("id")
	if !tenancy.ValidID(id) {
		return "", "", badRequest("%s: id %q in the path is not a valid id ([a-zA-Z0-9._-]{1,128})", collection, id)
	}
	return collection, id, nil
}

func pathCollection(r *http.Request) (string, error) {
	c := r.PathValue("collection")
	if !tenancy.IsCollection(c) {
		return "", notFound("unknown collection %q (want one of %s)", c, strings.Join(tenancy.Collections, ", "))
	}
	return c, nil
}

// readBody reads the request body, at most max_body_bytes (413 beyond).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := s.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		return nil, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "the body (%d bytes) exceeds max_body_bytes (%d)", r.ContentLength, limit)
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "the body exceeds max_body_bytes (%d)", limit)
	}
	if err != nil {
		return nil, badRequest("read the body: %v", err)
	}
	return b, nil
}

// putAnswer is the answer of PUT /v1/{collection}/{id}.
type putAnswer struct {
	Revision uint64          `json:"revision"`
	Value    json.RawMessage `json:"value"`
}

// changesAnswer is the answer of DELETE and POST /v1/batch.
type changesAnswer struct {
	Revision uint64 `json:"revision"`
	Changes  int    `json:"changes"`
}

// listAnswer is the answer of GET /v1/{collection}.
type listAnswer struct {
	Items    []json.RawMessage `json:"items"`
	Next     string            `json:"next"`
	Revision uint64            `json:"revision"`
}

// batchRequest is the body of POST /v1/batch.
type batchRequest struct {
	Ops []tenancy.Op `json:"ops"`
}

// handlePut is PUT /v1/{collection}/{id}: create or replace one entity.
func (s *Server) handlePut(w http.ResponseWriter, r *http.Request) {
	p, collection, id, err := s.entityWriter(r)
	var body []byte
	if err == nil {
		body, err = s.readBody(w, r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.write(p, []tenancy.Op{{Op: tenancy.OpPut, Collection: collection, ID: id, Value: body}})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var value json.RawMessage
	for _, c := range res.changes {
		if c.Op == tenancy.OpPut && c.Collection == collection && c.ID == id {
			value = c.Value
		}
	}
	writeJSON(w, http.StatusOK, putAnswer{Revision: res.revision, Value: value})
}

// entityWriter authenticates a write to /v1/{collection}/{id} and returns
// its principal, collection and id; the sync token is read-only.
func (s *Server) entityWriter(r *http.Request) (principal, string, string, error) {
	p, err := s.authenticate(r)
	if err != nil {
		return p, "", "", err
	}
	collection, id, err := pathEntity(r)
	if err == nil && p.role == roleSync {
		err = forbidden("the sync token is read-only")
	}
	return p, collection, id, err
}

// handleDelete is DELETE /v1/{collection}/{id}[?cascade=true].
func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	p, collection, id, err := s.entityWriter(r)
	cascade := false
	if v := r.URL.Query().Get("cascade"); err == nil && v != "" {
		if cascade, err = strconv.ParseBool(v); err != nil {
			err = badRequest("cascade=%q is not true or false", v)
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.write(p, []tenancy.Op{{Op: tenancy.OpDelete, Collection: collection, ID: id, Cascade: cascade}})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, changesAnswer{Revision: res.revision, Changes: len(res.changes)})
}

// handleBatch is POST /v1/batch: up to tenancy.MaxBatch ops, atomically.
func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err == nil && p.role == roleSync {
		err = forbidden("the sync token is read-only")
	}
	var body []byte
	if err == nil {
		body, err = s.readBody(w, r)
	}
	var req batchRequest
	if err == nil {
		err = decodeStrict(body, &req)
	}
	if err == nil && len(req.Ops) > tenancy.MaxBatch {
		err = badRequest("batch: %d operations, at most %d per batch", len(req.Ops), tenancy.MaxBatch)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.write(p, req.Ops)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, changesAnswer{Revision: res.revision, Changes: len(res.changes)})
}

// decodeStrict decodes one JSON object into v, refusing unknown fields and
// trailing data (400).
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("batch: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("batch: trailing data after the JSON object")
	}
	return nil
}

// handleGet is GET /v1/{collection}/{id}: the stored entity, with the
// revision read at in X-Gatehouse-Revision. Delegated administrators may
// read the entities they could write.
func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	collection, id, err := pathEntity(r)
	if err == nil && p.role == roleSync {
		err = forbidden("the sync token reads the sync feed and bundles only")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var (
		doc []byte
		rev uint64
	)
	err = s.db.View(func(tx *bolt.Tx) error {
		var rights *rights
		if p.role == roleUser {
			var err error
			if rights, err = loadRights(tx, p); err != nil {
				return err
			}
		}
		v := tx.Bucket(entityBucket(collection)).Get([]byte(id))
		if v == nil {
			return &tenancy.Error{Status: http.StatusNotFound, Code: tenancy.CodeNotFound, Msg: collection + "/" + id + " does not exist"}
		}
		_, d := tenancy.ModRevision(v)
		if rights != nil {
			e, err := tenancy.DecodeStored(collection, d)
			if err != nil {
				return err
			}
			if !rights.allows(e) {
				return rights.refuse("read", e, "")
			}
		}
		doc = append([]byte(nil), d...)
		rev = tenancy.Revision(tx)
		return nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set(RevisionHeader, strconv.FormatUint(rev, 10))
	_, _ = w.Write(append(doc, '\n'))
}

// handleList is GET /v1/{collection}?limit=&after=: a page of entities in
// id order (admin token only).
func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	collection, err := pathCollection(r)
	if err == nil {
		err = requireAdmin(p, "listing a collection")
	}
	q := r.URL.Query()
	limit := defaultLimit
	if v := q.Get("limit"); err == nil && v != "" {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > maxLimit {
			err = badRequest("limit=%q: want a number from 1 to %d", v, maxLimit)
		}
		limit = n
	}
	after := q.Get("after")
	if err == nil && after != "" && !tenancy.ValidID(after) {
		err = badRequest("after=%q is not a valid id", after)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ans := listAnswer{Items: []json.RawMessage{}}
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(entityBucket(collection)).Cursor()
		var (
			k, v   []byte
			lastID string
		)
		if after == "" {
			k, v = c.First()
		} else if k, v = c.Seek([]byte(after)); k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil; k, v = c.Next() {
			if len(ans.Items) == limit {
				ans.Next = lastID // more follow
				break
			}
			_, doc := tenancy.ModRevision(v)
			ans.Items = append(ans.Items, append(json.RawMessage(nil), doc...))
			lastID = string(k)
		}
		ans.Revision = tenancy.Revision(tx)
		return nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ans)
}
