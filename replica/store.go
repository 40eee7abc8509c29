// store.go is long (about 800 lines) on purpose: it is the one OPA
// storage.Store of the tenancy data — file lifecycle, state, transactions
// and keyed reads share the file's invariants (generations, damage,
// recorded reads), and reading them in one place is how they stay right.

package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/storage"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/gatehouse-dev/gatehouse/authz"
	"github.com/gatehouse-dev/gatehouse/tenancy"
)

// ErrClosed is returned by CheckFile after Close.
var ErrClosed = errors.New("tenancy cache closed")

// ErrInUse is returned by OpenStore when another process holds the cache
// file (two sidecars on one data directory).
var ErrInUse = errors.New("cache file in use")

// CacheFile is the name of the cache file in the data directory.
const CacheFile = "tenancy.db"

// StoreConfig configures a Store.
type StoreConfig struct {
	// Dir holds the cache file.
	Dir string
	// MaxReadEntries bounds how many entries one read may decode (e.g. a
	// policy reading a whole collection); larger reads fail the evaluation
	// instead of exhausting memory. Default 200000.
	MaxReadEntries int
	// CacheEntries bounds the decoded-document cache (default 50000; <0
	// disables it).
	CacheEntries int
	// Now is a test hook.
	Now func() time.Time
}

// Store is the sidecar's tenancy cache: an OPA store serving data.tenancy
// from a bbolt file. It implements authz.Tenancy.
type Store struct {
	storage.PolicyNotSupported
	storage.TriggersNotSupported
	storage.WritesNotSupported

	cfg    StoreConfig
	logger *slog.Logger
	path   string

	mu sync.Mutex // serializes swaps and writes
	// life guards closed and checking (never held while waiting for mu by
	// a check: Close must not wait for one).
	life     sync.Mutex
	closed   bool
	checking bool
	file     atomic.Pointer[cacheFile]
	gens     atomic.Uint64 // the last generation given to a file
	docs     *docCache

	state   atomic.Pointer[authz.TenancyState]
	changed atomic.Pointer[chan struct{}] // closed when the revision advances
	epoch   atomic.Pointer[string]
	txnIDs  atomic.Uint64

	observer atomic.Pointer[func(storage.Path)] // see ObserveReads
}

// cacheFile is the open cache file and its generation: a number that no
// other file opened by this Store had, so that what was read from one file
// is never taken for what another holds, even at the same revision.
type cacheFile struct {
	db      *bolt.DB
	gen     uint64
	corrupt atomic.Bool   // set when a read or check found damage
	damaged chan struct{} // closed when corrupt is set
}

func (s *Store) newFile(db *bolt.DB) *cacheFile {
	return &cacheFile{db: db, gen: s.gens.Add(1), damaged: make(chan struct{})}
}

var (
	_ storage.Store           = (*Store)(nil)
	_ authz.Tenancy           = (*Store)(nil)
	_ authz.DependencyTracker = (*Store)(nil)
)

// OpenStore opens (or creates) the cache in cfg.Dir. A damaged or foreign
// file is set aside and replaced by an empty one; the store is then not
// Present until a snapshot arrives.
func OpenStore(cfg StoreConfig, logger *slog.Logger) (*Store, error) {
	if cfg.MaxReadEntries == 0 {
		cfg.MaxReadEntries = 200000
	}
	if cfg.CacheEntries == 0 {
		cfg.CacheEntries = 50000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &Store{cfg: cfg, logger: logger, path: filepath.Join(cfg.Dir, CacheFile), docs: newDocCache(cfg.CacheEntries)}
	ch := make(chan struct{})
	s.changed.Store(&ch)
	empty := ""
	s.epoch.Store(&empty)
	db, err := s.openFile(s.path)
	if errors.Is(err, bolterrors.ErrTimeout) {
		// another process holds the file: not damage, never set it aside
		return nil, fmt.Errorf("tenancy cache %s is in use by another process: %w", s.path, ErrInUse)
	}
	if err != nil {
		logger.Warn("tenancy cache unusable; setting it aside and waiting for a snapshot", "path", s.path, "err", err)
		if err := s.setAside(s.path); err != nil {
			return nil, err
		}
		if db, err = s.openFile(s.path); err != nil {
			return nil, err
		}
	}
	s.file.Store(s.newFile(db))
	s.loadState(db)
	return s, nil
}

// db returns the open cache file.
func (s *Store) db() *bolt.DB { return s.file.Load().db }

// openFile opens a cache file and checks its size against its meta pages
// (before bbolt maps it) and its schema; an empty file is initialized.
func (s *Store) openFile(path string) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true)) // a fault in the mapped file panics, recovered below
	defer func() {
		if r := recover(); r != nil { // bbolt panics on some damaged files
			if db != nil {
				_ = db.Close()
			}
			db, err = nil, fmt.Errorf("open %q: damaged file: %v", path, r)
		}
	}()
	if err := checkFileSize(path); err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	// The freelist is synced (the default): with NoFreelistSync, opening a
	// file walks every page to rebuild it, which makes start-up time and
	// resident memory grow with the data.
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if !tenancy.Initialized(tx) {
			return tenancy.Init(tx)
		}
		if v := tenancy.Schema(tx); v != tenancy.SchemaVersion {
			return fmt.Errorf("cache schema %q, want %q", v, tenancy.SchemaVersion)
		}
		return tenancy.Check(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	return db, nil
}

