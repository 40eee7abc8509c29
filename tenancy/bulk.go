package tenancy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"

	bolt "go.etcd.io/bbolt"
)

// The bulk snapshot: a consistent copy of a tenancy file's data buckets,
// each in key order, that a sidecar loads into a new file at disk speed
// (sequential inserts into full pages) instead of re-inserting every
// entity and recomputing its indexes. The layout is shared by the control
// endpoint's file and the sidecar's cache, so the copy is the buckets
// themselves. Media type BulkMediaType; the control endpoint sends it from
// GET /v1/sync/snapshot to a client whose Accept header names it, the
// NDJSON snapshot otherwise.
//
//	stream  = magic frame*
//	magic   = "GHBULK1\n"
//	frame   = kind (1 byte) | length (uvarint) | payload
//	'h' header  JSON BulkHeader: the revision, epoch and history hash of the copy, its schema
//	'b' bucket  the bucket's name: every bucket of DataBuckets, in that order, once
//	'k' pair    key length (uvarint) | key | value: the bucket's pairs in strictly increasing key order
//	'e' end     JSON BulkEnd: pairs and entities sent, and the SHA-256 of every byte before this frame
//
// A sidecar verifies every value (the checksums of schema 2), the order of
// the keys and buckets, the counts and the digest before it uses the file:
// a stream cut or damaged anywhere is discarded whole.
const BulkMediaType = "application/vnd.gatehouse.tenancy-bulk.v1"

const bulkMagic = "GHBULK1\n"

// Bulk frame kinds.
const (
	bulkHeader = 'h'
	bulkBucket = 'b'
	bulkPair   = 'k'
	bulkEnd    = 'e'
)

// BulkHeader opens a bulk snapshot.
type BulkHeader struct {
	Revision uint64 `json:"revision"`
	Epoch    string `json:"epoch"`
	Hash     string `json:"hash"`
	Schema   string `json:"schema"`
}

// BulkEnd closes a bulk snapshot.
type BulkEnd struct {
	Pairs    uint64 `json:"pairs"`
	Entities uint64 `json:"entities"`
	Digest   string `json:"digest"`
}

// DataBuckets lists the buckets a bulk snapshot carries, in order: the
// entities, the secondary indexes, the policy indexes (not meta: the
// header carries what a cache records there).
func DataBuckets() []string {
	out := make([]string, 0, len(Collections)+len(secondaryBuckets)+len(policyBuckets))
	for _, c := range Collections {
		out = append(out, string(entityBucket(c)))
	}
	out = append(out, secondaryBuckets...)
	return append(out, policyBuckets...)
}

// VerifyPair checks a pair of a data bucket of a schema 2 file: a value's
// checksum (e/*, i/*) or an index key's (x/*). It returns an error
// wrapping ErrDamaged.
func VerifyPair(bucket string, k, v []byte) error {
	if len(bucket) > 2 && bucket[:2] == "x/" {
		return CheckIndexKey(k, v)
	}
	_, _, _, err := OpenValue(k, v)
	return err
}

// BulkWriter encodes a bulk snapshot.
type BulkWriter struct {
	w        io.Writer
	h        hash.Hash
	buf      []byte
	pairs    uint64
	entities uint64
	entity   bool // the current bucket holds entities
	err      error
}

// NewBulkWriter starts a bulk snapshot on w (buffer it: every frame is a
// write).
func NewBulkWriter(w io.Writer) *BulkWriter {
	h := sha256.New()
	b := &BulkWriter{w: io.MultiWriter(w, h), h: h}
	b.write([]byte(bulkMagic))
	return b
}

func (b *BulkWriter) write(p []byte) {
	if b.err == nil {
		_, b.err = b.w.Write(p)
	}
}

func (b *BulkWriter) frame(kind byte, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b.buf = append(b.buf[:0], kind)
	b.buf = binary.AppendUvarint(b.buf, uint64(n))
	for _, p := range parts {
		b.buf = append(b.buf, p...)
	}
	b.write(b.buf)
	return b.err
}

