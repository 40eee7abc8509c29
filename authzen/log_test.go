package authzen_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/authzen"
	"github.com/gatehouse-dev/gatehouse/decisionlog"
	"github.com/gatehouse-dev/gatehouse/internal/netx"
)

// TestAnswersLogged: every AuthZEN answer is a decision-log record in the
// file sink (SPEC §10 "Decisions are logged"): an evaluation, each item of
// a batch (gatehouse.batch_id = the batch's decision_id), a search, an
// batch item that cannot be decided (a record with error); each joined to its answer by the
// decision_id of the answer's context, with the AuthZEN rule as path, the
// AuthZEN input, the result, and the gatehouse object; the PEP's token is
// in no record.
func TestAnswersLogged(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "decisions.log")
	l, err := decisionlog.New(decisionlog.Config{File: &decisionlog.FileConfig{Path: path}},
		authz.New(authz.Config{}, nil, nil, discard()), discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	f := start(t, authzen.Config{Observer: l}, netx.TLSConfig{}, nil)

	type want struct {
		path    string
		allowed bool
		batch   string
		err     bool
	}
	wants := map[string]want{}
	idOf := func(out map[string]any) string {
		return out["context"].(map[string]any)["gatehouse"].(map[string]any)["decision_id"].(string)
	}
	for _, a := range []string{"yes", "no", "ctx"} {
		code, _, out := f.post(t, authzen.PathEvaluation, ev(a), nil)
		if code != 200 {
			t.Fatalf("%s: %d %v", a, code, out)
		}
		wants[idOf(out)] = want{path: "authzen/allow", allowed: a != "no"}
	}
	code, _, out := f.post(t, authzen.PathEvaluations, `{"subject":{"type":"user","id":"a"},"resource":{"type":"r","id":"1"},
		"evaluations":[{"action":{"name":"yes"}},{"action":{"name":"no"}},{"action":{"name":"boom"}}]}`, nil)
	if code != 200 {
		t.Fatalf("batch: %d %v", code, out)
	}
	batch := idOf(out)
	for i, it := range out["evaluations"].([]any) {
		item := it.(map[string]any)
		wants[idOf(item)] = want{path: "authzen/allow", allowed: i == 0, batch: batch, err: i == 2}
	}
	code, _, out = f.post(t, authzen.PathSearchSubject, `{"subject":{"type":"user"},"action":{"name":"yes"},"resource":{"type":"r","id":"1"},"page":{"limit":2}}`, nil)
	if code != 200 {
		t.Fatalf("search: %d %v", code, out)
	}
	wants[idOf(out)] = want{path: "authzen/search_subjects", allowed: true}

	cancel()
	<-done
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(token)) {
		t.Fatalf("the PEP token is in the decision log: %s", raw)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %s", line)
		}
		id, _ := rec["decision_id"].(string)
		w, ok := wants[id]
		if !ok {
			t.Fatalf("record not joined to an answer: %s", line)
		}
		if w.err != (rec["error"] != nil) {
			t.Errorf("%s: error %v, want one: %v", id, rec["error"], w.err)
		}
		if seen[id] {
			t.Fatalf("record %s twice", id)
		}
		seen[id] = true
		g := rec["gatehouse"].(map[string]any)
		in, _ := rec["input"].(map[string]any)
		switch {
		case rec["path"] != w.path:
			t.Errorf("%s: path %v, want %s", id, rec["path"], w.path)
		case g["allowed"] != w.allowed:
			t.Errorf("%s: allowed %v, want %v: %s", id, g["allowed"], w.allowed, line)
		case w.batch != "" && g["batch_id"] != w.batch:
			t.Errorf("%s: batch_id %v, want %s", id, g["batch_id"], w.batch)
		case in == nil || in["subject"] == nil || in["tenancy_revision"] != 3.0:
			t.Errorf("%s: input %v", id, in)
		case g["transport"] != "authzen" || !w.err && (g["tenancy_revision"] != 3.0 || g["policy_revision"] == ""):
			t.Errorf("%s: gatehouse %v", id, g)
		case !w.err && w.allowed && rec["result"] == nil:
			t.Errorf("%s: no result: %s", id, line)
		}
	}
	for id, w := range wants {
		if !seen[id] {
			t.Errorf("no record for answer %s (%+v)", id, w)
		}
	}
}
