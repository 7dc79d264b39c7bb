package flowlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A run's state file lets the next run count what a kill -9 lost.
//
// The records a killed run had decided but not yet written (its buffer,
// up to one Poll interval of decisions, and the lost counts no written
// line carried yet) are gone with its memory. To count them, the run keeps
// its sequence counter and the totals of what its written lines account
// for in a small file mapped shared into memory: a store into that mapping
// is a plain memory write (the verdict path's seq increment costs what it
// did), and it survives the process, because the pages belong to the
// file's page cache, not to the process. The next run reads it: what the
// dead run numbered minus what its lines account for is what it lost, and
// the next run's unclean-end line reports that count as "lost" (and
// "rate_limited"), so every reader that sums the log's lost counts (audit
// report, the fault matrix) includes it. A node crash loses the page cache
// too; the log's own unwritten tail with it. Without the file (stdout
// sink, a file from an older version, removed) the count is unknown, and
// the line says so ("lost_unknown").
//
// Layout (native byte order, one page; only the same node's agent reads it):
//
//	0   magic "NFQFLS01"
//	8   issued: sequence numbers handed out (the Logger's seq counter)
//	16  limited: records suppressed by the rate limit (its counter)
//	24  accounted: sequence numbers whose record is in the file, or whose
//	    loss a line in the file reports
//	32  limitedReported: rate-limited records a line in the file reports
//	40  pending: 1 while a line is being written; then
//	48  pendingSeq, 56 pendingTime (unix ns): the line, to recognise it
//	64  pendingAccounted, 72 pendingLimitedReported: the totals once it is
//	    written
//	80  closed: 1 after the run's closing line was written
//	88  run id length, 96.. run id
//
// A line is written as: pending fields, pending = 1, write, totals =
// pending totals, pending = 0. A run killed with pending = 1 wrote the
// line if the log's last line is it (same run, seq and time); the totals
// then are the pending ones, whichever stores of the last step happened.
const (
	stateSize     = 4096
	stateMagic    = "NFQFLS01"
	offIssued     = 8
	offLimited    = 16
	offAccounted  = 24
	offLimRep     = 32
	offPending    = 40
	offPendSeq    = 48
	offPendTime   = 56
	offPendAcc    = 64
	offPendLimRep = 72
	offClosed     = 80
	offRunLen     = 88
	offRun        = 96
	maxRunLen     = stateSize - offRun
)

// StatePath is where the run state of the flow log at path is kept: a
// hidden file next to it, so that log readers globbing path.* (rotated
// files) do not take it for a log.
func StatePath(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".state")
}

// runState is a mapped state file; nil methods are not called (a Logger
// without one keeps its counters in ordinary memory).
type runState struct {
	mem []byte
}

// PreviousRun is what a state file says of the run that last used it.
type PreviousRun struct {
	Run                       string
	Closed                    bool
	Issued, Limited           uint64
	Accounted, LimitedReports uint64
	pending                   bool
	pendSeq                   uint64
	pendTime                  int64
	pendAcc, pendLimRep       uint64
}

// settle applies a line that was being written when the run died, if the
// log's last line (last) is that line.
func (p *PreviousRun) settle(last *Entry) {
	if !p.pending || last == nil || last.Run != p.Run || last.Seq != p.pendSeq || last.Time.UnixNano() != p.pendTime {
		return
	}
	p.Accounted, p.LimitedReports = p.pendAcc, p.pendLimRep
}

// Lost is what the previous run numbered but no line of the log accounts
// for, and what it rate-limited that no line reports.
func (p *PreviousRun) Lost() (lost, limited uint64) {
	if p.Issued > p.Accounted {
		lost = p.Issued - p.Accounted
	}
	if p.Limited > p.LimitedReports {
		limited = p.Limited - p.LimitedReports
	}
	return lost, limited
}

// safeFS are the filesystems on which a store into a mapped page whose
// blocks are written never needs new space: tmpfs, ext4 (and ext2/3),
// xfs, and overlayfs (whose mapping is its upper layer's file, in practice
// one of those). On a copy-on-write filesystem (btrfs, zfs, bcachefs) a
// store after writeback may need a new block, and on a full disk that is
// a SIGBUS on the verdict path, not an error: no state file there.
var safeFS = map[int64]string{0x01021994: "tmpfs", 0xEF53: "ext4", 0x58465342: "xfs", 0x794c7630: "overlayfs"}

