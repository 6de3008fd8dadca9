package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The spool is an append-only queue of usage records on disk: numbered segment files, each a
// sequence of frames [length uint32][crc32c uint32][record], little-endian. The writer loop
// appends a batch with one write followed by fsync, and starts a new segment past
// segmentBytes (the directory is synced when a segment is created or removed). It reads
// from the oldest segment at a cursor kept in the state file; a segment read to its end is
// removed. A frame that is short or fails its checksum (the torn tail of a crash) ends its
// segment: the rest of that segment is skipped and counted. A process never appends to a
// segment an earlier process wrote, so a torn tail is always at a segment's end.
//
// Not safe for concurrent use: the Writer's loop owns it.
type spool struct {
	dir      string
	segBytes int64

	segs []uint64 // existing segments, oldest first; the last is the one written, if wf != nil
	wf   *os.File
	woff int64 // size of the written segment

	rseg uint64 // segment the cursor is in
	roff int64  // offset of the next record to read in rseg
	rf   *os.File

	records atomic.Int64 // depth, for the gauges
	bytes   atomic.Int64
	torn    func(seg uint64, skipped int64) // a torn tail was skipped

	enc []byte
	buf []byte
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

const frameHeader = 8

// maxFrame bounds a frame's length: a longer header is corruption.
const maxFrame = 1 << 16

// readChunk is how much of a segment one read takes in.
const readChunk = 1 << 20

// openSpool opens dir (created when needed), positions the cursor at seg/off when that
// segment still exists (else at the oldest one) and counts what is left to read.
func openSpool(dir string, segBytes int64, seg, off uint64, torn func(uint64, int64)) (*spool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &spool{dir: dir, segBytes: segBytes, torn: torn}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		s.segs = append(s.segs, n)
	}
	slices.Sort(s.segs)
	if len(s.segs) > 0 {
		s.rseg = s.segs[0]
		if slices.Contains(s.segs, seg) {
			s.rseg, s.roff = seg, int64(off)
			for s.segs[0] != seg { // older than the cursor: consumed already
				_ = os.Remove(s.path(s.segs[0]))
				s.segs = s.segs[1:]
			}
		}
	}
	// Count the records left (and check them: a torn tail is found now, not at replay).
	for i, sg := range s.segs {
		start := int64(0)
		if i == 0 {
			start = s.roff
		}
		n, size, err := s.scan(sg, start)
		if err != nil {
			return nil, err
		}
		s.records.Add(int64(n))
		s.bytes.Add(size - start)
	}
	return s, nil
}

func (s *spool) path(seg uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d.seg", seg))
}

// scan counts the whole frames of seg from off and returns them with the segment's size.
func (s *spool) scan(seg uint64, off int64) (int, int64, error) {
	data, err := os.ReadFile(s.path(seg))
	if err != nil {
		return 0, 0, err
	}
	n := 0
	for p := off; p < int64(len(data)); {
		l, ok := frameAt(data, p)
		if !ok {
			break
		}
		n++
		p += frameHeader + int64(l)
	}
	return n, int64(len(data)), nil
}

// frameAt returns the length of the whole, intact frame at p.
func frameAt(data []byte, p int64) (int, bool) {
	if int64(len(data))-p < frameHeader {
		return 0, false
	}
	l := int(binary.LittleEndian.Uint32(data[p:]))
	if l > maxFrame || int64(len(data))-p-frameHeader < int64(l) {
		return 0, false
	}
	body := data[p+frameHeader : p+frameHeader+int64(l)]
	return l, crc32.Checksum(body, crcTable) == binary.LittleEndian.Uint32(data[p+4:])
}

// empty reports whether nothing is left to read.
func (s *spool) empty() bool { return s.records.Load() == 0 }

