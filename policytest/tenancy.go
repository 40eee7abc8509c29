package policytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.yaml.in/yaml/v3"

	"github.com/gatehouse-dev/gatehouse/replica"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// ReadTenancyFile reads a tenancy data file and returns it as the operations
// of one control API batch. Two shapes are accepted, in JSON or YAML:
//
//	{"ops": [{"op": "put", "collection": "tenants", "value": {...}}, ...]}   the batch of POST /v1/batch
//	{"tenants": [{...}, ...], "users": {"bob": {...}}, ...}                  entities per collection (a list, or an object by id)
func ReadTenancyFile(path string) ([]tenancy.Op, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	doc, err := toJSON(path, raw)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(doc, &top); err != nil {
		return nil, fmt.Errorf("%s: want an object with \"ops\" (a control API batch) or collections of entities", path)
	}
	if rawOps, ok := top["ops"]; ok {
		if len(top) != 1 {
			return nil, fmt.Errorf("%s: a batch holds only \"ops\"", path)
		}
		dec := json.NewDecoder(bytes.NewReader(rawOps))
		dec.DisallowUnknownFields()
		var ops []tenancy.Op
		if err := dec.Decode(&ops); err != nil {
			return nil, fmt.Errorf("%s: ops: %v", path, err)
		}
		return ops, nil
	}
	var ops []tenancy.Op
	for name := range top {
		if !tenancy.IsCollection(name) {
			return nil, fmt.Errorf("%s: %q is not a collection (want one of %s, or a batch with \"ops\")", path, name, strings.Join(tenancy.Collections, ", "))
		}
	}
	for _, name := range tenancy.Collections {
		body, ok := top[name]
		if !ok {
			continue
		}
		values, err := entities(body)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %v", path, name, err)
		}
		for _, v := range values {
			ops = append(ops, tenancy.Op{Op: tenancy.OpPut, Collection: name, Value: v})
		}
	}
	return ops, nil
}

// entities reads a list of entities, or an object of entities by id (the
// id is filled in when the entity omits it).
func entities(body json.RawMessage) ([]json.RawMessage, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(body, &list); err == nil {
		return list, nil
	}
	var byID map[string]json.RawMessage
	if err := json.Unmarshal(body, &byID); err != nil {
		return nil, fmt.Errorf("want a list of entities or an object of entities by id")
	}
	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]json.RawMessage, 0, len(ids))
	for _, id := range ids {
		var e map[string]any
		if err := json.Unmarshal(byID[id], &e); err != nil {
			return nil, fmt.Errorf("%s: want an object", id)
		}
		if _, ok := e["id"]; !ok {
			e["id"] = id
		}
		b, _ := json.Marshal(e)
		out = append(out, b)
	}
	return out, nil
}

// toJSON returns raw as JSON: YAML files (.yaml, .yml) are converted.
func toJSON(path string, raw []byte) ([]byte, error) {
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".yaml" && ext != ".yml" {
		if !json.Valid(raw) {
			var v any
			err := json.Unmarshal(raw, &v)
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		return raw, nil
	}
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return b, nil
}

// OpenTenancy builds a sidecar tenancy cache (a replica.Store) in dir holding
// the result of ops. The ops are applied as the control endpoint applies a
// batch (tenancy.Apply: invariants, cascades, indexes) to a scratch file,
// and the resulting changes reach the store the way a sidecar receives
// them: as revision 1 of the change feed (replica.Store.ApplyRevisions). The
// caller closes the store.
func OpenTenancy(dir string, ops []tenancy.Op, logger *slog.Logger) (*replica.Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	changes, err := applyBatch(filepath.Join(dir, "control.db"), ops)
	if err != nil {
		return nil, err
	}
	store, err := replica.OpenStore(replica.StoreConfig{Dir: filepath.Join(dir, "sidecar")}, logger)
	if err != nil {
		return nil, err
	}
	err = store.ApplyRevisions([]tenancy.FeedLine{{
		Type: tenancy.LineRevision, Revision: 1, Time: time.Now(), Changes: changes,
	}}, time.Now())
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("load the tenancy cache: %w", err)
	}
	return store, nil
}

// applyBatch applies ops with tenancy.Apply in a scratch bbolt file and
// returns the changes made (what the change feed would carry).
func applyBatch(path string, ops []tenancy.Op) ([]tenancy.Change, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	var changes []tenancy.Change
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tenancy.Init(tx); err != nil {
			return err
		}
		w, err := tenancy.NewWriter(tx, 1)
		if err != nil {
			return err
		}
		if len(ops) > 0 {
			if err := tenancy.Apply(w, ops); err != nil {
				return err
			}
		}
		changes = w.Changes()
		return w.Finish()
	})
	if err != nil {
		return nil, err
	}
	return changes, nil
}
