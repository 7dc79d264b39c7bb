// Package capture records decided packets in a bounded ring of pcapng
// files, each packet carrying its verdict and reason as a packet comment,
// so that a denied flow can be opened in Wireshark together with why it
// was denied.
//
// The verdict path (OnVerdict) copies at most SnapLen bytes of the packet
// into a fixed-size slot and offers it to a bounded channel; one writer
// goroutine renders reasons and writes pcapng with gopacket's NgWriter. A
// full channel drops the packet and counts it: the next packet written
// carries the count in its pcapng drop-count option (and a comment), and
// the interface statistics written at Close carry the total. Files rotate
// FILE -> FILE.1 -> ... so the capture never grows past Segments files of
// about SegmentBytes or SegmentPackets each.
//
// A restarted agent keeps what earlier runs captured: it appends a new
// pcapng section (whose comment names the run) to the file it finds, after
// cutting off a block a crash left incomplete, or rotates that file into
// the ring when it is full or not a pcapng file. A write the disk refuses
// never leaves a partial block behind: the file is cut back to the end of
// the last complete flush, the packets that were in flight are counted as
// lost and reported on the next packet written, and writing resumes (in a
// new section) once the disk takes it again.
package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// MaxSnapLen is the most bytes kept of a packet: the NFQUEUE copy range,
// enough for the IP and transport headers.
const MaxSnapLen = 128

// Select chooses which verdicts are captured (before the flow filter).
type Select uint8

const (
	// SelectDenied captures packets whose flow was denied.
	SelectDenied Select = iota
	// SelectWouldDeny captures packets that were allowed but that staged
	// (audit-mode) policies would deny: what promoting them would cut.
	SelectWouldDeny
	// SelectAll captures every decided packet.
	SelectAll
)

// ParseSelect reads "denied", "would-deny" or "all".
func ParseSelect(s string) (Select, error) {
	switch strings.ToLower(s) {
	case "denied", "deny", "":
		return SelectDenied, nil
	case "would-deny":
		return SelectWouldDeny, nil
	case "all":
		return SelectAll, nil
	}
	return 0, fmt.Errorf("capture: unknown selection %q (want denied, would-deny or all)", s)
}

// Options configure a Capture. Path is required.
type Options struct {
	// Path is the current segment; older ones are Path.1, Path.2, ...
	Path   string
	Select Select
	// Filter is a flow filter (see Match), e.g. "host 10.0.0.1 and port 80".
	Filter string
	// Segments is the number of files in the ring (default 2).
	Segments int
	// SegmentPackets and SegmentBytes end a segment at whichever comes
	// first (defaults 100000 packets, 16 MiB).
	SegmentPackets int
	SegmentBytes   int64
	// Buffer is how many packets may wait for the writer (default 1024).
	Buffer int
	// SnapLen caps the bytes kept per packet (default and maximum 128).
	SnapLen int
	// Poll is how often the writer collects buffered packets (default
	// 10ms); Buffer must hold what arrives meanwhile.
	Poll time.Duration
	// RunID names this run of the agent in each section's comment, so
	// that sections of successive runs in one file are told apart.
	RunID string
	// Retry is how long the writer waits after the file refused a write
	// before trying again (default 1s).
	Retry time.Duration
}

// Stats are a Capture's running totals.
type Stats struct {
	Written uint64 // packets written
	// Lost counts every packet selected but not in the file: the buffer
	// was full, the capture was closed, or the file refused it.
	Lost   uint64
	Errors uint64 // of Lost, the packets the file refused (disk full, I/O errors)
}

type slot struct {
	time    int64
	flow    filter.Flow
	verdict filter.Verdict
	latency time.Duration
	lost    uint64
	origLen uint32
	n       uint8
	data    [MaxSnapLen]byte
}

// Capture is a running packet capture. OnVerdict is safe for concurrent use.
type Capture struct {
	o     Options
	match *Match
	ch    chan slot

	pendLost atomic.Uint64
	lost     atomic.Uint64
	written  atomic.Uint64
	errs     atomic.Uint64
	closed   atomic.Bool

	done      chan struct{}
	finished  chan struct{}
	closeOnce sync.Once
	err       error // first write error, read after finished

	// writer goroutine state
	f        *os.File
	cw       *countWriter
	w        *pcapgo.NgWriter
	segPkts  int
	segBytes int64
	// good is the file's size at the end of the last complete flush: a
	// failed write cuts the file back to it. unflushed counts the packets
	// handed to w since then, lost if the flush fails.
	good      int64
	unflushed uint64
	// carried sums the losses the unflushed packets report: cut from
	// the file with them, they must be reported again.
	carried uint64
	retryAt time.Time // while w is nil: when to try the file again
	// resumed and truncated describe what New found at Path: an earlier
	// run's file appended to, and the bytes of an incomplete block cut.
	resumed   bool
	truncated int64
}