// append writes recs at the end of the spool, durably (fsync) before it returns. before
// runs just before the write with the segment and its size after it, written just after
// the write (before the fsync: from then on a kill of the process loses nothing).
func (s *spool) append(recs []Record, before func(seg uint64, end int64), written func()) error {
	if len(recs) == 0 {
		return nil
	}
	if s.wf != nil && s.woff >= s.segBytes {
		if err := s.wf.Close(); err != nil {
			return err
		}
		s.wf = nil
	}
	if s.wf == nil {
		next := uint64(time.Now().UnixNano())
		if len(s.segs) > 0 && next <= s.segs[len(s.segs)-1] {
			next = s.segs[len(s.segs)-1] + 1
		}
		f, err := os.OpenFile(s.path(next), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("create spool segment: %w", err)
		}
		if err := syncDir(s.dir); err != nil {
			f.Close()
			return err
		}
		if len(s.segs) == 0 {
			s.rseg, s.roff = next, 0
		}
		s.segs = append(s.segs, next)
		s.wf, s.woff = f, 0
	}
	b := s.enc[:0]
	for i := range recs {
		at := len(b)
		b = append(b, make([]byte, frameHeader)...)
		b = encodeRecord(b, &recs[i])
		body := b[at+frameHeader:]
		binary.LittleEndian.PutUint32(b[at:], uint32(len(body)))
		binary.LittleEndian.PutUint32(b[at+4:], crc32.Checksum(body, crcTable))
	}
	s.enc = b
	if before != nil {
		before(s.segs[len(s.segs)-1], s.woff+int64(len(b)))
	}
	n, err := s.wf.Write(b)
	s.woff += int64(n)
	if err != nil {
		// A partial frame may be at the end now: never append after it.
		s.wf.Close()
		s.wf = nil
		return fmt.Errorf("append to spool: %w", err)
	}
	s.records.Add(int64(len(recs)))
	s.bytes.Add(int64(n))
	if written != nil {
		written()
	}
	if err := s.wf.Sync(); err != nil {
		s.wf.Close()
		s.wf = nil
		return fmt.Errorf("%w: %w", errSyncSpool, err)
	}
	return nil
}

// spoolPos is a position in the spool: just after the last record of a read.
type spoolPos struct {
	seg uint64
	off int64
}

// read returns up to max records from the cursor (without moving it) and the position
// after them. Torn tails it meets are skipped and reported.
func (s *spool) read(max int, into []Record) ([]Record, spoolPos, error) {
	for len(s.segs) > 0 {
		seg := s.rseg
		if s.rf == nil {
			f, err := os.Open(s.path(seg))
			if err != nil {
				return into, spoolPos{}, err
			}
			s.rf = f
		}
		// Read what is there from the cursor: bounded by max frames of at most maxFrame.
		size, err := s.rf.Seek(0, io.SeekEnd)
		if err != nil {
			return into, spoolPos{}, err
		}
		want := min(size-s.roff, readChunk) // holds at least one frame (maxFrame < readChunk)
		if cap(s.buf) < int(want) {
			s.buf = make([]byte, want)
		}
		buf := s.buf[:want]
		if _, err := s.rf.ReadAt(buf, s.roff); err != nil && !errors.Is(err, io.EOF) {
			return into, spoolPos{}, err
		}
		p := int64(0)
		for len(into) < max && p < int64(len(buf)) {
			l, ok := frameAt(buf, p)
			if !ok {
				break
			}
			r, err := decodeRecord(buf[p+frameHeader : p+frameHeader+int64(l)])
			if err != nil { // a frame with a good checksum but unreadable: treat as torn
				break
			}
			into = append(into, r)
			p += frameHeader + int64(l)
		}
		if len(into) > 0 {
			return into, spoolPos{seg: seg, off: s.roff + p}, nil
		}
		// Nothing whole at the cursor.
		if s.wf != nil && seg == s.segs[len(s.segs)-1] {
			// The end of the segment being written: everything was read, and consumed (the
			// loop reads only with no batch in flight).
			s.records.Store(0)
			return into, spoolPos{}, nil
		}
		if rest := size - s.roff; rest > 0 && s.torn != nil {
			s.torn(seg, rest)
			s.bytes.Add(-rest)
		}
		s.dropReadSegment()
	}
	s.records.Store(0)
	return into, spoolPos{}, nil
}