// setAside renames a damaged file out of the way, keeping it for analysis.
func (s *Store) setAside(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	dst := fmt.Sprintf("%s.corrupt-%d", path, s.cfg.Now().UnixNano())
	if err := os.Rename(path, dst); err != nil {
		return fmt.Errorf("set aside damaged cache %q: %w", path, err)
	}
	s.logger.Warn("damaged tenancy cache set aside", "path", dst)
	return nil
}

// loadState reads revision, epoch and sync time from the file.
func (s *Store) loadState(db *bolt.DB) {
	st := authz.TenancyState{}
	epoch := ""
	_ = db.View(func(tx *bolt.Tx) error {
		st.Revision = tenancy.Revision(tx)
		epoch = tenancy.Epoch(tx)
		st.SyncedAt = tenancy.SyncedAt(tx)
		return nil
	})
	st.Present = epoch != ""
	s.epoch.Store(&epoch)
	s.publish(st)
}

// publish installs a new state and wakes revision waiters when it advanced.
// Data known to be damaged is never present.
func (s *Store) publish(st authz.TenancyState) {
	if s.Corrupt() {
		st.Present = false
		if st.LastError == "" {
			st.LastError = errDamagedState
		}
	}
	prev := s.state.Swap(&st)
	if prev == nil || st.Revision != prev.Revision || st.Present != prev.Present {
		ch := make(chan struct{})
		old := s.changed.Swap(&ch)
		close(*old)
	}
}

// Changed implements authz.Tenancy: the channel is closed when the
// revision or the presence of the data changes.
func (s *Store) Changed() <-chan struct{} { return *s.changed.Load() }

// State implements authz.Tenancy.
func (s *Store) State() authz.TenancyState { return *s.state.Load() }

// Epoch returns the control endpoint history the cache belongs to, "" before
// the first snapshot.
func (s *Store) Epoch() string { return *s.epoch.Load() }