// New opens Path, keeping what an earlier run wrote there (see the
// package comment), and starts the writer; Close stops it.
func New(o Options) (*Capture, error) {
	if o.Path == "" {
		return nil, errors.New("capture: no file name")
	}
	if o.Segments <= 0 {
		o.Segments = 2
	}
	if o.SegmentPackets <= 0 {
		o.SegmentPackets = 100000
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = 16 << 20
	}
	if o.Buffer <= 0 {
		o.Buffer = 1024
	}
	if o.Poll <= 0 {
		o.Poll = 10 * time.Millisecond
	}
	if o.Retry <= 0 {
		o.Retry = time.Second
	}
	if o.SnapLen <= 0 || o.SnapLen > MaxSnapLen {
		o.SnapLen = MaxSnapLen
	}
	if o.Select > SelectAll {
		return nil, fmt.Errorf("capture: unknown selection %d", o.Select)
	}
	m, err := ParseMatch(o.Filter)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	c := &Capture{
		o:        o,
		match:    m,
		ch:       make(chan slot, o.Buffer),
		done:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	appendTo, err := c.resume()
	if err != nil {
		return nil, err
	}
	if err := c.openSegment(appendTo); err != nil {
		return nil, err
	}
	go c.run()
	return c, nil
}

func (c *Capture) selected(v *filter.Verdict) bool {
	switch c.o.Select {
	case SelectDenied:
		return !v.Allow
	case SelectWouldDeny:
		return v.Allow && !v.Audit.Allow
	}
	return true
}

// OnVerdict offers a decided packet (starting at its IP header) to the
// capture. It never blocks and allocates nothing.
func (c *Capture) OnVerdict(f filter.Flow, v filter.Verdict, pkt []byte, at time.Time, latency time.Duration) {
	if len(pkt) == 0 || !c.selected(&v) || !c.match.Matches(&f) {
		return
	}
	if c.closed.Load() {
		c.lost.Add(1)
		return
	}
	s := slot{time: at.UnixNano(), flow: f, verdict: v, latency: latency, origLen: origLen(pkt)}
	s.n = uint8(copy(s.data[:c.o.SnapLen], pkt))
	if c.pendLost.Load() != 0 {
		s.lost = c.pendLost.Swap(0)
	}
	select {
	case c.ch <- s:
	default:
		c.pendLost.Add(s.lost + 1)
		c.lost.Add(1)
	}
}

// origLen reads the packet's length from its IP header: NFQUEUE hands
// over only the copy range, and pcapng wants both lengths.
func origLen(pkt []byte) uint32 {
	n := uint32(len(pkt))
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) >= 4 {
			n = max(n, uint32(binary.BigEndian.Uint16(pkt[2:4])))
		}
	case 6:
		if len(pkt) >= 6 {
			n = max(n, 40+uint32(binary.BigEndian.Uint16(pkt[4:6])))
		}
	}
	return n
}

func (c *Capture) run() {
	defer close(c.finished)
	// Poll rather than block on the channel: waking a parked receiver per
	// packet would cost the verdict path a futex call (see flowlog).
	poll := time.NewTicker(c.o.Poll)
	defer poll.Stop()
	var s slot
	for {
		select {
		case <-poll.C:
			if c.drain(&s) > 0 {
				c.flush()
			}
		case <-c.done:
			c.drain(&s)
			c.finish()
			return
		}
	}
}

// drain writes what is buffered now, at most one buffer's worth.
func (c *Capture) drain(s *slot) int {
	for i := range cap(c.ch) {
		select {
		case *s = <-c.ch:
			c.write(s)
		default:
			return i
		}
	}
	return cap(c.ch)
}

func (c *Capture) fail(err error) {
	c.errs.Add(1)
	if c.err == nil {
		c.err = err
	}
}

func (c *Capture) flush() {
	if c.w == nil {
		return
	}
	if err := c.w.Flush(); err != nil {
		c.refused(fmt.Errorf("capture: flush %s: %w", c.o.Path, err))
		return
	}
	c.good, c.unflushed, c.carried = c.cw.n, 0, 0
}