// consume moves the cursor to pos, n records later, and removes segments read to the end.
func (s *spool) consume(pos spoolPos, n int) {
	if pos.seg != s.rseg {
		return
	}
	s.bytes.Add(-(pos.off - s.roff))
	s.records.Add(-int64(n))
	s.roff = pos.off
	if s.wf != nil && s.segs[len(s.segs)-1] == s.rseg {
		if s.roff < s.woff {
			return
		}
		// Read to the end of the segment being written: start afresh.
		s.wf.Close()
		s.wf = nil
	} else if fi, err := os.Stat(s.path(s.rseg)); err == nil && s.roff < fi.Size() {
		return
	}
	s.dropReadSegment()
}

// dropReadSegment removes the segment under the cursor and moves to the next.
func (s *spool) dropReadSegment() {
	if s.rf != nil {
		s.rf.Close()
		s.rf = nil
	}
	_ = os.Remove(s.path(s.rseg))
	_ = syncDir(s.dir)
	s.segs = s.segs[1:]
	s.roff = 0
	if len(s.segs) > 0 {
		s.rseg = s.segs[0]
	}
}

// close closes the files (appends were synced already).
func (s *spool) close() error {
	var err error
	if s.wf != nil {
		err = s.wf.Close()
		s.wf = nil
	}
	if s.rf != nil {
		s.rf.Close()
		s.rf = nil
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// encodeRecord appends r's binary form to b.
func encodeRecord(b []byte, r *Record) []byte {
	b = append(b, 1) // version
	for _, s := range [...]string{r.RequestID, r.ClientRequestID, r.Model, r.Backend, r.Endpoint, r.ErrorType} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	for _, v := range [...]int64{r.CreatedAt.Unix(), int64(r.CreatedAt.Nanosecond()), r.UserID, r.KeyID, int64(r.Status),
		r.PromptTokens, r.CompletionTokens, int64(r.TTFT), int64(r.Duration)} {
		b = binary.AppendVarint(b, v)
	}
	var flags byte
	if r.Estimated {
		flags |= 1
	}
	if r.Streamed {
		flags |= 2
	}
	return append(b, flags)
}

var errBadRecord = errors.New("malformed spooled record")

// errSyncSpool: the records were written to the spool (the page cache has them, a kill of
// the process keeps them) but fsync failed.
var errSyncSpool = errors.New("sync spool")

// decodeRecord reads what encodeRecord wrote.
func decodeRecord(b []byte) (Record, error) {
	var r Record
	if len(b) < 1 || b[0] != 1 {
		return r, errBadRecord
	}
	b = b[1:]
	for _, p := range [...]*string{&r.RequestID, &r.ClientRequestID, &r.Model, &r.Backend, &r.Endpoint, &r.ErrorType} {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return r, errBadRecord
		}
		*p = string(b[n : n+int(l)])
		b = b[n+int(l):]
	}
	var v [9]int64
	for i := range v {
		x, n := binary.Varint(b)
		if n <= 0 {
			return r, errBadRecord
		}
		v[i], b = x, b[n:]
	}
	if len(b) != 1 {
		return r, errBadRecord
	}
	r.CreatedAt = time.Unix(v[0], v[1]).UTC()
	r.UserID, r.KeyID, r.Status = v[2], v[3], int(v[4])
	r.PromptTokens, r.CompletionTokens = v[5], v[6]
	r.TTFT, r.Duration = time.Duration(v[7]), time.Duration(v[8])
	r.Estimated, r.Streamed = b[0]&1 != 0, b[0]&2 != 0
	return r, nil
}