// Header writes the header frame.
func (b *BulkWriter) Header(h BulkHeader) error {
	doc, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return b.frame(bulkHeader, doc)
}

// Bucket starts the pairs of a bucket.
func (b *BulkWriter) Bucket(name string) error {
	b.entity = len(name) > 2 && name[:2] == "e/"
	return b.frame(bulkBucket, []byte(name))
}

// Pair writes a pair of the current bucket.
func (b *BulkWriter) Pair(k, v []byte) error {
	var kl [binary.MaxVarintLen64]byte
	b.pairs++
	if b.entity {
		b.entities++
	}
	return b.frame(bulkPair, kl[:binary.PutUvarint(kl[:], uint64(len(k)))], k, v)
}

// End writes the end frame.
func (b *BulkWriter) End() error {
	if b.err != nil {
		return b.err
	}
	doc, err := json.Marshal(BulkEnd{Pairs: b.pairs, Entities: b.entities, Digest: hex.EncodeToString(b.h.Sum(nil))})
	if err != nil {
		return err
	}
	return b.frame(bulkEnd, doc)
}

// Entities is the number of entity pairs written so far.
func (b *BulkWriter) Entities() uint64 { return b.entities }

// WriteBulk writes a bulk snapshot of the file tx reads, at its revision,
// under the history epoch. The file must be of schema 2 (a file of the
// legacy schema holds values without checksums: serve it as NDJSON).
func WriteBulk(tx *bolt.Tx, epoch string, bw *BulkWriter) error {
	if s := Schema(tx); s != SchemaVersion {
		return fmt.Errorf("bulk snapshot of a file of schema %q, want %q", s, SchemaVersion)
	}
	if err := bw.Header(BulkHeader{Revision: Revision(tx), Epoch: epoch, Hash: HeadHash(tx), Schema: SchemaVersion}); err != nil {
		return err
	}
	for _, name := range DataBuckets() {
		bk := tx.Bucket([]byte(name))
		if bk == nil {
			return fmt.Errorf("%w: bucket %s missing", ErrNotInitialized, name)
		}
		if err := bw.Bucket(name); err != nil {
			return err
		}
		c := bk.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				return fmt.Errorf("%w: bucket %s holds a nested bucket %q", ErrDamaged, name, printable(k))
			}
			if err := bw.Pair(k, v); err != nil {
				return err
			}
		}
	}
	return bw.End()
}

// ErrBulk wraps every error of a bulk snapshot that does not verify: cut,
// out of order, damaged, or not what its end frame declares.
var ErrBulk = errors.New("bulk snapshot refused")

// BulkReader decodes a bulk snapshot, verifying its framing and digest.
type BulkReader struct {
	r   *bufio.Reader
	h   hash.Hash
	max int
	buf []byte
}

// NewBulkReader reads a bulk snapshot from r; a frame larger than
// maxFrame is refused.
func NewBulkReader(r io.Reader, maxFrame int) *BulkReader {
	return &BulkReader{r: bufio.NewReaderSize(r, 1<<20), h: sha256.New(), max: maxFrame}
}

// next reads a frame: its kind and payload (valid until the next call).
// The digest covers every frame but the end frame.
func (br *BulkReader) next() (byte, []byte, error) {
	kind, err := br.r.ReadByte()
	if err != nil {
		return 0, nil, fmt.Errorf("%w: cut before a frame: %w", ErrBulk, noEOF(err))
	}
	n, err := binary.ReadUvarint(br.r)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: cut inside a frame: %w", ErrBulk, noEOF(err))
	}
	if n > uint64(br.max) {
		return 0, nil, fmt.Errorf("%w: a frame of %d bytes exceeds %d", ErrBulk, n, br.max)
	}
	if cap(br.buf) < int(n) {
		br.buf = make([]byte, n)
	}
	p := br.buf[:n]
	if _, err := io.ReadFull(br.r, p); err != nil {
		return 0, nil, fmt.Errorf("%w: cut inside a frame: %w", ErrBulk, noEOF(err))
	}
	if kind != bulkEnd {
		var hdr [1 + binary.MaxVarintLen64]byte
		hdr[0] = kind
		br.h.Write(hdr[:1+binary.PutUvarint(hdr[1:], n)])
		br.h.Write(p)
	}
	return kind, p, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ReadHeader reads the magic and the header frame.