// refused handles a write the file did not take (disk full, I/O error):
// the file is cut back to its last complete flush, so no partial block
// stays in it, the packets handed over since are lost and reported on the
// next packet written, and the writer tries the file again after Retry.
// The NgWriter is dropped: its buffer keeps failing once it has failed.
func (c *Capture) refused(err error) {
	c.fail(err)
	if n := c.unflushed; n > 0 {
		c.written.Add(^(n - 1)) // they were counted when handed over
		c.lostToFile(n, c.carried)
	}
	c.unflushed, c.carried = 0, 0
	if c.f != nil {
		if terr := c.f.Truncate(c.good); terr != nil {
			c.fail(fmt.Errorf("capture: cut %s back to its last complete block: %w", c.o.Path, terr))
		}
		c.f.Close()
	}
	c.f, c.cw, c.w = nil, nil, nil
	c.retryAt = time.Now().Add(c.o.Retry)
}

// lostToFile counts n packets the file refused as lost, to be reported
// with the next packet written, together with the earlier losses they
// would have reported (already counted).
func (c *Capture) lostToFile(n, carried uint64) {
	c.errs.Add(n)
	c.lost.Add(n)
	c.pendLost.Add(n + carried)
}

// Comments renders the pcapng comments of a decided packet of flow f: a
// summary, the reason, and the audit reason when staged policies would
// change it.
func Comments(f filter.Flow, v *filter.Verdict, latency time.Duration, lost uint64) []string {
	verdict := "deny"
	if v.Allow {
		verdict = "allow"
	}
	sum := "nfqpolicy verdict=" + verdict
	if v.AuditDiffers() {
		if v.Audit.Allow {
			sum += " audit=would-allow"
		} else {
			sum += " audit=would-deny"
		}
	}
	sum += " cached=" + strconv.FormatBool(v.Cached) +
		" latency_us=" + strconv.FormatFloat(float64(latency)/float64(time.Microsecond), 'f', -1, 64)
	out := []string{sum}
	if v.Ruleset != nil {
		out = append(out, "reason: "+v.Ruleset.DescribeFlow(f, *v))
		if v.AuditDiffers() {
			out = append(out, "audit: "+v.Ruleset.DescribeAudit(*v))
		}
	}
	if lost > 0 {
		out = append(out, "capture lost "+strconv.FormatUint(lost, 10)+" packets before this one")
	}
	return out
}

func (c *Capture) write(s *slot) {
	if c.w == nil && !c.reopen() {
		c.lostToFile(1, s.lost)
		return
	}
	if c.segPkts >= c.o.SegmentPackets || c.segBytes >= c.o.SegmentBytes {
		if err := c.rotate(); err != nil {
			c.refused(err)
			c.lostToFile(1, s.lost)
			return
		}
	}
	data := s.data[:s.n]
	ci := gopacket.CaptureInfo{
		Timestamp:     time.Unix(0, s.time),
		CaptureLength: len(data),
		Length:        int(s.origLen),
	}
	opts := pcapgo.NgPacketOptions{Comments: Comments(s.flow, &s.verdict, s.latency, s.lost)}
	if s.lost > 0 {
		opts.DropCount = &s.lost
	}
	if err := c.w.WritePacketWithOptions(ci, data, opts); err != nil {
		c.refused(fmt.Errorf("capture: write %s: %w", c.o.Path, err))
		c.lostToFile(1, s.lost)
		return
	}
	c.written.Add(1)
	c.unflushed++
	c.carried += s.lost
	c.segPkts++
	c.segBytes += epbSize(len(data), opts)
}

func pad4(n int) int64 { return int64((n + 3) &^ 3) }

// epbSize is the size of an enhanced packet block as NgWriter lays it out,
// so that segments are bounded without flushing after every packet.
func epbSize(n int, o pcapgo.NgPacketOptions) int64 {
	size := 32 + pad4(n)
	var opts int64
	for _, c := range o.Comments {
		opts += 4 + pad4(len(c))
	}
	if o.DropCount != nil {
		opts += 12
	}
	if opts > 0 {
		opts += 4 // end of options
	}
	return size + opts
}

// countWriter counts what reaches the file.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// reopen tries the file again after it refused a write, once Retry has
// passed: a new section appended to what is there.
func (c *Capture) reopen() bool {
	if time.Now().Before(c.retryAt) {
		return false
	}
	if err := c.openSegment(true); err != nil {
		c.fail(err)
		c.retryAt = time.Now().Add(c.o.Retry)
		return false
	}
	return true
}

