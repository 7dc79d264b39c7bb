// Package flowlog writes one JSON line per decided flow without ever making
// the verdict path wait for it.
//
// OnVerdict, called from the NFQUEUE readers, copies the flow and verdict
// into a fixed-size Record and offers it to a bounded channel; a single
// writer goroutine renders records with zerolog (names, reason, labels are
// built there, not on the verdict path). A full channel drops the record and
// counts it; the next record that does get in carries that count as "lost",
// so a reader of the log sees every gap, and the counts left over at a quiet
// moment or at shutdown go out as a summary line. A per-source token bucket
// keeps one noisy client from crowding everyone else out; what it suppresses
// is reported the same way as "rate_limited".
//
// A line (Entry reads it back):
//
//	time            RFC 3339, nanoseconds, UTC
//	node            the agent's node
//	run             this run of the agent (a restart starts a new run,
//	                whose seq starts again at 1)
//	seq             per-run sequence; gaps are records lost or limited
//	verdict         allow | deny (what was enforced)
//	mode            enforce | audit (the agent's mode)
//	audit_verdict   would-allow | would-deny: the verdict with staged
//	                policies enforced too (only when some policy is staged)
//	audit_differs   true when audit_verdict differs from verdict; then
//	staged_policies the staged policies ("ns/name") that make the difference
//	audit_reason    and why
//	proto, family   tcp|udp|sctp|icmp|icmpv6, 4|6
//	src, src_port, dst, dst_port
//	src_pod, src_namespace, dst_pod, dst_namespace   when a side is a pod
//	src_labels, dst_labels                           with Renderer.Labels
//	reason          one line: which rule allowed each side, or which
//	                policies isolate the pod that denied it
//	egress, ingress {decision, policy, policy_index, rule, peer}
//	latency_us      decision latency
//	cached          the flow cache answered
//	lost, rate_limited  records dropped since the previous line
//
// Lines with no verdict are summaries: lost/rate_limited counts that no
// record could carry, and a "message".
//
// A line the sink refuses (a full disk) is lost like one the buffer had no
// room for: counted, and reported on the next line that is written.
//
// Close ends a run's log (Renderer.Run set) with a line whose message is
// ClosedMessage and whose last_seq is the run's last sequence number. A run
// that never wrote one was killed (SIGKILL, OOM) or crashed: the records of
// its last few milliseconds of decisions, still in its buffer, are gone.
// The next run says so (Options.Previous): its first line names the run
// that ended uncleanly (unclean_run) and, from the dead run's state file
// (Options.StatePath, see runstate.go), counts what it lost ("lost",
// "rate_limited"), or says that nobody can ("lost_unknown": no state
// file).
package flowlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/rs/zerolog"
)

// Select chooses which decided flows are logged.
type Select uint8

const (
	// SelectDenied logs flows the policies deny: enforced denials and flows
	// staged policies would deny.
	SelectDenied Select = iota
	// SelectAll logs every decided flow.
	SelectAll
	// SelectAuditDiff logs only flows whose audit verdict differs from what
	// was enforced.
	SelectAuditDiff
)

// ParseSelect reads "denied", "all" or "audit-diff".
func ParseSelect(s string) (Select, error) {
	switch strings.ToLower(s) {
	case "denied", "deny", "":
		return SelectDenied, nil
	case "all":
		return SelectAll, nil
	case "audit-diff", "audit":
		return SelectAuditDiff, nil
	}
	return 0, fmt.Errorf("flowlog: unknown selection %q (want denied, all or audit-diff)", s)
}

func (s Select) String() string {
	switch s {
	case SelectAll:
		return "all"
	case SelectAuditDiff:
		return "audit-diff"
	}
	return "denied"
}

// Options configure a Logger. Out is required; the rest have defaults.
type Options struct {
	// Out receives one JSON line per Write. The Logger does not close it.
	Out io.Writer
	// Buffer is how many records may wait for the writer (default 4096):
	// it must hold what arrives in one Poll interval.
	Buffer int
	Select Select
	// RatePerSec and Burst configure the per-source-address token bucket;
	// RatePerSec <= 0 disables rate limiting.
	RatePerSec float64
	Burst      int
	// MaxSources bounds the rate limiter's table (default 4096).
	MaxSources int
	// ReportInterval is how often pending lost/rate-limited counts that no
	// record has carried are written as a summary line (default 5s).
	ReportInterval time.Duration
	// Poll is how often the writer collects buffered records (default
	// 10ms): records reach Out at most this late.
	Poll time.Duration
	// Renderer adds the node name, mode and pod labels.
	Renderer Renderer
	// Previous is the last line an earlier run left in the same file
	// (LastEntry), nil if none: when it is not that run's closing line,
	// New reports the unclean end first thing.
	Previous *Entry
	// StatePath, if set, is the run state file (StatePath(log path)):
	// the counters that let the next run count what this one loses if it
	// is killed. Needs Renderer.Run.
	StatePath string
}