func (br *BulkReader) ReadHeader() (BulkHeader, error) {
	var h BulkHeader
	magic := make([]byte, len(bulkMagic))
	if _, err := io.ReadFull(br.r, magic); err != nil || string(magic) != bulkMagic {
		return h, fmt.Errorf("%w: not a bulk snapshot (magic %q)", ErrBulk, magic)
	}
	br.h.Write(magic)
	kind, p, err := br.next()
	if err != nil {
		return h, err
	}
	if kind != bulkHeader {
		return h, fmt.Errorf("%w: first frame %q, want a header", ErrBulk, kind)
	}
	if err := json.Unmarshal(p, &h); err != nil {
		return h, fmt.Errorf("%w: header: %w", ErrBulk, err)
	}
	if h.Schema != SchemaVersion || h.Epoch == "" || h.Hash == "" {
		return h, fmt.Errorf("%w: header of schema %q, epoch %q, hash %q: want schema %q with an epoch and a history hash", ErrBulk, h.Schema, h.Epoch, h.Hash, SchemaVersion)
	}
	return h, nil
}

// bulkChunkBytes is how much a load writes per transaction: bounded memory
// (a transaction holds its dirty pages, and the values it was given).
const bulkChunkBytes = 1 << 20

// LoadBulk reads the buckets and end of a bulk snapshot (after
// ReadHeader) into db, a file that Init made and that holds nothing else,
// verifying every pair, the key order, the counts and the digest. It
// commits in bounded transactions (afterCommit, when not nil, runs after
// each: e.g. to drop the file's pages from the resident set) and records
// the header's revision, epoch and history hash last: a file whose load
// did not complete holds no revision. The file is not synced. It returns
// the number of entities loaded.
func LoadBulk(db *bolt.DB, br *BulkReader, h BulkHeader, afterCommit func() error) (uint64, error) {
	l := &bulkLoad{db: db, names: DataBuckets(), after: afterCommit}
	defer l.rollback()
	for {
		kind, p, err := br.next()
		if err != nil {
			return 0, err
		}
		switch kind {
		case bulkBucket:
			if err := l.bucket(string(p)); err != nil {
				return 0, err
			}
		case bulkPair:
			if err := l.pair(p); err != nil {
				return 0, err
			}
		case bulkEnd:
			var end BulkEnd
			if err := json.Unmarshal(p, &end); err != nil {
				return 0, fmt.Errorf("%w: end: %w", ErrBulk, err)
			}
			digest := hex.EncodeToString(br.h.Sum(nil))
			switch {
			case l.next != len(l.names):
				return 0, fmt.Errorf("%w: ended after %d of %d buckets", ErrBulk, l.next, len(l.names))
			case end.Pairs != l.pairs || end.Entities != l.entities:
				return 0, fmt.Errorf("%w: the end declares %d pairs and %d entities, received %d and %d", ErrBulk, end.Pairs, end.Entities, l.pairs, l.entities)
			case end.Digest != digest:
				return 0, fmt.Errorf("%w: digest %.12s declared, %.12s received", ErrBulk, end.Digest, digest)
			}
			if err := l.begin(); err != nil {
				return 0, err
			}
			for _, set := range []error{SetRevision(l.tx, h.Revision), SetEpoch(l.tx, h.Epoch), SetChainHash(l.tx, h.Hash)} {
				if set != nil {
					return 0, set
				}
			}
			if err := l.commit(); err != nil {
				return 0, err
			}
			return l.entities, nil
		default:
			return 0, fmt.Errorf("%w: unexpected frame %q", ErrBulk, kind)
		}
	}
}

