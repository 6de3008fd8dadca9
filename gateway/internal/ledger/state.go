//go:build unix

package ledger

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// The state file is one page, mapped shared into memory, so that what the Writer stores in
// it is in the kernel's page cache at once and survives a kill -9 of the process (not a
// crash of the machine: it is synced only at Stop). It counts records accepted (Add) and
// records settled (committed to PostgreSQL, appended to the spool or to the dead letters):
// at the next start, accepted − settled is what the killed process lost. The commit slot
// closes the one window where a count is unknown: a batch whose COMMIT was sent when the
// process died is looked up by its first request id.
const (
	stateSize    = 4096
	stateMagic   = "MAASLDG1"
	offAccepted  = 8
	offSettledPG = 16 // written by the batch writer only
	offSettledX  = 24 // spool and dead letters
	offSlotN     = 32 // records of the batch whose COMMIT is in flight (0: none)
	offSlotPrev  = 40 // settledPG before that batch
	offSlotLen   = 48
	offSlotID    = 56 // its first request id, maxIDBytes
	offReadSeg   = 56 + maxIDBytes
	offReadOff   = offReadSeg + 8
	offSpoolN    = offReadOff + 8 // records of the spool append in progress (0: none)
	offSpoolPrev = offSpoolN + 8  // settledX before it
	offSpoolSeg  = offSpoolPrev + 8
	offSpoolEnd  = offSpoolSeg + 8 // the segment's size once the append is written
	offEnd       = offSpoolEnd + 8
)

// state is the mapped state file of one slot of the data directory. Its counters are safe
// for concurrent use.
type state struct {
	f   *os.File
	mem []byte
}

// prevRun is what a state file said at open.
type prevRun struct {
	accepted, settled uint64
	slotN, slotPrev   uint64
	slotPG            uint64 // settledPG
	slotID            string
	readSeg, readOff  uint64
	settledX          uint64
	spoolN, spoolPrev uint64
	spoolSeg          uint64
	spoolEnd          int64
}

// openState locks and maps dir/state, creating it when needed, and returns what the
// previous process left in it. ErrLocked: another process holds it.
func openState(dir string) (*state, prevRun, error) {
	var prev prevRun
	f, err := os.OpenFile(filepath.Join(dir, "state"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, prev, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, prev, errLocked
		}
		return nil, prev, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	if err := f.Truncate(stateSize); err != nil {
		f.Close()
		return nil, prev, err
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, stateSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, prev, fmt.Errorf("map %s: %w", f.Name(), err)
	}
	s := &state{f: f, mem: mem}
	if string(mem[:8]) == stateMagic {
		prev = prevRun{
			accepted: s.u(offAccepted).Load(), slotPG: s.u(offSettledPG).Load(),
			slotN: s.u(offSlotN).Load(), slotPrev: s.u(offSlotPrev).Load(),
			readSeg: s.u(offReadSeg).Load(), readOff: s.u(offReadOff).Load(),
		}
		prev.settledX = s.u(offSettledX).Load()
		prev.settled = prev.slotPG + prev.settledX
		prev.spoolN, prev.spoolPrev = s.u(offSpoolN).Load(), s.u(offSpoolPrev).Load()
		prev.spoolSeg, prev.spoolEnd = s.u(offSpoolSeg).Load(), int64(s.u(offSpoolEnd).Load())
		if n := s.u(offSlotLen).Load(); n <= maxIDBytes {
			prev.slotID = string(mem[offSlotID : offSlotID+n])
		}
	}
	// This run counts from zero; the spool cursor is kept.
	clear(mem[:offReadSeg])
	clear(mem[offSpoolN:offEnd])
	copy(mem, stateMagic)
	return s, prev, nil
}

var errLocked = errors.New("locked by another process")

func (s *state) u(off int) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(&s.mem[off])) }

func (s *state) accept()           { s.u(offAccepted).Add(1) }
func (s *state) settled(n int)     { s.u(offSettledX).Add(uint64(n)) }
func (s *state) committedPG(n int) { s.u(offSettledPG).Add(uint64(n)) }
func (s *state) cursor(seg, off uint64) {
	s.u(offReadSeg).Store(seg)
	s.u(offReadOff).Store(off)
}

// openSlot notes that the COMMIT of n records starting with id is about to be sent.
func (s *state) openSlot(n int, id string) {
	s.u(offSlotN).Store(0)
	s.u(offSlotPrev).Store(s.u(offSettledPG).Load())
	n2 := copy(s.mem[offSlotID:offSlotID+maxIDBytes], id)
	s.u(offSlotLen).Store(uint64(n2))
	s.u(offSlotN).Store(uint64(n))
}

func (s *state) closeSlot() { s.u(offSlotN).Store(0) }

// spoolWrite notes that n records are about to be written to the spool, which will end
// at end in segment seg once written; spoolWritten counts them settled. Between the two,
// the next start looks at the segment's size.
func (s *state) spoolWrite(n int, seg uint64, end int64) {
	s.u(offSpoolN).Store(0)
	s.u(offSpoolPrev).Store(s.u(offSettledX).Load())
	s.u(offSpoolSeg).Store(seg)
	s.u(offSpoolEnd).Store(uint64(end))
	s.u(offSpoolN).Store(uint64(n))
}

func (s *state) spoolWritten(n int) {
	s.u(offSettledX).Add(uint64(n))
	s.u(offSpoolN).Store(0)
}

// close syncs the file to disk, unmaps and unlocks it.
func (s *state) close() error {
	err := msync(s.mem)
	if uerr := syscall.Munmap(s.mem); err == nil {
		err = uerr
	}
	if cerr := s.f.Close(); err == nil { // closing releases the lock
		err = cerr
	}
	return err
}

func msync(b []byte) error {
	_, _, e := syscall.Syscall(syscall.SYS_MSYNC, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MS_SYNC)
	if e != 0 {
		return e
	}
	return nil
}