// WaitRevision implements authz.Tenancy.
func (s *Store) WaitRevision(ctx context.Context, rev uint64) error {
	for {
		ch := *s.changed.Load()
		if st := s.State(); st.Present && st.Revision >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// markSynced records that the data was known current at t.
func (s *Store) markSynced(t time.Time, lastErr string) {
	st := s.State()
	st.SyncedAt = t
	st.LastError = lastErr
	s.state.Store(&st)
}

// setError records a sync error without changing the data.
func (s *Store) setError(msg string) {
	st := s.State()
	st.LastError = msg
	s.state.Store(&st)
}

// Close closes the cache file. During a CheckFile it returns at once: the
// check closes the file when it ends (a shutdown does not wait for it).
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.checking {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.file.Load(); f != nil {
		return f.db.Close()
	}
	return nil
}

// Corrupt reports whether damage was detected in the current file since it
// was opened.
func (s *Store) Corrupt() bool { return s.file.Load().corrupt.Load() }

// Damaged returns a channel closed once damage is detected in the current
// file (the syncer then stops following the feed and rebuilds).
func (s *Store) Damaged() <-chan struct{} { return s.file.Load().damaged }

// errDamagedState is the state's LastError while the data is damaged.
const errDamagedState = "tenancy cache damaged: not deciding from it until it is rebuilt from a snapshot"

// markCorrupt records damage in the current file: the data is no longer
// present (not ready, checks answer UNAVAILABLE) until a snapshot replaces
// the file, and the syncer is told to rebuild it.
// Damage found in a file that was swapped out meanwhile is only logged.
func (s *Store) markCorrupt(f *cacheFile, cause any) {
	if !f.corrupt.CompareAndSwap(false, true) {
		return
	}
	s.logger.Error("tenancy cache damaged; not deciding from it until it is rebuilt", "path", s.path, "generation", f.gen, "err", fmt.Sprint(cause))
	close(f.damaged)
	if s.file.Load() == f {
		st := s.State()
		st.LastError = fmt.Sprintf("%s: %v", errDamagedState, cause)
		s.publish(st)
	}
}

// CheckFile runs bbolt's consistency check over the whole file, then
// verifies the checksum of every stored value (bbolt has none on data
// pages). It is slow on large files; the syncer runs it in the background
// after start. Damage found marks the store corrupt.
//
// bbolt's check reads the freelist that write transactions change, so it
// holds the writer lock: applying revisions waits until it is done, while
// reads (decisions) go on. It does not hold up Close: a Close during the
// check returns at once and the file is closed when the check ends. ctx
// ends the check between its phases (bbolt's own walk cannot be
// interrupted); a cancelled check returns ctx's error and marks nothing.
func (s *Store) CheckFile(ctx context.Context) error {
	s.life.Lock()
	if s.closed {
		s.life.Unlock()
		return ErrClosed
	}
	s.checking = true
	s.life.Unlock()
	defer s.checkEnded()
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.file.Load()
	err := f.db.View(func(tx *bolt.Tx) (err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("consistency check: %v", r)
			}
		}()
		// Drain the channel: bbolt's walk goes on until it closes it, and
		// must not outlive the transaction.
		for e := range tx.Check() {
			if err == nil {
				err = e
			}
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return tenancy.VerifyFile(tx)
	})
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		s.markCorrupt(f, err)
	}
	return err
}

// checkEnded ends a CheckFile, closing the file if Close came meanwhile.
func (s *Store) checkEnded() {
	s.life.Lock()
	defer s.life.Unlock()
	s.checking = false
	if s.closed {
		s.mu.Lock()
		defer s.mu.Unlock()
		_ = s.file.Load().db.Close()
	}
}

// FileSize returns the cache file's size in bytes (0 if unknown).
func (s *Store) FileSize() int64 {
	if fi, err := os.Stat(s.path); err == nil {
		return fi.Size()
	}
	return 0
}

// TrimResident drops the cache file's mapped pages from the process's
// resident set. bbolt reads through a memory map, so every page a lookup or
// the consistency check touches would otherwise stay counted in the
// sidecar's RSS, growing with the data; trimmed pages stay in the page
// cache and come back on the next read without I/O. It holds a read
// transaction, so the map cannot be replaced meanwhile.
func (s *Store) TrimResident() error {
	db := s.db()
	return db.View(func(tx *bolt.Tx) error {
		return dropPages(db.Info().Data, tx.Size())
	})
}

// --- storage.Store ---

type txn struct {
	id   uint64
	tx   *bolt.Tx
	rev  uint64
	s    *Store
	file *cacheFile     // the file tx reads
	r    tenancy.Reader // every read of the transaction: storage reads and built-ins
	rec  *recording     // non-nil while an evaluation's reads are recorded
	obs  func(storage.Path)
}

// KeyedRead implements tenancy.Recorder: the transaction's reader reports
// its keyed reads to the recording and the read observer, if any.
func (t *txn) KeyedRead(doc int, key []byte, st tenancy.Stamp) {
	if t.rec != nil {
		t.rec.KeyedRead(doc, key, st)
	}
	if t.obs != nil {
		t.obs(append(append(storage.Path{authz.TenancyRoot}, tenancy.Docs[doc].Path...), tenancy.KeyParts(key)...))
	}
}

// ObserveReads calls fn (nil: nobody) with the path of every keyed read of
// data.tenancy made in transactions opened from now on, by the storage
// adapter and by the built-ins alike (e.g. to explain a decision).
func (s *Store) ObserveReads(fn func(storage.Path)) {
	if fn == nil {
		s.observer.Store(nil)
		return
	}
	s.observer.Store(&fn)
}