// bulkLoad is the state of LoadBulk.
type bulkLoad struct {
	db    *bolt.DB
	after func() error
	names []string
	next  int    // the index of the next bucket expected
	name  string // the current bucket
	tx    *bolt.Tx
	bk    *bolt.Bucket
	last  []byte // the last key put in the current bucket
	have  bool   // a key was put in the current bucket
	spent int    // bytes put in the open transaction
	arena []byte // values of the open transaction: bbolt keeps them until commit

	pairs, entities uint64
	entity          bool
}

func (l *bulkLoad) begin() error {
	if l.tx != nil {
		return nil
	}
	tx, err := l.db.Begin(true)
	if err != nil {
		return err
	}
	l.tx = tx
	if l.name != "" {
		l.open()
	}
	return nil
}

func (l *bulkLoad) open() {
	l.bk = l.tx.Bucket([]byte(l.name))
	l.bk.FillPercent = 1.0 // keys come in order: fill every page
}

func (l *bulkLoad) commit() error {
	if l.tx == nil {
		return nil
	}
	err := l.tx.Commit()
	l.tx, l.bk, l.spent, l.arena = nil, nil, 0, nil
	if err == nil && l.after != nil {
		err = l.after()
	}
	return err
}

func (l *bulkLoad) rollback() {
	if l.tx != nil {
		_ = l.tx.Rollback()
		l.tx = nil
	}
}

func (l *bulkLoad) bucket(name string) error {
	if l.next >= len(l.names) || name != l.names[l.next] {
		want := "none"
		if l.next < len(l.names) {
			want = l.names[l.next]
		}
		return fmt.Errorf("%w: bucket %q, want %s", ErrBulk, printable([]byte(name)), want)
	}
	l.next++
	l.name, l.have, l.last = name, false, l.last[:0]
	l.entity = len(name) > 2 && name[:2] == "e/"
	if err := l.begin(); err != nil {
		return err
	}
	l.open()
	if l.bk.Stats().KeyN != 0 {
		return fmt.Errorf("bulk load into bucket %s, which is not empty", name)
	}
	return nil
}

func (l *bulkLoad) pair(p []byte) error {
	if l.name == "" {
		return fmt.Errorf("%w: a pair before any bucket", ErrBulk)
	}
	kl, n := binary.Uvarint(p)
	if n <= 0 || kl > uint64(len(p)-n) || kl == 0 {
		return fmt.Errorf("%w: bad pair in bucket %s", ErrBulk, l.name)
	}
	k, v := p[n:n+int(kl)], p[n+int(kl):]
	if l.have && bytes.Compare(k, l.last) <= 0 {
		return fmt.Errorf("%w: bucket %s: key %q after %q (keys must increase)", ErrBulk, l.name, printable(k), printable(l.last))
	}
	if err := VerifyPair(l.name, k, v); err != nil {
		return fmt.Errorf("%w: bucket %s: %w", ErrBulk, l.name, err)
	}
	l.last, l.have = append(l.last[:0], k...), true
	if err := l.begin(); err != nil {
		return err
	}
	// bbolt copies the key, not the value: keep the values of the
	// transaction until it commits
	if len(l.arena)+len(v) > cap(l.arena) {
		l.arena = make([]byte, 0, max(1<<20, len(v)))
	}
	start := len(l.arena)
	l.arena = append(l.arena, v...)
	if err := l.bk.Put(k, l.arena[start:len(l.arena):len(l.arena)]); err != nil {
		return fmt.Errorf("bulk load %s/%s: %w", l.name, printable(k), err)
	}
	l.pairs++
	if l.entity {
		l.entities++
	}
	l.spent += len(k) + len(v)
	if l.spent >= bulkChunkBytes {
		return l.commit()
	}
	return nil
}
