package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt's meta page, as it lays it out (native byte order): a 16-byte page
// header, then magic, version, page size, flags (4 bytes each), the root
// bucket (root page id, sequence), the freelist page id, the high-water
// page id, the transaction id and an FNV-64a checksum of the fields before
// it (8 bytes each).
const (
	metaOffMagic    = 16
	metaOffVersion  = 20
	metaOffPageSize = 24
	metaOffRoot     = 32
	metaOffFreelist = 48
	metaOffPgid     = 56
	metaOffChecksum = 72
	metaLen         = 80

	boltMagic   = 0xED0CDAED
	boltVersion = 2
)

// errTruncated reports a cache file shorter than its meta pages say.
var errTruncated = errors.New("damaged file: shorter than its meta page says")

// boltMeta is what checkFileSize needs of a meta page.
type boltMeta struct {
	pageSize uint32
	pgid     uint64 // high-water mark: pages [0, pgid) exist
}

// parseMeta decodes and validates a meta page; ok is false when it is not
// a valid bbolt meta page.
func parseMeta(b []byte) (m boltMeta, ok bool) {
	if len(b) < metaLen {
		return m, false
	}
	ne := binary.NativeEndian
	if ne.Uint32(b[metaOffMagic:]) != boltMagic || ne.Uint32(b[metaOffVersion:]) != boltVersion {
		return m, false
	}
	h := fnv.New64a()
	h.Write(b[metaOffMagic:metaOffChecksum])
	if h.Sum64() != ne.Uint64(b[metaOffChecksum:]) {
		return m, false
	}
	m = boltMeta{pageSize: ne.Uint32(b[metaOffPageSize:]), pgid: ne.Uint64(b[metaOffPgid:])}
	if m.pageSize < 512 || m.pageSize > 1<<20 || m.pageSize&(m.pageSize-1) != 0 {
		return m, false
	}
	if ne.Uint64(b[metaOffRoot:]) >= m.pgid || (ne.Uint64(b[metaOffFreelist:]) >= m.pgid && ne.Uint64(b[metaOffFreelist:]) != ^uint64(0)) {
		return m, false
	}
	return m, true
}

// checkFileSize validates a cache file before bbolt maps it: bbolt reads
// pages through a memory map, and a page beyond the end of the file (a
// truncated file) is a fault that kills the process, not an error. The
// file must hold at least one valid meta page, and every page below the
// high-water mark of each valid meta page. A missing or empty file is fine
// (bbolt initializes it).
func checkFileSize(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if size == 0 {
		return nil
	}
	read := func(off int64) []byte {
		b := make([]byte, metaLen)
		if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return nil
		}
		return b
	}
	var metas []boltMeta
	m0, ok0 := parseMeta(read(0))
	if ok0 {
		metas = append(metas, m0)
		if m1, ok := parseMeta(read(int64(m0.pageSize))); ok && m1.pageSize == m0.pageSize {
			metas = append(metas, m1)
		}
	} else {
		// the first meta page is damaged: bbolt falls back to the second,
		// at the offset of the page size it guesses
		for _, ps := range []int64{int64(os.Getpagesize()), 4096, 8192, 16384, 32768, 65536} {
			if m1, ok := parseMeta(read(ps)); ok && int64(m1.pageSize) == ps {
				metas = append(metas, m1)
				break
			}
		}
	}
	if len(metas) == 0 {
		return errors.New("damaged file: no valid meta page")
	}
	for _, m := range metas {
		if need := int64(m.pgid) * int64(m.pageSize); size < need {
			return fmt.Errorf("%w: %d bytes, its meta page says %d pages of %d bytes", errTruncated, size, m.pgid, m.pageSize)
		}
	}
	return nil
}