// ClosedMessage is the message of the line Close writes last.
const ClosedMessage = "flow log closed"

// Stats are the Logger's running totals.
type Stats struct {
	Written     uint64 // flow records written to Out
	Lost        uint64 // records dropped because the buffer was full (or after Close)
	RateLimited uint64 // records suppressed by the per-source rate limit
	WriteErrors uint64 // lines Out refused
}

// Logger is a running flow log. Its OnVerdict is safe for concurrent use.
type Logger struct {
	ch       chan Record
	sel      Select
	lim      *limiter
	out      *countingWriter
	zl       zerolog.Logger
	rd       Renderer
	interval time.Duration
	poll     time.Duration

	// seq and limited live in the run state file's mapping when there is
	// one (state), so that they outlive a kill; own holds them otherwise.
	seq, limited *atomic.Uint64
	own          [2]atomic.Uint64
	state        *runState
	// What the lines written so far account for: sequence numbers (records
	// written, losses reported) and rate-limited records reported. Only
	// the writer touches them.
	accounted, limitReported uint64
	pendLost                 atomic.Uint64
	pendLimited              atomic.Uint64
	lost                     atomic.Uint64
	written                  atomic.Uint64
	closed                   atomic.Bool

	done      chan struct{}
	finished  chan struct{}
	closeOnce sync.Once
}