// recording lists the keyed reads of an evaluation. It receives them from
// the transaction's tenancy.Reader, whoever reads: the storage adapter or a
// built-in function.
type recording struct {
	deps      []dependency
	untracked bool // a scan was made: only valid at the same revision
}

// dependency is one keyed read: the document (index into tenancy.Docs), its
// key, and the stamp of what was read (zero: absent).
type dependency struct {
	doc int
	key string
	st  tenancy.Stamp
}

// KeyedRead implements tenancy.Recorder.
func (r *recording) KeyedRead(doc int, key []byte, st tenancy.Stamp) {
	r.deps = append(r.deps, dependency{doc: doc, key: string(key), st: st})
}

// recorded is what Recorded returns: the reads and the file they were made on.
type recorded struct {
	gen  uint64
	deps []dependency
}

var _ authz.DependencySizer = recorded{}

// Bytes implements authz.DependencySizer: what the reads hold, for the
// decision cache's byte budget.
func (r recorded) Bytes() int {
	n := 48 + 40*cap(r.deps) // the slice is sized ahead (Record)
	for _, d := range r.deps {
		n += len(d.key)
	}
	return n
}

func (t *txn) ID() uint64 { return t.id }

// NewTransaction opens a read transaction on the current file.
func (s *Store) NewTransaction(_ context.Context, params ...storage.TransactionParams) (storage.Transaction, error) {
	for _, p := range params {
		if p.Write {
			return nil, &storage.Error{Code: storage.InvalidTransactionErr, Message: "the tenancy cache is written by the syncer only"}
		}
	}
	for range 3 {
		f := s.file.Load()
		tx, err := f.db.Begin(false)
		if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
			continue // swapped for a new snapshot meanwhile
		}
		if err != nil {
			return nil, &storage.Error{Code: storage.InternalErr, Message: "tenancy cache: " + err.Error()}
		}
		t := &txn{id: s.txnIDs.Add(1), tx: tx, rev: tenancy.Revision(tx), s: s, file: f}
		t.r.Reset(tx, nil)
		if obs := s.observer.Load(); obs != nil {
			t.obs = *obs
			t.r.SetRecorder(t)
		}
		return t, nil
	}
	return nil, &storage.Error{Code: storage.InternalErr, Message: "tenancy cache: file swapped repeatedly"}
}

// TxnRevision implements authz.Tenancy.
func (s *Store) TxnRevision(t storage.Transaction) uint64 {
	if t, ok := t.(*txn); ok {
		return t.rev
	}
	return 0
}

// TxnGeneration implements authz.Generations: the generation of the file a
// transaction reads, which changes whenever a new file is swapped in (a
// snapshot, at any revision).
func (s *Store) TxnGeneration(t storage.Transaction) uint64 {
	if t, ok := t.(*txn); ok {
		return t.file.gen
	}
	return 0
}

// Abort ends a read transaction.
func (s *Store) Abort(_ context.Context, t storage.Transaction) {
	if t, ok := t.(*txn); ok && t.tx != nil {
		_ = t.tx.Rollback()
	}
}

// Commit is not supported: the store is read-only to OPA.
func (s *Store) Commit(context.Context, storage.Transaction) error {
	return &storage.Error{Code: storage.InvalidTransactionErr, Message: "the tenancy cache is read-only"}
}

// Truncate is not supported.
func (s *Store) Truncate(context.Context, storage.Transaction, storage.TransactionParams, storage.Iterator) error {
	return &storage.Error{Code: storage.InvalidTransactionErr, Message: "the tenancy cache is read-only"}
}

// Read serves data.tenancy: path[0] is "tenancy".
func (s *Store) Read(_ context.Context, t storage.Transaction, path storage.Path) (v any, err error) {
	tt, ok := t.(*txn)
	if !ok {
		return nil, &storage.Error{Code: storage.InvalidTransactionErr, Message: "unknown transaction"}
	}
	if len(path) == 0 || path[0] != authz.TenancyRoot {
		return nil, notFound(path)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true)) // a fault in the mapped file panics, recovered below
	defer func() {
		if r := recover(); r != nil { // bbolt panics on damaged pages
			s.markCorrupt(tt.file, fmt.Sprintf("reading %s: %v", path, r))
			v, err = nil, &storage.Error{Code: storage.InternalErr, Message: fmt.Sprintf("tenancy cache damaged: %v", r)}
		}
	}()
	r := reader{s: s, t: tt, budget: s.cfg.MaxReadEntries}
	val, err := r.read(path[1:])
	if errors.Is(err, tenancy.ErrDamaged) {
		s.markCorrupt(tt.file, err)
		return nil, &storage.Error{Code: storage.InternalErr, Message: "tenancy cache damaged: " + err.Error()}
	}
	if err != nil {
		return nil, err
	}
	if val == nil {
		return nil, notFound(path)
	}
	return val, nil
}

