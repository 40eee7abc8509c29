package tenancy

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Stored values. bbolt checksums its meta pages only: a flipped byte in a
// data page goes unnoticed by bbolt, and its consistency check looks at the
// page structure, not at what the values say. Since schema 2 every value
// carries a CRC-32C, verified on every read:
//
//	entity and policy index buckets (e/*, i/*):
//	    revision (8 bytes, big endian) | 0x01 | CRC-32C (4 bytes, big endian) | JSON document
//	secondary index buckets (x/*): the CRC-32C of the key (4 bytes)
//
// The checksum covers the key, the revision and the document, so a damaged
// value, or a value found under another key, fails verification. Schema 1
// values were the revision followed by the document, and x/* values were
// empty: a control endpoint's older file may still hold some (they gain a
// checksum when rewritten); a sidecar's cache of schema 1 is rebuilt.
const (
	valueTag    = 0x01
	valueHeader = 8 + 1 + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// valueSum is the checksum of a stored value.
func valueSum(key []byte, rev uint64, doc []byte) uint32 {
	var r [8]byte
	return valueSumBuf(key, rev, doc, &r)
}

// valueSumBuf is valueSum with the caller's scratch for the revision (a
// local one escapes to the heap through crc32).
func valueSumBuf(key []byte, rev uint64, doc []byte, buf *[8]byte) uint32 {
	binary.BigEndian.PutUint64(buf[:], rev)
	s := crc32.Update(0, castagnoli, key)
	s = crc32.Update(s, castagnoli, buf[:])
	return crc32.Update(s, castagnoli, doc)
}

// encodeValue builds the stored value of a JSON document written by rev
// under key.
func encodeValue(key []byte, rev uint64, doc []byte) []byte {
	b := make([]byte, valueHeader, valueHeader+len(doc))
	binary.BigEndian.PutUint64(b, rev)
	b[8] = valueTag
	binary.BigEndian.PutUint32(b[9:], valueSum(key, rev, doc))
	return append(b, doc...)
}

// indexValue is the stored value of a secondary index key.
func indexValue(key []byte) []byte {
	return binary.BigEndian.AppendUint32(nil, crc32.Checksum(key, castagnoli))
}

// ModRevision splits a stored value into the revision that wrote it and the
// JSON document, without verifying it (either schema).
func ModRevision(v []byte) (uint64, []byte) {
	if len(v) < 8 {
		return 0, nil
	}
	if len(v) >= valueHeader && v[8] == valueTag {
		return binary.BigEndian.Uint64(v), v[valueHeader:]
	}
	return binary.BigEndian.Uint64(v), v[8:]
}

// ValueStamp returns the revision and checksum a stored value records,
// without verifying it: the zero Stamp for no value (nil). Two values with
// the same stamp under one key hold the same document (up to a checksum
// collision between two documents written by the same revision, which a
// revision never does). A schema 1 value has a revision and no checksum.
func ValueStamp(v []byte) Stamp {
	if len(v) < valueHeader || v[8] != valueTag {
		if len(v) >= 8 {
			return Stamp{Rev: binary.BigEndian.Uint64(v)}
		}
		return Stamp{}
	}
	return Stamp{Rev: binary.BigEndian.Uint64(v), Sum: binary.BigEndian.Uint32(v[9:])}
}

// OpenValue verifies a stored value of a schema 2 file (e/* or i/*) and
// returns its revision, checksum and document. A value that is not in the
// schema 2 encoding or whose checksum does not match returns an error
// wrapping ErrDamaged. The document aliases v.
func OpenValue(key, v []byte) (rev uint64, sum uint32, doc []byte, err error) {
	var buf [8]byte
	return openValue(key, v, &buf)
}

// openValue is OpenValue with the caller's scratch (see valueSumBuf).
func openValue(key, v []byte, buf *[8]byte) (rev uint64, sum uint32, doc []byte, err error) {
	if len(v) < valueHeader || v[8] != valueTag {
		return 0, 0, nil, fmt.Errorf("%w: value of %q: %d bytes, not a checksummed value", ErrDamaged, printable(key), len(v))
	}
	rev, sum, doc = binary.BigEndian.Uint64(v), binary.BigEndian.Uint32(v[9:]), v[valueHeader:]
	if got := valueSumBuf(key, rev, doc, buf); got != sum {
		return 0, 0, nil, fmt.Errorf("%w: value of %q: checksum %08x, recorded %08x", ErrDamaged, printable(key), got, sum)
	}
	return rev, sum, doc, nil
}

// CheckIndexKey verifies the value stored under a secondary index key of a
// schema 2 file.
func CheckIndexKey(key, v []byte) error {
	if len(v) != 4 || binary.BigEndian.Uint32(v) != crc32.Checksum(key, castagnoli) {
		return fmt.Errorf("%w: index key %q: bad checksum", ErrDamaged, printable(key))
	}
	return nil
}

// decodeValue returns the document of a stored value: verified when it
// carries a checksum; a value without one is accepted only when strict is
// false (a schema 1 file).
func decodeValue(key, v []byte, strict bool) ([]byte, error) {
	if !strict && len(v) >= 8 && (len(v) < valueHeader || v[8] != valueTag) {
		return v[8:], nil
	}
	_, _, doc, err := OpenValue(key, v)
	return doc, err
}

func printable(key []byte) string { return strings.ReplaceAll(string(key), "\x00", "/") }

// VerifyFile verifies every value of every tenancy bucket of a schema 2
// file: the part of a consistency check bbolt cannot do. It returns the
// first damage found (wrapping ErrDamaged).
func VerifyFile(tx *bolt.Tx) error {
	if s := Schema(tx); s != SchemaVersion {
		return fmt.Errorf("%w: schema %q, want %q", ErrDamaged, s, SchemaVersion)
	}
	valueBuckets := make([]string, 0, len(Collections)+len(policyBuckets))
	for _, c := range Collections {
		valueBuckets = append(valueBuckets, string(entityBucket(c)))
	}
	valueBuckets = append(valueBuckets, policyBuckets...)
	for _, name := range valueBuckets {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("%w: bucket %s missing", ErrDamaged, name)
		}
		err := b.ForEach(func(k, v []byte) error {
			_, _, _, err := OpenValue(k, v)
			return err
		})
		if err != nil {
			return fmt.Errorf("bucket %s: %w", name, err)
		}
	}
	for _, name := range secondaryBuckets {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("%w: bucket %s missing", ErrDamaged, name)
		}
		err := b.ForEach(func(k, v []byte) error { return CheckIndexKey(k, v) })
		if err != nil {
			return fmt.Errorf("bucket %s: %w", name, err)
		}
	}
	if v := tx.Bucket([]byte(bucketMeta)).Get(metaRevision); v != nil && len(v) != 8 {
		return fmt.Errorf("%w: meta revision of %d bytes", ErrDamaged, len(v))
	}
	return nil
}

// Document returns the JSON document of a stored value of either schema,
// verifying its checksum when it carries one (a control endpoint's file may
// hold values of both).
func Document(key, v []byte) ([]byte, error) { return decodeValue(key, v, false) }
