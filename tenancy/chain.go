package tenancy

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
)

// History identity. A control endpoint's history is a chain: the hash of
// revision R is SHA-256 over the hash of revision R-1, R, and every change
// of R in order; the chain starts from GenesisHash(epoch, R0) at the
// revision R0 where hashing began (0 for a file created with hashing, the
// revision of an older file at its first write). Both sides compute it:
// the control endpoint records the hash of each revision in its history and
// of its current revision in the file, and a sidecar recomputes it over the
// changes it applies and checks it against the hash the feed carries. Two
// histories that diverged (a control endpoint restored from a backup, then
// written to) have different hashes from the first revision that differs,
// so a sidecar never applies a revision of one history on top of another.
//
// Hashes are lowercase hex strings.

// GenesisHash is the hash a chain starts from: the history epoch and the
// revision where hashing began.
func GenesisHash(epoch string, rev uint64) string {
	h := sha256.New()
	h.Write([]byte("gatehouse-history-1\x00"))
	h.Write([]byte(epoch))
	h.Write(binary.BigEndian.AppendUint64(nil, rev))
	return hex.EncodeToString(h.Sum(nil))
}

// RevisionHash computes the hash of one revision incrementally, change by
// change, so that a revision of any size is hashed in bounded memory.
type RevisionHash struct {
	h   hash.Hash
	buf []byte
}

// NewRevisionHash starts the hash of revision rev following prev.
func NewRevisionHash(prev string, rev uint64) *RevisionHash {
	r := &RevisionHash{h: sha256.New()}
	r.field([]byte(prev))
	r.h.Write(binary.BigEndian.AppendUint64(r.buf[:0], rev))
	return r
}

// field writes a length-prefixed field.
func (r *RevisionHash) field(b []byte) {
	r.buf = binary.BigEndian.AppendUint32(r.buf[:0], uint32(len(b)))
	r.h.Write(r.buf)
	r.h.Write(b)
}

// Add hashes the next change of the revision.
func (r *RevisionHash) Add(c Change) {
	r.field([]byte(c.Op))
	r.field([]byte(c.Collection))
	r.field([]byte(c.ID))
	r.field(c.Value)
}

// Sum returns the revision's hash.
func (r *RevisionHash) Sum() string { return hex.EncodeToString(r.h.Sum(nil)) }

// HashRevision returns the hash of revision rev made of changes, following
// prev.
func HashRevision(prev string, rev uint64, changes []Change) string {
	r := NewRevisionHash(prev, rev)
	for _, c := range changes {
		r.Add(c)
	}
	return r.Sum()
}
