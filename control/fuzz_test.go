package control_test

// FuzzWrite fuzzes the admin API's writes — PUT /v1/{collection}/{id},
// DELETE /v1/{collection}/{id}[?cascade=true] and POST /v1/batch with
// arbitrary bodies — through the real handler over a real bbolt file
// holding the demo world.
//
// Properties: no panic; never a 5xx (whatever a client sends is its
// problem: a 4xx naming it); a refused write changes nothing (the whole
// state and the revision are as before); an accepted write advances the
// revision by one and leaves a state in which every SPEC §5 invariant
// holds, checked from scratch over the whole state (testutil.Violations),
// with no owner or grant target changed in place; and a body that breaks
// the JSON rules of SPEC §5 (unknown, case-folded or duplicate field
// names) is refused.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/internal/testutil"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// fzWorld is the demo world `gatehouse dev` seeds (a batch).
func fzWorld(tb testing.TB) []byte {
	tb.Helper()
	b, err := os.ReadFile("../cmd/gatehouse/devworld.json")
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fzServer opens a control server over a copy of the template file (none:
// a new file) in a new folder, which it returns too.
func fzServer(tb testing.TB, template []byte, tokenFile string) (*control.Server, string) {
	tb.Helper()
	dir := tb.TempDir()
	if template != nil {
		if err := os.WriteFile(filepath.Join(dir, control.DBFile), template, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	srv, err := control.New(control.Config{Addr: "127.0.0.1:0", DataDir: dir, AdminTokenFile: tokenFile}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = srv.Close() })
	return srv, dir
}

// fzDo sends one admin request to the handler.
func fzDo(h http.Handler, method, target string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "http://control.test/", bytes.NewReader(body))
	u, err := url.Parse("http://control.test" + target)
	if err != nil {
		return nil
	}
	req.URL, req.RequestURI = u, u.RequestURI()
	req.Header.Set("Authorization", "Bearer "+adminToken)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// fzState reads the whole state through GET /v1/{collection} pages; every
// page must be at the same revision.
func fzState(tb testing.TB, h http.Handler) (testutil.State, uint64) {
	tb.Helper()
	s := testutil.NewState()
	var rev uint64
	first := true
	for _, c := range tenancy.Collections {
		after := ""
		for {
			w := fzDo(h, http.MethodGet, "/v1/"+c+"?limit=1000&after="+url.QueryEscape(after), nil)
			if w.Code != http.StatusOK {
				tb.Fatalf("list %s: %d %s", c, w.Code, w.Body)
			}
			var page struct {
				Items    []json.RawMessage `json:"items"`
				Next     string            `json:"next"`
				Revision uint64            `json:"revision"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil {
				tb.Fatalf("list %s: %v", c, err)
			}
			if first {
				rev, first = page.Revision, false
			} else if page.Revision != rev {
				tb.Fatalf("list pages at revisions %d and %d", rev, page.Revision)
			}
			for _, it := range page.Items {
				e, err := tenancy.DecodeStored(c, it)
				if err != nil {
					tb.Fatalf("the control lists a %s that does not decode: %v (%s)", c, err, it)
				}
				s[c][e.Key()] = e
			}
			if page.Next == "" {
				break
			}
			after = page.Next
		}
	}
	return s, rev
}

func FuzzWrite(f *testing.F) {
	tokenFile := writeFile(f, f.TempDir(), "admin.token", adminToken)
	seed, seedDir := fzServer(f, nil, tokenFile)
	if w := fzDo(seed.Handler(), http.MethodPost, "/v1/batch", fzWorld(f)); w.Code != http.StatusOK {
		f.Fatalf("seed the world: %d %s", w.Code, w.Body)
	}
	if err := seed.Close(); err != nil {
		f.Fatal(err)
	}
	template, err := os.ReadFile(filepath.Join(seedDir, control.DBFile))
	if err != nil {
		f.Fatal(err)
	}

	const (
		put uint8 = iota
		del
		batch
	)
	f.Add(put, "tenants", "delta", []byte(`{"id":"delta","name":"Delta","parent":"acme","kind":"customer"}`), false)
	f.Add(put, "tenants", "acme", []byte(`{"id":"acme","parent":"beta"}`), false) // a cycle
	f.Add(put, "users", "zed", []byte(`{"id":"zed","tenant":"nowhere"}`), false)
	f.Add(put, "users", "zed", []byte(`{"id":"zed","tenant":"alpha","Kind":"machine"}`), false) // case-folded name
	f.Add(put, "users", "zed", []byte(`{"id":"zed","tenant":"alpha","tenant":"beta"}`), false)  // duplicate name
	f.Add(put, "users", "zed", []byte(`{"id":"zed","tenant":"alpha","extra":1}`), false)
	f.Add(put, "users", "zed", []byte(`{"id":"other","tenant":"alpha"}`), false)
	f.Add(put, "projects", "timekeeping", []byte(`{"id":"timekeeping","owner":"acme","roles":["reader"]}`), false)
	f.Add(put, "projects", "timekeeping", []byte(`{"id":"timekeeping","owner":"globex","roles":["reader","writer"]}`), false)
	f.Add(put, "project_grants", "pg-x", []byte(`{"id":"pg-x","project":"timekeeping","tenant":"acme","roles":["reader"]}`), false)
	f.Add(put, "user_grants", "ug-x", []byte(`{"id":"ug-x","user":"bob","project":"timekeeping","tenant":"beta","roles":["owner"]}`), false)
	f.Add(put, "memberships", "m-x", []byte(`{"id":"m-x","user":"bob","scope":{"type":"tenant","id":"beta","type":"project"},"roles":["admin"]}`), false)
	f.Add(put, "tenants", "..", []byte(`{"id":".."}`), false)
	f.Add(put, "tenants", "t", []byte(`{"id":"t"} {"id":"u"}`), false)
	f.Add(put, "tenants", "t", []byte(`{"id":"t","labels":{"a":"1","a":"2"}}`), false)
	f.Add(del, "tenants", "acme", []byte(nil), false)
	f.Add(del, "tenants", "acme", []byte(nil), true)
	f.Add(del, "projects", "timekeeping", []byte(nil), true)
	f.Add(del, "users", "nobody", []byte(nil), false)
	f.Add(batch, "", "", []byte(`{"ops":[{"op":"put","collection":"tenants","value":{"id":"n1","parent":"n2"}},{"op":"put","collection":"tenants","value":{"id":"n2"}}]}`), false)
	f.Add(batch, "", "", []byte(`{"ops":[{"op":"put","collection":"tenants","value":{"id":"n1","parent":"n2"}},{"op":"put","collection":"tenants","value":{"id":"n2","parent":"n1"}}]}`), false)
	f.Add(batch, "", "", []byte(`{"ops":[{"op":"delete","collection":"tenants","id":"beta","cascade":true},{"op":"put","collection":"tenants","value":{"id":"beta"}}]}`), false)
	f.Add(batch, "", "", []byte(`{"ops":[{"op":"put","collection":"project_grants","value":{"id":"pg-n","project":"np","tenant":"beta","roles":["r"]}},{"op":"put","collection":"projects","value":{"id":"np","owner":"acme","roles":["r"]}}]}`), false)
	f.Add(batch, "", "", []byte(`{"ops":[]}`), false)
	f.Add(batch, "", "", []byte(`{"Ops":[{"op":"delete","collection":"users","id":"bob"}]}`), false)
	f.Add(batch, "", "", []byte(`{"ops":[{"op":"delete","collection":"users","id":"bob","Cascade":true}]}`), false)
	f.Add(batch, "", "", []byte(`not json`), false)

	f.Fuzz(func(t *testing.T, kind uint8, collection, id string, body []byte, cascade bool) {
		srv, _ := fzServer(t, template, tokenFile)
		h := srv.Handler()
		before, rev := fzState(t, h)
		var w *httptest.ResponseRecorder
		target := "/v1/" + url.PathEscape(collection) + "/" + url.PathEscape(id)
		switch kind % 3 {
		case put:
			w = fzDo(h, http.MethodPut, target, body)
		case del:
			q := ""
			if cascade {
				q = "?cascade=true"
			}
			w = fzDo(h, http.MethodDelete, target+q, nil)
		case batch:
			target = "/v1/batch"
			w = fzDo(h, http.MethodPost, target, body)
		}
		if w == nil {
			return
		}
		after, newRev := fzState(t, h)
		switch {
		case w.Code >= 500:
			t.Fatalf("answered %d for a client's write: %s", w.Code, w.Body)
		case w.Code >= 300 && w.Code < 400:
			// net/http's ServeMux redirects a path that is not clean
			// (//, /./, /../) to its clean form: nothing is written
			if path.Clean(target) == target {
				t.Fatalf("answered %d (a redirect) for the clean path %s: want a 2xx or a 4xx", w.Code, target)
			}
			if newRev != rev || !reflect.DeepEqual(before, after) {
				t.Fatalf("a redirected write changed the state")
			}
		case w.Code >= 400:
			var e struct{ Error, Code string }
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error == "" || e.Code == "" {
				t.Fatalf("a %d without {\"error\", \"code\"}: %s", w.Code, w.Body)
			}
			if newRev != rev || !reflect.DeepEqual(before, after) {
				t.Fatalf("a refused write (%d %s) changed the state (revision %d to %d)", w.Code, w.Body, rev, newRev)
			}
		case w.Code == http.StatusOK:
			var ans struct{ Revision uint64 }
			if err := json.Unmarshal(w.Body.Bytes(), &ans); err != nil || ans.Revision != rev+1 || newRev != rev+1 {
				t.Fatalf("an accepted write answered %s; the revision went from %d to %d", w.Body, rev, newRev)
			}
			if v := after.Violations(); len(v) > 0 {
				t.Fatalf("an accepted write left a state breaking invariants:\n  %s", strings.Join(v, "\n  "))
			}
			if v := testutil.TransitionViolations(before, after); len(v) > 0 {
				t.Fatalf("an accepted write made a forbidden change: %s", strings.Join(v, "; "))
			}
			if kind%3 == batch {
				if err := strictBatch(body); err != nil {
					t.Fatalf("accepted a batch that breaks SPEC §5's JSON rules: %v", err)
				}
			} else if kind%3 == put {
				if err := strictEntity(collection, body); err != nil {
					t.Fatalf("accepted an entity that breaks SPEC §5's JSON rules: %v", err)
				}
			}
		default:
			t.Fatalf("unexpected status %d: %s", w.Code, w.Body)
		}
	})
}

// The exact field names of SPEC §5 (users' issuer included).
var fzFields = map[string][]string{
	tenancy.Tenants:       {"id", "name", "parent", "kind", "status", "labels"},
	tenancy.Users:         {"id", "tenant", "kind", "status", "issuer", "labels"},
	tenancy.Projects:      {"id", "owner", "roles", "labels"},
	tenancy.ProjectGrants: {"id", "project", "tenant", "roles", "status"},
	tenancy.UserGrants:    {"id", "user", "project", "tenant", "roles"},
	tenancy.Memberships:   {"id", "user", "scope", "roles"},
}

// strictEntity re-checks an entity body independently of the decoder: one
// JSON object, field names exactly those of its collection, no name twice
// in any object (labels and scope included).
func strictEntity(collection string, body []byte) error {
	fields, ok := fzFields[collection]
	if !ok {
		return fmt.Errorf("unknown collection %q", collection)
	}
	var obj map[string]json.RawMessage
	if err := strictJSON(body, &obj); err != nil {
		return err
	}
	for k, v := range obj {
		if !containsExact(fields, k) {
			return fmt.Errorf("%s: field %q is not one of %v", collection, k, fields)
		}
		if k == "scope" {
			var scope map[string]json.RawMessage
			if err := json.Unmarshal(v, &scope); err == nil {
				for sk := range scope {
					if sk != "type" && sk != "id" {
						return fmt.Errorf("scope: field %q", sk)
					}
				}
			}
		}
	}
	return nil
}

// strictBatch: {"ops": [{"op","collection","id","value","cascade"}]} with
// exact names, every put value strict for its collection.
func strictBatch(body []byte) error {
	var req map[string]json.RawMessage
	if err := strictJSON(body, &req); err != nil {
		return err
	}
	for k := range req {
		if k != "ops" {
			return fmt.Errorf("batch: field %q", k)
		}
	}
	var ops []map[string]json.RawMessage
	if err := json.Unmarshal(req["ops"], &ops); err != nil {
		return err
	}
	for i, op := range ops {
		for k := range op {
			if !containsExact([]string{"op", "collection", "id", "value", "cascade"}, k) {
				return fmt.Errorf("ops[%d]: field %q", i, k)
			}
		}
		var name, coll string
		_ = json.Unmarshal(op["op"], &name)
		_ = json.Unmarshal(op["collection"], &coll)
		if name == tenancy.OpPut {
			if err := strictEntity(coll, op["value"]); err != nil {
				return fmt.Errorf("ops[%d]: %w", i, err)
			}
		}
	}
	return nil
}

// strictJSON decodes exactly one JSON value into v after checking that no
// object anywhere in it names a member twice.
func strictJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := noDuplicates(dec); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return json.Unmarshal(body, v)
}

func noDuplicates(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return err
			}
			name := k.(string)
			if seen[name] {
				return fmt.Errorf("member %q appears twice", name)
			}
			seen[name] = true
			if err := noDuplicates(dec); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	case json.Delim('['):
		for dec.More() {
			if err := noDuplicates(dec); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	}
	return nil
}

func containsExact(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