func notFound(path storage.Path) *storage.Error {
	return &storage.Error{Code: storage.NotFoundErr, Message: path.String() + ": document does not exist"}
}

// reader resolves one Read inside a transaction: it maps a path below
// data.tenancy onto tenancy.Docs and builds the document's value from what
// the transaction's tenancy.Reader finds.
type reader struct {
	s      *Store
	t      *txn
	budget int
}

// scanned marks the evaluation as depending on more than keyed reads.
func (r *reader) scanned() {
	if r.t.rec != nil {
		r.t.rec.untracked = true
	}
}

func (r *reader) spend(n int) error {
	r.budget -= n
	if r.budget < 0 {
		return &storage.Error{Code: storage.InternalErr, Message: fmt.Sprintf("tenancy read touches more than %d entries: use keyed lookups (data.tenancy.<collection>[id], data.tenancy.index.*)", r.s.cfg.MaxReadEntries)}
	}
	return nil
}

// read returns the value at rest (below data.tenancy), nil when absent.
func (r *reader) read(rest []string) (ast.Value, error) {
	for _, p := range rest {
		if !tenancy.ValidKeyPart(p) {
			return nil, nil // never part of a key: no composite-key confusion
		}
	}
	if len(rest) == 0 {
		r.scanned()
		obj := ast.NewObject()
		for _, c := range tenancy.Collections {
			v, err := r.read([]string{c})
			if err != nil {
				return nil, err
			}
			obj.Insert(ast.StringTerm(c), ast.NewTerm(v))
		}
		idx, err := r.read([]string{"index"})
		if err != nil {
			return nil, err
		}
		obj.Insert(ast.StringTerm("index"), ast.NewTerm(idx))
		return obj, nil
	}
	if len(rest) == 1 && rest[0] == "index" {
		r.scanned()
		obj := ast.NewObject()
		for i, d := range tenancy.Docs {
			if len(d.Path) == 2 && d.Path[0] == "index" {
				v, err := r.doc(i, nil)
				if err != nil {
					return nil, err
				}
				obj.Insert(ast.StringTerm(d.Path[1]), ast.NewTerm(v))
			}
		}
		return obj, nil
	}
	for i, d := range tenancy.Docs {
		if len(rest) >= len(d.Path) && equalPrefix(rest, d.Path) {
			return r.doc(i, rest[len(d.Path):])
		}
	}
	return nil, nil
}

func equalPrefix(a, p []string) bool {
	for i := range p {
		if a[i] != p[i] {
			return false
		}
	}
	return true
}

// doc reads keys (possibly fewer or more than the depth) of tenancy.Docs[i].
func (r *reader) doc(i int, keys []string) (ast.Value, error) {
	d := tenancy.Docs[i]
	if len(keys) < d.Depth {
		r.scanned()
		return r.subtree(i, keys)
	}
	leafKeys, below := keys[:d.Depth], keys[d.Depth:]
	var leaf ast.Value
	var err error
	if d.IDSet {
		r.scanned()
		leaf, err = r.idSet(i, leafKeys)
	} else {
		leaf, err = r.leaf(i, leafKeys)
	}
	if err != nil || leaf == nil {
		return nil, err
	}
	return navigate(leaf, below), nil
}

// leaf decodes the JSON document at a full key of tenancy.Docs[i]. The
// read is recorded (by the transaction's tenancy.Reader).
func (r *reader) leaf(i int, keys []string) (ast.Value, error) {
	doc, st, err := r.t.r.Get(i, keys...)
	if err != nil || doc == nil {
		return nil, err
	}
	if err := r.spend(1); err != nil {
		return nil, err
	}
	return r.s.docs.decode(r.t.file.gen, i, keys, doc, st)
}