// New starts a Logger's writer goroutine; Close stops it.
func New(o Options) (*Logger, error) {
	if o.Out == nil {
		return nil, errors.New("flowlog: no output")
	}
	if o.Buffer <= 0 {
		o.Buffer = 4096
	}
	if o.MaxSources <= 0 {
		o.MaxSources = 4096
	}
	if o.ReportInterval <= 0 {
		o.ReportInterval = 5 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 10 * time.Millisecond
	}
	if o.Select > SelectAuditDiff {
		return nil, fmt.Errorf("flowlog: unknown selection %d", o.Select)
	}
	cw := &countingWriter{w: o.Out}
	l := &Logger{
		ch:       make(chan Record, o.Buffer),
		sel:      o.Select,
		out:      cw,
		zl:       zerolog.New(cw),
		rd:       o.Renderer,
		interval: o.ReportInterval,
		poll:     o.Poll,
		done:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	l.seq, l.limited = &l.own[0], &l.own[1]
	var prevState *PreviousRun
	if o.StatePath != "" {
		if o.Renderer.Run == "" || len(o.Renderer.Run) > maxRunLen {
			return nil, fmt.Errorf("flowlog: a run state file needs a run id of 1 to %d bytes", maxRunLen)
		}
		st, prev, err := openRunState(o.StatePath)
		switch {
		case errors.Is(err, errUnsafeFS):
			// Runs without: a later run reports this one's kill as
			// lost_unknown.
		case err != nil:
			return nil, err
		default:
			l.state, prevState = st, prev
		}
	}
	if o.RatePerSec > 0 {
		burst := o.Burst
		if burst <= 0 {
			burst = max(int(o.RatePerSec), 1)
		}
		l.lim = newLimiter(o.RatePerSec, burst, o.MaxSources)
	}
	l.reportPrevious(o.Previous, prevState)
	if l.state != nil {
		// After the report: a run killed in between has reported the
		// previous one, and began nothing of its own.
		l.state.begin(o.Renderer.Run)
		l.seq, l.limited = l.state.u64(offIssued), l.state.u64(offLimited)
	}
	go l.run()
	return l, nil
}

// reportPrevious writes the unclean-end line about the run before this
// one, if it ended without closing its log: last is the log's last line,
// prev what the state file says (nil: no state file).
func (l *Logger) reportPrevious(last *Entry, prev *PreviousRun) {
	if prev == nil {
		if last != nil && last.Run != "" && last.Message != ClosedMessage {
			l.uncleanEnd(last.Run, last.Seq, nil)
		}
		return
	}
	prev.settle(last)
	switch {
	case prev.Closed, last != nil && last.Run == prev.Run && last.Message == ClosedMessage:
		// Closed; the second: killed between its closing line and the
		// closed mark.
	case last != nil && last.UncleanRun == prev.Run && last.Run != prev.Run:
		// The state's run was reported by last's run, which died before
		// it began numbering anything: it lost nothing.
		l.uncleanEnd(last.Run, 0, &PreviousRun{Run: last.Run})
	default:
		seq := uint64(0)
		if last != nil && last.Run == prev.Run {
			seq = last.Seq
		}
		l.uncleanEnd(prev.Run, seq, prev)
	}
}

// uncleanEnd reports that run never closed its log; lastSeq is its last
// sequence number in the log; prev (nil: unknown) counts what it lost.
func (l *Logger) uncleanEnd(run string, lastSeq uint64, prev *PreviousRun) {
	e := l.zl.Log().Str("time", time.Now().UTC().Format(time.RFC3339Nano))
	if l.rd.Node != "" {
		e = e.Str("node", l.rd.Node)
	}
	if l.rd.Run != "" {
		e = e.Str("run", l.rd.Run)
	}
	e = e.Str("unclean_run", run).Uint64("last_seq", lastSeq)
	if prev == nil {
		e.Bool("lost_unknown", true).
			Str("message", "the previous run ended without closing the flow log (killed or crashed): records of its last decisions, after last_seq, may be missing, and no state file counts them").Send()
		return
	}
	lost, limited := prev.Lost()
	e.Uint64("lost", lost).Uint64("rate_limited", limited).
		Str("message", "the previous run ended without closing the flow log (killed or crashed): lost and rate_limited count what it decided that no line of the log holds or reports").Send()
}

func (l *Logger) selected(v *filter.Verdict) bool {
	switch l.sel {
	case SelectAll:
		return true
	case SelectDenied:
		return !v.Allow || !v.Audit.Allow
	case SelectAuditDiff:
		return v.AuditDiffers()
	}
	return false
}

// OnVerdict offers one decided flow to the log. It never blocks and
// allocates nothing; pkt is not used (the capture package records packets).
func (l *Logger) OnVerdict(f filter.Flow, v filter.Verdict, _ []byte, at time.Time, latency time.Duration) {
	if !l.selected(&v) {
		return
	}
	now := at.UnixNano() // the reader read the clock once for every observer
	if l.lim != nil && !l.lim.allow(f.Src, now) {
		l.pendLimited.Add(1)
		l.limited.Add(1)
		return
	}
	if l.closed.Load() {
		l.lost.Add(1)
		return
	}
	r := Record{Time: now, Seq: l.seq.Add(1), Flow: f, Verdict: v, Latency: latency}
	// Claim the pending counts for this record; give them back (plus this
	// record) if it does not get in, so that every drop is reported once.
	// The Loads keep the common case (nothing pending) from writing to
	// the shared counters' cache line.
	if l.pendLost.Load() != 0 {
		r.Lost = l.pendLost.Swap(0)
	}
	if l.pendLimited.Load() != 0 {
		r.RateLimited = l.pendLimited.Swap(0)
	}
	select {
	case l.ch <- r:
	default:
		l.pendLost.Add(r.Lost + 1)
		if r.RateLimited > 0 {
			l.pendLimited.Add(r.RateLimited)
		}
		l.lost.Add(1)
	}
}

func (l *Logger) run() {
	defer close(l.finished)
	// The writer polls instead of blocking on the channel: a send to a
	// channel nobody waits on is a copy under a lock, while waking a
	// parked receiver per record costs the verdict path a futex call.
	poll := time.NewTicker(l.poll)
	defer poll.Stop()
	report := time.NewTicker(l.interval)
	defer report.Stop()
	// One Record for the goroutine's life: write takes its address, which
	// would otherwise move a fresh one to the heap per record.
	var r Record
	for {
		select {
		case <-poll.C:
			l.drain(&r)
		case <-report.C:
			l.drain(&r)
			l.summary("records dropped")
		case <-l.done:
			l.drain(&r)
			l.closing()
			return
		}
	}
}

// drain writes what is buffered now; at most one buffer's worth, so that
// under sustained load the loop still gets to report and to stop.
func (l *Logger) drain(r *Record) {
	for range cap(l.ch) {
		select {
		case *r = <-l.ch:
			l.write(r)
		default:
			return
		}
	}
}

func (l *Logger) write(r *Record) {
	acc, lim := l.accounted+1+r.Lost, l.limitReported+r.RateLimited
	l.writing(r.Seq, r.Time, acc, lim)
	before := l.out.errs.Load()
	l.rd.Fields(l.zl.Log(), r).Send()
	ok := l.out.errs.Load() == before
	l.wrote(ok, acc, lim)
	if ok {
		l.written.Add(1)
		return
	}
	// Refused: this record is lost, and the counts it carried must
	// ride on a later one.
	l.lost.Add(1)
	l.pendLost.Add(r.Lost + 1)
	if r.RateLimited > 0 {
		l.pendLimited.Add(r.RateLimited)
	}
}

// writing and wrote keep the accounting of what the written lines hold
// (and the state file's copy of it) around one line; acc and lim are the
// totals once it is written.
func (l *Logger) writing(seq uint64, t int64, acc, lim uint64) {
	if l.state != nil {
		l.state.writing(seq, t, acc, lim)
	}
}

func (l *Logger) wrote(ok bool, acc, lim uint64) {
	if ok {
		l.accounted, l.limitReported = acc, lim
	}
	if l.state != nil {
		l.state.written(ok)
	}
}

// summary writes the pending counts no record has carried yet.
func (l *Logger) summary(msg string) {
	lost, limited := l.pendLost.Swap(0), l.pendLimited.Swap(0)
	if lost == 0 && limited == 0 {
		return
	}
	now := time.Now().UTC()
	e := l.zl.Log().Str("time", now.Format(time.RFC3339Nano))
	if l.rd.Node != "" {
		e = e.Str("node", l.rd.Node)
	}
	if l.rd.Run != "" {
		e = e.Str("run", l.rd.Run)
	}
	if lost > 0 {
		e = e.Uint64("lost", lost)
	}
	if limited > 0 {
		e = e.Uint64("rate_limited", limited)
	}
	acc, lim := l.accounted+lost, l.limitReported+limited
	l.writing(0, now.UnixNano(), acc, lim)
	before := l.out.errs.Load()
	e.Str("message", msg).Send()
	ok := l.out.errs.Load() == before
	l.wrote(ok, acc, lim)
	if !ok {
		// Not written: report it with the next line instead.
		l.pendLost.Add(lost)
		l.pendLimited.Add(limited)
	}
}

// closing writes the run's last line: what is still pending, and the last
// sequence number, so that the next run can tell this one ended cleanly.
func (l *Logger) closing() {
	if l.rd.Run == "" {
		// No run to name: only what is pending, as at every report.
		l.summary(ClosedMessage)
		return
	}
	now := time.Now().UTC()
	e := l.zl.Log().Str("time", now.Format(time.RFC3339Nano))
	if l.rd.Node != "" {
		e = e.Str("node", l.rd.Node)
	}
	e = e.Str("run", l.rd.Run)
	lost, limited := l.pendLost.Swap(0), l.pendLimited.Swap(0)
	if lost > 0 {
		e = e.Uint64("lost", lost)
	}
	if limited > 0 {
		e = e.Uint64("rate_limited", limited)
	}
	acc, lim := l.accounted+lost, l.limitReported+limited
	l.writing(0, now.UnixNano(), acc, lim)
	before := l.out.errs.Load()
	e.Uint64("last_seq", l.seq.Load()).Str("message", ClosedMessage).Send()
	ok := l.out.errs.Load() == before
	l.wrote(ok, acc, lim)
	if l.state != nil && ok {
		// Closed only if the closing line is there: otherwise the next
		// run reports this one as unclean, with what it lost.
		l.state.closed()
	}
}

// Close writes every record already accepted, a final summary of what was
// dropped, and stops the writer. Call it after the last OnVerdict has
// returned; later calls are counted as lost.
func (l *Logger) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		close(l.done)
	})
	<-l.finished
	if e := l.out.errs.Load(); e > 0 {
		return fmt.Errorf("flowlog: %d lines could not be written: %w", e, l.out.lastErr())
	}
	return nil
}

// Stats returns the running totals.
func (l *Logger) Stats() Stats {
	return Stats{
		Written:     l.written.Load(),
		Lost:        l.lost.Load(),
		RateLimited: l.limited.Load(),
		WriteErrors: l.out.errs.Load(),
	}
}

// countingWriter remembers write failures: zerolog would otherwise only
// print them to stderr.
type countingWriter struct {
	w    io.Writer
	errs atomic.Uint64
	mu   sync.Mutex
	last error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		c.mu.Lock()
		c.last = err
		c.mu.Unlock()
		c.errs.Add(1)
		// Counted and reported in the log itself (Logger.write); handed
		// on, zerolog would print a line to stderr per refused record,
		// at the verdict rate while a disk is full.
		return len(p), nil
	}
	return n, err
}

func (c *countingWriter) lastErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// OpenSink opens the flow log's destination: "-" or "" is stdout (not
// closed by the returned Closer), anything else a RotatingFile.
func OpenSink(path string, maxBytes int64, keep int) (io.WriteCloser, error) {
	if path == "" || path == "-" {
		return nopCloser{os.Stdout}, nil
	}
	return OpenRotating(path, maxBytes, keep)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
