package testutil

import (
	"context"
	"sync"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"

	"github.com/gatehouse-dev/gatehouse/authz"
)

// Tenancy is an in-memory authz.Tenancy whose revision, presence and sync
// time tests set, standing in for the bbolt cache.
type Tenancy struct {
	storage.PolicyNotSupported
	storage.TriggersNotSupported
	storage.WritesNotSupported

	mu      sync.Mutex
	state   authz.TenancyState
	data    ast.Object
	changed chan struct{} // closed and replaced on every Set
}

var _ authz.Tenancy = (*Tenancy)(nil)

// NewTenancy returns a store holding data (served at data.tenancy) at
// revision rev, present and synced now.
func NewTenancy(rev uint64, data map[string]any) *Tenancy {
	t := &Tenancy{changed: make(chan struct{}), data: ast.NewObject()}
	if data != nil {
		v, err := ast.InterfaceToValue(data)
		if err != nil {
			panic(err)
		}
		t.data = v.(ast.Object)
	}
	t.state = authz.TenancyState{Present: true, Revision: rev, SyncedAt: time.Now()}
	return t
}

// Set replaces the state (revision, presence, sync time, last error) and
// wakes WaitRevision callers.
func (t *Tenancy) Set(st authz.TenancyState) {
	t.mu.Lock()
	t.state = st
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

// Update replaces the data and moves to revision rev, synced now.
func (t *Tenancy) Update(rev uint64, data map[string]any) {
	v, err := ast.InterfaceToValue(data)
	if err != nil {
		panic(err)
	}
	t.mu.Lock()
	t.data = v.(ast.Object)
	t.state = authz.TenancyState{Present: true, Revision: rev, SyncedAt: time.Now()}
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

type tenancyTxn struct {
	rev  uint64
	data ast.Object
}

func (*tenancyTxn) ID() uint64 { return 1 }

// NewTransaction opens a read transaction on the current revision.
func (t *Tenancy) NewTransaction(context.Context, ...storage.TransactionParams) (storage.Transaction, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &tenancyTxn{rev: t.state.Revision, data: t.data}, nil
}

// Read serves paths under data.tenancy.
func (t *Tenancy) Read(_ context.Context, txn storage.Transaction, path storage.Path) (any, error) {
	if len(path) == 0 || path[0] != authz.TenancyRoot {
		return nil, &storage.Error{Code: storage.NotFoundErr, Message: path.String()}
	}
	var v ast.Value = txn.(*tenancyTxn).data
	for _, k := range path[1:] {
		obj, ok := v.(ast.Object)
		if !ok {
			return nil, &storage.Error{Code: storage.NotFoundErr, Message: path.String()}
		}
		child := obj.Get(ast.StringTerm(k))
		if child == nil {
			return nil, &storage.Error{Code: storage.NotFoundErr, Message: path.String()}
		}
		v = child.Value
	}
	return v, nil
}

// Commit refuses: the store is read-only.
func (t *Tenancy) Commit(context.Context, storage.Transaction) error {
	return &storage.Error{Code: storage.InvalidTransactionErr, Message: "read-only"}
}

// Abort ends a transaction.
func (t *Tenancy) Abort(context.Context, storage.Transaction) {}

// Truncate refuses: the store is read-only.
func (t *Tenancy) Truncate(context.Context, storage.Transaction, storage.TransactionParams, storage.Iterator) error {
	return &storage.Error{Code: storage.InvalidTransactionErr, Message: "read-only"}
}

// TxnRevision returns the revision txn reads.
func (t *Tenancy) TxnRevision(txn storage.Transaction) uint64 { return txn.(*tenancyTxn).rev }

// Changed implements authz.Tenancy.
func (t *Tenancy) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// State returns the current state.
func (t *Tenancy) State() authz.TenancyState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.state
}

// WaitRevision returns once the revision is at least rev, or with ctx's
// error.
func (t *Tenancy) WaitRevision(ctx context.Context, rev uint64) error {
	for {
		t.mu.Lock()
		reached, ch := t.state.Present && t.state.Revision >= rev, t.changed
		t.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