// Record implements authz.DependencyTracker.
func (s *Store) Record(t storage.Transaction) {
	if t, ok := t.(*txn); ok {
		t.rec = &recording{deps: make([]dependency, 0, 16)} // a decision of the shipped policy reads about 8 keys
		t.r.SetRecorder(t)
	}
}

// Recorded implements authz.DependencyTracker.
func (s *Store) Recorded(t storage.Transaction) (authz.Dependencies, bool) {
	tt, ok := t.(*txn)
	if !ok || tt.rec == nil || tt.rec.untracked {
		return nil, false
	}
	return recorded{gen: tt.file.gen, deps: tt.rec.deps}, true
}

// Unchanged implements authz.DependencyTracker: in the same file, every
// recorded read finds a value with the same stamp (revision and checksum),
// or still nothing. A read recorded on another file never holds.
func (s *Store) Unchanged(t storage.Transaction, deps authz.Dependencies) (ok bool) {
	tt, isTxn := t.(*txn)
	rd, isRec := deps.(recorded)
	if !isTxn || !isRec || rd.gen != tt.file.gen {
		return false
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			s.markCorrupt(tt.file, fmt.Sprintf("revalidating a cached decision: %v", r))
			ok = false
		}
	}()
	for _, d := range rd.deps {
		st, err := tt.r.StampAt(d.doc, d.key)
		if err != nil || st != d.st {
			return false
		}
	}
	return true
}

// idSet lists the ids stored after the key parts (sorted), nil when none.
func (r *reader) idSet(i int, keys []string) (ast.Value, error) {
	var terms []*ast.Term
	var spent error
	err := r.t.r.IDs(i, keys, func(id []byte) bool {
		if spent = r.spend(1); spent != nil {
			return false
		}
		terms = append(terms, ast.StringTerm(string(id)))
		return true
	})
	if err == nil {
		err = spent
	}
	if err != nil || terms == nil {
		return nil, err
	}
	return ast.NewArray(terms...), nil
}

// subtree builds the nested object below a partial key (fewer parts than
// the doc's depth) by scanning its prefix.
func (r *reader) subtree(i int, keys []string) (ast.Value, error) {
	d := tenancy.Docs[i]
	root := ast.NewObject()
	levels := d.Depth - len(keys) // key parts below the prefix that address a leaf
	err := r.t.r.Scan(i, keys, func(e tenancy.Entry) (bool, error) {
		if err := r.spend(1); err != nil {
			return false, err
		}
		obj := root
		for _, p := range e.Parts[:levels-1] {
			t := obj.Get(ast.StringTerm(p))
			if t == nil {
				t = ast.NewTerm(ast.NewObject())
				obj.Insert(ast.StringTerm(p), t)
			}
			obj = t.Value.(ast.Object)
		}
		last := ast.StringTerm(e.Parts[levels-1])
		if d.IDSet {
			t := obj.Get(last)
			if t == nil {
				t = ast.NewTerm(ast.NewArray())
				obj.Insert(last, t)
			}
			t.Value = t.Value.(*ast.Array).Append(ast.StringTerm(e.Parts[levels]))
			return true, nil
		}
		full := append(append(make([]string, 0, d.Depth), keys...), e.Parts[:levels]...)
		val, err := r.s.docs.decode(r.t.file.gen, i, full, e.Doc, e.Stamp)
		if err != nil {
			return false, err
		}
		obj.Insert(last, ast.NewTerm(val))
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	if root.Len() == 0 && len(keys) > 0 {
		return nil, nil
	}
	return root, nil
}

// navigate walks the remaining path inside a document.
func navigate(v ast.Value, path []string) ast.Value {
	for _, p := range path {
		switch x := v.(type) {
		case ast.Object:
			t := x.Get(ast.StringTerm(p))
			if t == nil {
				return nil
			}
			v = t.Value
		case *ast.Array:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= x.Len() {
				return nil
			}
			v = x.Elem(i).Value
		default:
			return nil
		}
	}
	return v
}

// head returns the revision, history epoch and history hash the cache file
// records.
func (s *Store) head() (rev uint64, epoch, hash string, err error) {
	err = s.db().View(func(tx *bolt.Tx) error {
		rev, epoch, hash = tenancy.Revision(tx), tenancy.Epoch(tx), tenancy.HeadHash(tx)
		return nil
	})
	return rev, epoch, hash, err
}