// sectionComment names the run (and what New found) in the section
// header, so that a reader tells a restart from a gap.
func (c *Capture) sectionComment() string {
	s := "nfqpolicy capture"
	if c.o.RunID != "" {
		s += " run " + c.o.RunID
	}
	s += " section started " + time.Now().UTC().Format(time.RFC3339Nano)
	if c.resumed {
		s += "; appended after an earlier run's sections"
		if c.truncated > 0 {
			s += " (cut " + strconv.FormatInt(c.truncated, 10) + " bytes of an incomplete last block)"
		}
		c.resumed, c.truncated = false, 0
	}
	return s
}

// openSegment starts a section at Path: appended to the file there with
// appendTo, else in a new (truncated) file. A header the disk refuses is
// cut off again, so the file ends at a complete block either way.
func (c *Capture) openSegment(appendTo bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if !appendTo {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(c.o.Path, flags, 0o640)
	if err != nil {
		return fmt.Errorf("capture: open %s: %w", c.o.Path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("capture: stat %s: %w", c.o.Path, err)
	}
	start := st.Size()
	cw := &countWriter{w: f, n: start}
	intf := pcapgo.DefaultNgInterface
	intf.Name = "nfqueue"
	intf.Description = "first packets of flows decided by nfqpolicy (raw IP)"
	intf.LinkType = layers.LinkTypeRaw
	intf.SnapLength = uint32(c.o.SnapLen)
	if c.o.Filter != "" {
		intf.Filter = c.o.Filter
	}
	opts := pcapgo.DefaultNgWriterOptions
	opts.SectionInfo.Application = "nfqpolicy"
	opts.SectionInfo.Comment = c.sectionComment()
	w, err := pcapgo.NewNgWriterInterface(cw, intf, opts)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		_ = f.Truncate(start)
		f.Close()
		return fmt.Errorf("capture: write header of %s: %w", c.o.Path, err)
	}
	if !appendTo || start == 0 {
		c.segPkts = 0
	}
	c.f, c.cw, c.w = f, cw, w
	c.segBytes, c.good, c.unflushed, c.carried = cw.n, cw.n, 0, 0
	return nil
}

func (c *Capture) closeSegment() error {
	if c.w == nil {
		return nil
	}
	if c.flush(); c.w == nil {
		return nil // refused: the file is cut back and closed
	}
	err := c.f.Close()
	c.f, c.cw, c.w = nil, nil, nil
	if err != nil {
		return fmt.Errorf("capture: close %s: %w", c.o.Path, err)
	}
	return nil
}

func (c *Capture) rotate() error {
	if err := c.closeSegment(); err != nil {
		return err
	}
	if err := c.shift(); err != nil {
		return err
	}
	return c.openSegment(false)
}

// shift moves Path to Path.1, Path.1 to Path.2 and so on; the oldest
// segment falls off the ring's end.
func (c *Capture) shift() error {
	// Oldest first, so nothing is overwritten before it has moved.
	for i := c.o.Segments - 2; i >= 1; i-- {
		from, to := c.o.Path+"."+strconv.Itoa(i), c.o.Path+"."+strconv.Itoa(i+1)
		if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("capture: rotate %s: %w", from, err)
		}
	}
	if c.o.Segments > 1 {
		if err := os.Rename(c.o.Path, c.o.Path+".1"); err != nil {
			return fmt.Errorf("capture: rotate %s: %w", c.o.Path, err)
		}
	}
	c.segPkts = 0
	return nil
}

// finish records what was lost without a later packet to carry it, in the
// interface statistics, and closes the file.
func (c *Capture) finish() {
	if c.w == nil && c.lost.Load() > 0 {
		c.retryAt = time.Time{} // one last try, to record the loss
		c.reopen()
	}
	if c.w != nil {
		lost := c.lost.Load()
		if lost > 0 {
			c.pendLost.Store(0)
			err := c.w.WriteInterfaceStats(0, pcapgo.NgInterfaceStatistics{
				LastUpdate:      time.Now(),
				PacketsDropped:  lost,
				PacketsReceived: c.written.Load() + lost,
			})
			if err != nil {
				c.refused(fmt.Errorf("capture: write statistics to %s: %w", c.o.Path, err))
			}
		}
	}
	if err := c.closeSegment(); err != nil {
		c.fail(err)
	}
}

// Close writes every packet already accepted, the loss statistics, and
// closes the file. Call it after the last OnVerdict has returned.
func (c *Capture) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		close(c.done)
	})
	<-c.finished
	return c.err
}

// Stats returns the running totals.
func (c *Capture) Stats() Stats {
	return Stats{Written: c.written.Load(), Lost: c.lost.Load(), Errors: c.errs.Load()}
}