// errUnsafeFS says the state file's filesystem is not one where mapping
// it is safe; the Logger then runs without one.
var errUnsafeFS = errors.New("not on tmpfs, ext4, xfs or overlayfs")

// openRunState maps the state file at path, returns what it held (nil if
// it did not exist or is not a state file) without changing it yet (begin
// starts it over).
func openRunState(path string) (*runState, *PreviousRun, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("flowlog: run state: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("flowlog: run state: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("flowlog: run state %s is not a regular file", path)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return nil, nil, fmt.Errorf("flowlog: run state: %w", err)
	}
	if _, ok := safeFS[int64(fs.Type)]; !ok {
		return nil, nil, fmt.Errorf("flowlog: run state %s (filesystem %#x): %w", path, fs.Type, errUnsafeFS)
	}
	// Read what the previous run left, then write the page back whole and
	// sync it: its blocks are then allocated and written, so that no
	// store into the mapping ever needs space (a full disk fails here,
	// with an error, instead).
	page := make([]byte, stateSize)
	n, err := f.ReadAt(page, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("flowlog: run state: %w", err)
	}
	sized := n == stateSize && st.Size() == stateSize
	if !sized {
		clear(page)
		if err := f.Truncate(0); err != nil {
			return nil, nil, fmt.Errorf("flowlog: run state: %w", err)
		}
	}
	if _, err := f.WriteAt(page, 0); err != nil {
		return nil, nil, fmt.Errorf("flowlog: run state: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, nil, fmt.Errorf("flowlog: run state: %w", err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, stateSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("flowlog: map run state: %w", err)
	}
	s := &runState{mem: mem}
	return s, s.read(sized), nil
}

func (s *runState) u64(off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&s.mem[off]))
}

// read returns the previous run's state, nil if the file held none.
func (s *runState) read(sized bool) *PreviousRun {
	if !sized || string(s.mem[:8]) != stateMagic {
		return nil
	}
	n := s.u64(offRunLen).Load()
	if n == 0 || n > maxRunLen {
		return nil
	}
	return &PreviousRun{
		Run:            string(s.mem[offRun : offRun+int(n)]),
		Closed:         s.u64(offClosed).Load() == 1,
		Issued:         s.u64(offIssued).Load(),
		Limited:        s.u64(offLimited).Load(),
		Accounted:      s.u64(offAccounted).Load(),
		LimitedReports: s.u64(offLimRep).Load(),
		pending:        s.u64(offPending).Load() == 1,
		pendSeq:        s.u64(offPendSeq).Load(),
		pendTime:       int64(s.u64(offPendTime).Load()),
		pendAcc:        s.u64(offPendAcc).Load(),
		pendLimRep:     s.u64(offPendLimRep).Load(),
	}
}

// begin starts the state over for run: every counter at zero. The run
// id is written last, so a run killed in the middle leaves no state (zero
// length) rather than another run's.
func (s *runState) begin(run string) {
	s.u64(offRunLen).Store(0)
	for off := offIssued; off < offRunLen; off += 8 {
		s.u64(off).Store(0)
	}
	copy(s.mem[offRun:], run)
	copy(s.mem[:8], stateMagic)
	s.u64(offRunLen).Store(uint64(len(run)))
}

// writing marks a line about to be written: its seq (0 for a summary)
// and time identify it, acc and limRep are the totals once it is.
func (s *runState) writing(seq uint64, t int64, acc, limRep uint64) {
	s.u64(offPendSeq).Store(seq)
	s.u64(offPendTime).Store(uint64(t))
	s.u64(offPendAcc).Store(acc)
	s.u64(offPendLimRep).Store(limRep)
	s.u64(offPending).Store(1)
}

// written commits the pending line's totals (ok) or drops them (the sink
// refused the line).
func (s *runState) written(ok bool) {
	if ok {
		s.u64(offAccounted).Store(s.u64(offPendAcc).Load())
		s.u64(offLimRep).Store(s.u64(offPendLimRep).Load())
	}
	s.u64(offPending).Store(0)
}

// closed marks the run as ended cleanly. The mapping is not undone: a
// late OnVerdict (after Close, counted as lost) may still touch the
// counters in it, and it is one page for the process's life.
func (s *runState) closed() {
	s.u64(offClosed).Store(1)
}
