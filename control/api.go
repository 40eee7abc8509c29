package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
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
		return "", "", badRequest("%s: id %q in the path is not a valid id ([a-zA-Z0-9._-]{1,128}, not . or ..)", collection, id)
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

// bodyLimit is the bound of one endpoint's request bodies.
type bodyLimit struct {
	bytes int64
	key   string // the configuration key, for errors
}

func (s *Server) entityLimit() bodyLimit { return bodyLimit{s.cfg.MaxEntityBytes, "max_entity_bytes"} }
func (s *Server) bodyLimit() bodyLimit   { return bodyLimit{s.cfg.MaxBodyBytes, "max_body_bytes"} }

// readBody reads the request body, at most limit (413 beyond, without
// reading it when its Content-Length says so). Callers authenticate and
// check that the caller may make the request at all first: nothing of a
// body is read for a caller without the right. The body's size (its
// Content-Length, or the limit for a chunked body) is reserved in
// body_budget_bytes first, so that bodies read and decoded at once never
// exceed it; a body that finds no room within body_budget_wait answers
// 503. release returns the reservation: call it when the request is done
// with the body (it is never nil: a no-op on error). prev is the caller's
// error so far: when it is not nil, nothing is read and prev is returned,
// so a handler reads the body only once its earlier steps passed.
func (s *Server) readBody(prev error, w http.ResponseWriter, r *http.Request, limit bodyLimit) (body []byte, release func(), err error) {
	if prev != nil {
		return nil, noRelease, prev
	}
	if r.ContentLength > limit.bytes {
		return nil, noRelease, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "the body (%d bytes) exceeds %s (%d)", r.ContentLength, limit.key, limit.bytes)
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return []byte{}, func() {}, nil
	}
	reserved := r.ContentLength
	if reserved < 0 {
		reserved = limit.bytes
	}
	if err := s.reserveBody(r.Context(), reserved); err != nil {
		return nil, noRelease, err
	}
	defer func() {
		if err != nil {
			s.bodies.Release(reserved)
		}
	}()
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	if r.ContentLength > 0 {
		// The server ends the body at its Content-Length.
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, body)
	} else {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, limit.bytes))
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, noRelease, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "the body exceeds %s (%d)", limit.key, limit.bytes)
	}
	if err != nil {
		return nil, noRelease, badRequest("read the body: %v", err)
	}
	if n := int64(len(body)); n < reserved { // a chunked body shorter than the limit
		s.bodies.Release(reserved - n)
		reserved = n
	}
	held := reserved
	return body, sync.OnceFunc(func() { s.bodies.Release(held) }), nil
}

// noRelease is readBody's release when nothing is reserved.
func noRelease() {}

// reserveBody takes n bytes of body_budget_bytes, waiting up to
// body_budget_wait (and no longer than ctx) for other bodies to be done.
func (s *Server) reserveBody(ctx context.Context, n int64) error {
	if s.bodies.TryAcquire(n) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.BodyBudgetWait)
	defer cancel()
	if err := s.bodies.Acquire(ctx, n); err != nil {
		s.metrics.bodiesBusy.Inc()
		return errorf(http.StatusServiceUnavailable, CodeBusy, "busy: request bodies being read take body_budget_bytes (%d); no room for %d bytes within %v: retry later", s.cfg.BodyBudgetBytes, n, s.cfg.BodyBudgetWait)
	}
	return nil
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
	body, release, err := s.readBody(err, w, r, s.entityLimit())
	defer release()
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
// its principal, collection and id, refusing callers that may not write
// the collection at all (see mayWrite).
func (s *Server) entityWriter(r *http.Request) (principal, string, string, error) {
	p, err := s.authenticate(r)
	if err != nil {
		return p, "", "", err
	}
	collection, id, err := pathEntity(r)
	if err == nil {
		err = s.mayWrite(p, collection, r.Method)
	}
	return p, collection, id, err
}

// batchWriter authenticates a batch, refusing callers that may not write
// at all (see mayWrite).
func (s *Server) batchWriter(r *http.Request) (principal, error) {
	p, err := s.authenticate(r)
	if err == nil {
		err = s.mayWrite(p, "", r.Method)
	}
	return p, err
}

// mayWrite refuses, before a body is read, a caller that can make no
// write of the request: the sync token (read-only), and a delegated user
// who administers nothing (unknown, suspended, or without admin
// memberships) or, when collection is known, who never writes that
// collection. What the user may write is checked again, on the change
// set, when the write is applied.
func (s *Server) mayWrite(p principal, collection, method string) error {
	switch p.role {
	case roleSync:
		return forbidden("the sync token is read-only")
	case roleUser:
		return s.db.View(func(tx *bolt.Tx) error {
			r, err := loadRights(tx, p)
			if err == nil && collection != "" {
				verb := tenancy.OpPut
				if method == http.MethodDelete {
					verb = tenancy.OpDelete
				}
				err = r.mayWriteCollection(verb, collection)
			}
			return err
		})
	}
	return nil
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
	p, err := s.batchWriter(r)
	body, release, err := s.readBody(err, w, r, s.bodyLimit())
	defer release()
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

// decodeStrict decodes one JSON object into v, refusing keys that are not
// exactly one of its fields (unknown, case-folded or duplicated, at every
// level but the ops' values, which tenancy.Decode checks) and trailing
// data (400).
func decodeStrict(body []byte, v any) error {
	if !json.Valid(body) {
		return badRequest("batch: the body is not valid JSON")
	}
	if err := tenancy.CheckKeys(body, v); err != nil {
		return badRequest("batch: %v", err)
	}
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
