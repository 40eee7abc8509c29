package authz

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
)

// TenancyRoot is the first segment of every tenancy path: data.tenancy.
const TenancyRoot = "tenancy"

// Tenancy serves data.tenancy to the engine. It is a read-only OPA store
// whose paths all start with "tenancy"; package bundle implements it on a
// bbolt file.
type Tenancy interface {
	storage.Store
	// TxnRevision returns the revision of the data a transaction reads.
	TxnRevision(txn storage.Transaction) uint64
	// State reports the current revision and sync state.
	State() TenancyState
	// WaitRevision returns once data at revision >= rev is readable, or with
	// ctx's error.
	WaitRevision(ctx context.Context, rev uint64) error
	// Changed returns a channel closed at the next change of the state's
	// revision or presence (nil for a store that never changes).
	Changed() <-chan struct{}
}

// TenancyState describes the tenancy data a Tenancy store serves.
type TenancyState struct {
	// Present is true once data at some revision is available (from the cache
	// file or the control endpoint).
	Present bool
	// Revision of the newest readable data; 0 when there is none.
	Revision uint64
	// SyncedAt is when the data was last known to be current (the last
	// change or heartbeat from the control endpoint).
	SyncedAt time.Time
	// LastError is the last sync or cache error, "" when healthy.
	LastError string
}

// EmptyTenancy returns a Tenancy with no data at revision 0, always present:
// what the engine uses when no control endpoint is configured.
func EmptyTenancy() Tenancy { return emptyTenancy{} }

type emptyTenancy struct {
	storage.PolicyNotSupported
	storage.TriggersNotSupported
	storage.WritesNotSupported
}

type noTxn struct{}

func (noTxn) ID() uint64 { return 0 }

func (emptyTenancy) NewTransaction(context.Context, ...storage.TransactionParams) (storage.Transaction, error) {
	return noTxn{}, nil
}
func (emptyTenancy) Read(_ context.Context, _ storage.Transaction, path storage.Path) (any, error) {
	if len(path) == 1 && path[0] == TenancyRoot {
		return ast.NewObject(), nil
	}
	return nil, notFound(path)
}
func (emptyTenancy) Commit(context.Context, storage.Transaction) error { return nil }
func (emptyTenancy) Abort(context.Context, storage.Transaction)        {}
func (emptyTenancy) Truncate(context.Context, storage.Transaction, storage.TransactionParams, storage.Iterator) error {
	return &storage.Error{Code: storage.InvalidTransactionErr, Message: errWriteTxn.Error()}
}
func (emptyTenancy) TxnRevision(storage.Transaction) uint64 { return 0 }

func (emptyTenancy) Changed() <-chan struct{} { return nil }
func (emptyTenancy) State() TenancyState      { return TenancyState{Present: true} }
func (emptyTenancy) WaitRevision(ctx context.Context, rev uint64) error {
	if rev == 0 {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// dataStore is the OPA store one evaluation reads: static policy data at
// every path but data.tenancy, which is routed to the Tenancy store.
type dataStore struct {
	storage.PolicyNotSupported
	storage.TriggersNotSupported
	storage.WritesNotSupported
	static  ast.Object
	tenancy Tenancy
}

var _ storage.Store = (*dataStore)(nil)

var txnIDs atomic.Uint64

type dataTxn struct {
	id      uint64
	tenancy storage.Transaction
}

func (t *dataTxn) ID() uint64 { return t.id }

var errWriteTxn = errors.New("the decision store is read-only")

func (s *dataStore) NewTransaction(ctx context.Context, params ...storage.TransactionParams) (storage.Transaction, error) {
	for _, p := range params {
		if p.Write {
			return nil, &storage.Error{Code: storage.InvalidTransactionErr, Message: errWriteTxn.Error()}
		}
	}
	tt, err := s.tenancy.NewTransaction(ctx)
	if err != nil {
		return nil, err
	}
	return &dataTxn{id: txnIDs.Add(1), tenancy: tt}, nil
}

func (s *dataStore) Read(ctx context.Context, txn storage.Transaction, path storage.Path) (any, error) {
	t, ok := txn.(*dataTxn)
	if !ok {
		return nil, &storage.Error{Code: storage.InvalidTransactionErr, Message: "unknown transaction"}
	}
	if len(path) == 0 {
		root, err := s.tenancy.Read(ctx, t.tenancy, storage.Path{TenancyRoot})
		if err != nil && !storage.IsNotFound(err) {
			return nil, err
		}
		out := s.static.Copy()
		if v, ok := root.(ast.Value); ok {
			out.Insert(ast.InternedTerm(TenancyRoot), ast.NewTerm(v))
		}
		return out, nil
	}
	if path[0] == TenancyRoot {
		return s.tenancy.Read(ctx, t.tenancy, path)
	}
	var v ast.Value = s.static
	for _, key := range path {
		obj, ok := v.(ast.Object)
		if !ok {
			return nil, notFound(path)
		}
		child := obj.Get(ast.StringTerm(key))
		if child == nil {
			return nil, notFound(path)
		}
		v = child.Value
	}
	return v, nil
}

func (s *dataStore) Commit(context.Context, storage.Transaction) error {
	return &storage.Error{Code: storage.InvalidTransactionErr, Message: errWriteTxn.Error()}
}

func (s *dataStore) Abort(ctx context.Context, txn storage.Transaction) {
	if t, ok := txn.(*dataTxn); ok {
		s.tenancy.Abort(ctx, t.tenancy)
	}
}

func (s *dataStore) Truncate(context.Context, storage.Transaction, storage.TransactionParams, storage.Iterator) error {
	return &storage.Error{Code: storage.InvalidTransactionErr, Message: errWriteTxn.Error()}
}

// notFound is the storage error OPA expects for a missing path.
func notFound(path storage.Path) *storage.Error {
	return &storage.Error{Code: storage.NotFoundErr, Message: path.String() + ": document does not exist"}
}
