//go:build unix

package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
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
// crash of the machine). It counts records accepted (Add) and records settled (committed to
// PostgreSQL, appended to the spool or to the dead letters): at the next start, accepted −
// settled is what the killed process lost. Two slots close the windows where a count is
// unknown: a batch whose COMMIT was sent when the process died is looked up by its first
// request id; a spool write in progress, by the segment's size.
//
// The file lives in /dev/shm (tmpfs) when it can, named after the slot's directory: a page
// of a disk file is written back by the kernel every ~30 s and the next store to it then
// faults (measured 5 µs median, 0.2 ms p99 on ext4 here), inside Add; a tmpfs page is never
// written back. A clean close removes it and keeps the spool cursor in the slot's cursor
// file; so a state file found at start means the previous process did not stop cleanly.
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
	dir  string
	lock *os.File
	f    *os.File
	mem  []byte
}

// statePath is where the state file of slot directory dir lives.
func statePath(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && syscall.Access("/dev/shm", 2 /* W_OK */) == nil {
		sum := sha256.Sum256([]byte(abs))
		return filepath.Join("/dev/shm", "maas-ledger-"+hex.EncodeToString(sum[:12])+".state")
	}
	return filepath.Join(dir, "state")
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

// openState locks slot directory dir and maps its state file, creating it when needed, and
// returns what the previous process left in it. errLocked: another process holds the slot.
func openState(dir string) (*state, prevRun, error) {
	var prev prevRun
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, prev, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, prev, errLocked
		}
		return nil, prev, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	f, err := os.OpenFile(statePath(dir), os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		err = f.Truncate(stateSize)
		if err != nil {
			f.Close()
		}
	}
	if err != nil { // no tmpfs to write: beside the spool
		if f, err = os.OpenFile(filepath.Join(dir, "state"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
			lock.Close()
			return nil, prev, err
		}
		if err := f.Truncate(stateSize); err != nil {
			f.Close()
			lock.Close()
			return nil, prev, err
		}
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, stateSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		f.Close()
		lock.Close()
		return nil, prev, fmt.Errorf("map %s: %w", f.Name(), err)
	}
	s := &state{dir: dir, lock: lock, f: f, mem: mem}
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
	} else if c, err := os.ReadFile(filepath.Join(dir, "cursor")); err == nil && len(c) == 16 {
		// Stopped cleanly: the cursor it left.
		prev.readSeg, prev.readOff = binary.LittleEndian.Uint64(c), binary.LittleEndian.Uint64(c[8:])
	}
	// This run counts from zero.
	clear(mem)
	copy(mem, stateMagic)
	s.cursor(prev.readSeg, prev.readOff)
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

// close keeps the spool cursor in the slot's cursor file, removes the state file (a clean
// stop: nothing was lost), unmaps it and releases the slot. If the cursor cannot be
// written the state file is kept, with the cursor in it.
func (s *state) close() error {
	var c [16]byte
	binary.LittleEndian.PutUint64(c[:], s.u(offReadSeg).Load())
	binary.LittleEndian.PutUint64(c[8:], s.u(offReadOff).Load())
	err := writeFileSync(filepath.Join(s.dir, "cursor"), c[:])
	if err == nil {
		// Counted as settled, what was accepted is not lost; the state file goes.
		err = os.Remove(s.f.Name())
	}
	if uerr := syscall.Munmap(s.mem); err == nil {
		err = uerr
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if cerr := s.lock.Close(); err == nil { // closing releases the lock
		err = cerr
	}
	return err
}

// writeFileSync replaces path with b durably (a temporary file renamed over it).
func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}
