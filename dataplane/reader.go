// Package dataplane reads the first packet of every new flow the kernel
// diverts to NFQUEUE, asks the verdict engine, and answers with a mark the
// kernel rules (package dataplane/iptables) turn into an accept that the
// connection remembers, or a drop/reject.
//
// The mark scheme: this kernel ignores a connmark set through the verdict's
// conntrack attribute, so a verdict is NF_REPEAT with the packet mark set to
// the allow or deny value (other mark bits preserved). The packet re-enters
// the hook from the top; a rule above the NFQUEUE rule sees the mark, saves
// an allow into the connmark and accepts, or drops/rejects a deny. Every
// later packet of an allowed connection matches the connmark in the kernel
// and never reaches userspace.
//
// Each queue has one goroutine that reads its socket with blocking system
// calls, decides on the spot and answers all packets of a read with one
// write: the kernel wakes that goroutine's thread directly, with no
// hand-off through the Go netpoller and no allocation per packet
// (docs/performance.md has the measurements behind this).
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Decider decides flows; *filter.Engine implements it.
type Decider interface {
	Decide(f filter.Flow) filter.Verdict
}

// Decoder reads the flow out of a packet starting at its IP header;
// *filter.Decoder implements it. A reader owns one, so it need not be safe
// for concurrent use.
type Decoder interface {
	Decode(pkt []byte) (filter.Flow, error)
}

// Observer sees every decision a reader makes, after the verdict has been
// sent (so a slow observer delays the next packet of its queue, never this
// one). pkt is the copied head of the packet (up to the copy range) and
// must not be retained after OnVerdict returns. f is the zero Flow when the
// packet could not be decoded (v's sides are then Malformed). at is when
// the reader received the packet: the clock is read once per packet for
// every observer, since a read costs about as much as a decision. Flow
// logs, packet capture and metrics plug in here.
type Observer interface {
	OnVerdict(f filter.Flow, v filter.Verdict, pkt []byte, at time.Time, latency time.Duration)
}

// CopyRange is how many bytes of each packet the kernel copies to us: the
// IP header, IPv6 extension headers and the transport ports fit, payload
// is none of our business.
const CopyRange = 128

// DefaultMaxQueueLen is how many packets may wait in one queue for a
// verdict before the kernel drops (or, fail-open, accepts) new ones.
const DefaultMaxQueueLen = 8192

// ReaderConfig configures one queue reader.
type ReaderConfig struct {
	Queue uint16
	// MaxQueueLen is the kernel-side queue length (0: DefaultMaxQueueLen).
	MaxQueueLen uint32
	// FailOpen asks the kernel to accept, rather than drop, packets that
	// do not fit in a full queue.
	FailOpen bool
	// AllowMark, DenyMark and MarkMask are the packet mark bits the rules
	// expect (iptables.Marks).
	AllowMark, DenyMark, MarkMask uint32
	// NetNS, when non-zero, is a network namespace file descriptor to open
	// the queue in (tests); 0 means the caller's namespace.
	NetNS int
	// Decider decides; NewDecoder makes the reader's own decoder.
	Decider    Decider
	NewDecoder func() Decoder
	// Observer, if not nil, sees every decision.
	Observer Observer
	// Audit accepts every packet while still deciding and reporting it
	// (--mode audit: roll nfqpolicy out on a node without cutting
	// anything; the observers see the real verdicts).
	Audit bool
	// ReadBuffer is the netlink socket receive buffer in bytes (0: 4 MiB).
	// Too small and the kernel drops queued packets with ENOBUFS under a
	// burst of new flows.
	ReadBuffer int
	Log        zerolog.Logger
}

// Reader answers the packets of one NFQUEUE queue. One goroutine reads
// the queue's socket and decides, so the decoder and the verdict buffer
// need no locking.
type Reader struct {
	cfg      ReaderConfig
	nf       *nfqueue.Nfqueue
	dec      Decoder
	counters Counters
	ctx      context.Context
	cancel   context.CancelFunc
	debug    bool
	// done is closed when the reading goroutine has ended.
	done chan struct{}

	send sender
	// consecutiveErrs throttles a socket that keeps failing.
	consecutiveErrs int
	// ruleset, when the Decider can tell, names the Ruleset in force, so
	// that a malformed verdict carries one like every other verdict.
	ruleset func() *filter.Ruleset
}

// rulesetter is implemented by *filter.Engine.
type rulesetter interface{ Ruleset() *filter.Ruleset }

// Open binds queue cfg.Queue and starts answering its packets until ctx is
// done or Close is called. It fails when the queue cannot be bound (no
// CAP_NET_ADMIN, or another process owns the queue: both EPERM).
func Open(ctx context.Context, cfg ReaderConfig) (*Reader, error) {
	if cfg.Decider == nil || cfg.NewDecoder == nil {
		return nil, errors.New("reader: Decider and NewDecoder are required")
	}
	if m := cfg.MarkMask; cfg.AllowMark == 0 || cfg.DenyMark == 0 || cfg.AllowMark == cfg.DenyMark || cfg.AllowMark&^m != 0 || cfg.DenyMark&^m != 0 {
		return nil, fmt.Errorf("reader: marks allow %#x, deny %#x, mask %#x: want distinct non-zero values inside the mask", cfg.AllowMark, cfg.DenyMark, cfg.MarkMask)
	}
	if cfg.MaxQueueLen == 0 {
		cfg.MaxQueueLen = DefaultMaxQueueLen
	}
	if cfg.ReadBuffer == 0 {
		cfg.ReadBuffer = 4 << 20
	}
	// GSO: hand us GSO super-packets unsegmented (we read only the head).
	// Deliberately not NfQaCfgFlagConntrack: binding with it fails here.
	flags := uint32(nfqueue.NfQaCfgFlagGSO)
	if cfg.FailOpen {
		flags |= nfqueue.NfQaCfgFlagFailOpen
	}
	nf, err := nfqueue.Open(&nfqueue.Config{
		NetNS:        cfg.NetNS,
		NfQueue:      cfg.Queue,
		MaxQueueLen:  cfg.MaxQueueLen,
		MaxPacketLen: CopyRange,
		Copymode:     nfqueue.NfQnlCopyPacket,
		Flags:        flags,
		AfFamily:     unix.AF_INET, // the kernel ignores it: one queue carries both families
	})
	if err != nil {
		return nil, fmt.Errorf("open nfqueue %d: %w", cfg.Queue, explainErrno(err, false))
	}
	if err := nf.Con.SetReadBuffer(cfg.ReadBuffer); err != nil {
		cfg.Log.Warn().Err(err).Uint16("queue", cfg.Queue).Msg("cannot enlarge the nfqueue socket buffer; bursts may overflow it")
	}
	rctx, cancel := context.WithCancel(ctx)
	r := &Reader{
		cfg:    cfg,
		nf:     nf,
		dec:    cfg.NewDecoder(),
		ctx:    rctx,
		cancel: cancel,
		debug:  cfg.Log.GetLevel() <= zerolog.DebugLevel,
		done:   make(chan struct{}),
	}
	if rsr, ok := cfg.Decider.(rulesetter); ok {
		r.ruleset = rsr.Ruleset
	}
	fd, err := socketFD(nf)
	if err != nil {
		cancel()
		nf.Close()
		return nil, fmt.Errorf("nfqueue %d: %w", cfg.Queue, err)
	}
	r.send = &wireSender{fd: fd, queue: cfg.Queue, buf: make([]byte, 0, verdictLen)}
	bound := make(chan error, 1)
	go r.loop(fd, configMsg(cfg.Queue, bindSeq, nfqueue.NfQnlCopyPacket, CopyRange, cfg.MaxQueueLen, flags), bound)
	var berr error
	select {
	case berr = <-bound:
	case <-time.After(bindTimeout):
		berr = fmt.Errorf("no answer from the kernel in %v", bindTimeout)
	}
	if berr != nil {
		cancel()
		<-r.done
		nf.Close()
		return nil, fmt.Errorf("bind nfqueue %d: %w", cfg.Queue, explainErrno(berr, true))
	}
	return r, nil
}

// bindTimeout bounds the wait for the kernel's answer to the bind.
const bindTimeout = 5 * time.Second

// bindSeq is the sequence number of the configuration message, which the
// kernel's acknowledgement carries back.
const bindSeq = 1

// recvTimeout bounds each blocking read, so that the reading goroutine
// sees Close within this time.
const recvTimeout = 100 * time.Millisecond

// socketFD returns the descriptor of go-nfqueue's netlink socket, switched
// to blocking reads with a timeout: the reading goroutine's thread then
// sleeps in the kernel until a packet arrives, and the kernel wakes it
// directly instead of going through the Go netpoller (a wake-up of the
// netpoller's thread, a hand-off to the goroutine and, with several Ps,
// more threads spinning for work; docs/performance.md). Only the reader
// uses the socket from here on; go-nfqueue merely closes it.
func socketFD(nf *nfqueue.Nfqueue) (int, error) {
	rc, err := nf.Con.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("netlink socket: %w", err)
	}
	fd := -1
	var serr error
	if err := rc.Control(func(f uintptr) {
		fd = int(f)
		tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
		serr = errors.Join(unix.SetNonblock(fd, false), unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	}); err != nil {
		return 0, fmt.Errorf("netlink socket: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("netlink socket: blocking reads: %w", serr)
	}
	return fd, nil
}

// readBufferLen is far more than one message (a packet with CopyRange
// 128 is about 200 bytes); a read returns one.
const readBufferLen = 16 << 10

// loop reads the queue until the reader is closed: first the kernel's
// answer to the configuration message cfg (sent to bound), then packets,
// each decided and answered before the next read.
func (r *Reader) loop(fd int, cfg []byte, bound chan<- error) {
	defer close(r.done)
	if _, err := unix.Write(fd, cfg); err != nil {
		bound <- err
		return
	}
	buf := make([]byte, readBufferLen)
	for {
		if r.ctx.Err() != nil {
			if bound != nil {
				bound <- r.ctx.Err()
			}
			return
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue // the receive timeout: look at ctx
			}
			if r.onError(err) != 0 {
				if bound != nil {
					bound <- err
				}
				return
			}
			continue
		}
		rest := buf[:n]
		for len(rest) > 0 {
			m, next, err := nextMessage(rest)
			if err != nil {
				r.counters.RecvErrors.Add(1)
				break
			}
			rest = next
			switch m.typ {
			case nfnlSubsysQueue<<8 | nfqnlMsgPacket:
				if len(m.body) < nfgenHdrLen {
					r.counters.RecvErrors.Add(1)
					continue
				}
				p, err := parsePacket(m.body[nfgenHdrLen:])
				if err != nil && !p.hasID {
					r.counters.RecvErrors.Add(1)
					continue
				}
				// A packet whose other attributes are damaged still has
				// its id: the decoder denies what it cannot read.
				r.handle(p)
			case unix.NLMSG_ERROR:
				aerr := ackErrno(m.body)
				if bound != nil && m.seq == bindSeq {
					bound <- aerr
					if aerr != nil {
						return
					}
					bound = nil
					continue
				}
				if aerr != nil {
					// The kernel refused a verdict (e.g. the packet id is
					// gone: the queue was flushed).
					r.counters.VerdictErrors.Add(1)
				}
			}
		}
	}
}

// Close stops reading, waits for the reading goroutine to end (up to the
// receive timeout) and closes the socket, which unbinds the queue. From
// then on the kernel drops (or with --queue-bypass accepts) what the rules
// queue here; established, marked flows are not affected.
func (r *Reader) Close() error {
	r.cancel()
	<-r.done
	err := r.nf.Close()
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		err = nil
	}
	return err
}

// Queue is the queue number the reader answers.
func (r *Reader) Queue() uint16 { return r.cfg.Queue }

// Counters returns the reader's live counters.
func (r *Reader) Counters() *Counters { return &r.counters }

// sender issues verdicts; an interface so that tests can see them.
type sender interface {
	// repeat re-injects the packet at the top of its hook with the mark.
	repeat(id, mark uint32) error
	// final settles the packet (NfAccept or NfDrop) without re-injection.
	final(id uint32, verdict int) error
}

// wireSender writes verdicts to the queue's socket from a buffer it
// reuses: none of go-nfqueue's allocations per verdict. Verdicts are not
// batched: a netlink read returns one message (one packet), so batching
// would hold a verdict back for packets not yet read.
type wireSender struct {
	fd    int
	queue uint16
	buf   []byte
}

func (s *wireSender) repeat(id, mark uint32) error {
	s.buf = appendVerdict(s.buf[:0], s.queue, id, nfqueue.NfRepeat, mark, true)
	return s.write()
}

func (s *wireSender) final(id uint32, verdict int) error {
	s.buf = appendVerdict(s.buf[:0], s.queue, id, verdict, 0, false)
	return s.write()
}

func (s *wireSender) write() error {
	for {
		_, err := unix.Write(s.fd, s.buf)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// malformed is the verdict for a packet that could not be decoded.
var malformed = filter.Verdict{
	Egress:  filter.Side{Decision: filter.Malformed, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
	Ingress: filter.Side{Decision: filter.Malformed, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
}

// handle answers one packet. It is the hot path: no allocation, no
// logging unless at debug.
func (r *Reader) handle(a packet) {
	start := time.Now()
	r.consecutiveErrs = 0
	if !a.hasID {
		// Nothing to answer; the kernel will keep the packet until the
		// queue is unbound. Never seen in practice.
		r.counters.RecvErrors.Add(1)
		return
	}
	id := a.id
	// A bug in decoding or deciding must cost one packet, not the node's
	// enforcement: deny it, count it, log it, and read on.
	answered := false
	defer func() {
		if p := recover(); p != nil {
			r.counters.Panics.Add(1)
			if !answered {
				r.counters.Denied.Add(1)
				if err := r.send.final(id, nfqueue.NfDrop); err != nil {
					r.counters.VerdictErrors.Add(1)
				}
			}
			r.cfg.Log.Error().Uint16("queue", r.cfg.Queue).Str("panic", fmt.Sprint(p)).Msg("verdict path panicked; packet dropped")
		}
	}()
	pkt, pktMark := a.payload, a.mark

	f, err := r.dec.Decode(pkt)
	var v filter.Verdict
	if err != nil {
		// A packet we cannot read is denied, never guessed at.
		v = malformed
		if r.ruleset != nil {
			v.Ruleset = r.ruleset()
		}
		f = filter.Flow{}
		r.counters.Malformed.Add(1)
	} else {
		v = r.cfg.Decider.Decide(f)
	}
	// Decision latency ends here: the verdict send below re-injects the
	// packet, and the kernel forwards it inside that call, which is not
	// the decision's cost.
	latency := time.Since(start)

	if ours := pktMark & r.cfg.MarkMask; ours != 0 {
		// Our mark came back to the queue: the rule that should have
		// caught it is missing (someone flushed our chain mid-flight).
		// Repeating would loop forever, so settle it here instead.
		r.counters.Requeued.Add(1)
		verdict := nfqueue.NfDrop
		if (v.Allow || r.cfg.Audit) && ours == r.cfg.AllowMark {
			verdict = nfqueue.NfAccept
		}
		if err := r.send.final(id, verdict); err != nil {
			r.counters.VerdictErrors.Add(1)
		}
	} else {
		m := r.cfg.DenyMark
		if v.Allow || r.cfg.Audit {
			m = r.cfg.AllowMark
		}
		// Keep other people's bits (kube-proxy's 0x4000 masquerade request
		// must survive, or SNAT breaks).
		if err := r.send.repeat(id, pktMark|m); err != nil {
			r.counters.VerdictErrors.Add(1)
		}
	}
	answered = true
	if v.Allow || r.cfg.Audit {
		r.counters.Allowed.Add(1)
	} else {
		r.counters.Denied.Add(1)
	}

	if r.cfg.Observer != nil {
		r.cfg.Observer.OnVerdict(f, v, pkt, start, latency)
	}
	if r.debug {
		ev := r.cfg.Log.Debug().Uint16("queue", r.cfg.Queue).Uint32("id", id).Bool("allow", v.Allow).
			Str("egress", v.Egress.Decision.String()).Str("ingress", v.Ingress.Decision.String()).Dur("latency", latency)
		if err != nil {
			ev = ev.Err(err)
		} else {
			ev = ev.Stringer("src", f.Src).Stringer("dst", f.Dst).Uint8("proto", f.Proto).Uint16("sport", f.SrcPort).Uint16("dport", f.DstPort)
		}
		ev.Msg("verdict")
	}
}

// onError decides whether the reader goes on after a socket error. Only a
// closed socket or a cancelled context stops it; everything else (above
// all ENOBUFS: the socket buffer overflowed and the kernel dropped queued
// packets, which the senders will retransmit) is counted and survived.
func (r *Reader) onError(err error) int {
	if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EBADF) {
		return 1
	}
	if errors.Is(err, unix.ENOBUFS) {
		r.counters.NoBufs.Add(1)
		return 0
	}
	r.counters.RecvErrors.Add(1)
	r.consecutiveErrs++
	if r.consecutiveErrs == 1 || r.consecutiveErrs%1000 == 0 {
		r.cfg.Log.Warn().Err(err).Uint16("queue", r.cfg.Queue).Int("consecutive", r.consecutiveErrs).Msg("nfqueue receive error")
	}
	if r.consecutiveErrs > 100 {
		// A socket failing in a loop must not eat a CPU.
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

// explainErrno adds what to do to the errors a missing privilege or a
// taken queue produce. The kernel answers a bind to a queue another socket
// holds with EPERM, the same error as a missing capability.
func explainErrno(err error, binding bool) error {
	switch {
	case errors.Is(err, unix.EPERM) && binding:
		return fmt.Errorf("%w (another process is bound to this queue: a second agent, or another NFQUEUE user, then pick another --queue-num; or CAP_NET_ADMIN is missing)", err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w (needs CAP_NET_ADMIN)", err)
	}
	return err
}

// Counters are a reader's verdict and error counts. They are atomics so
// the health endpoint reads them while the reader writes.
type Counters struct {
	Allowed, Denied atomic.Uint64
	// Malformed packets are denied and also counted in Denied.
	Malformed atomic.Uint64
	// Requeued: a packet came back with our mark (rules missing).
	Requeued atomic.Uint64
	// VerdictErrors: sending a verdict failed (the kernel drops the packet
	// when the queue is unbound or keeps it queued until then).
	VerdictErrors atomic.Uint64
	// NoBufs: the socket buffer overflowed (ENOBUFS); the kernel dropped
	// the packets it could not deliver.
	NoBufs atomic.Uint64
	// RecvErrors: any other receive error.
	RecvErrors atomic.Uint64
	// Panics: the decoder, decider or observer panicked. A packet not yet
	// answered was dropped (and counted in Denied).
	Panics atomic.Uint64
}

// CounterValues is a snapshot of Counters, for JSON.
type CounterValues struct {
	Allowed       uint64 `json:"allowed"`
	Denied        uint64 `json:"denied"`
	Malformed     uint64 `json:"malformed"`
	Requeued      uint64 `json:"requeued"`
	VerdictErrors uint64 `json:"verdict_errors"`
	NoBufs        uint64 `json:"enobufs"`
	RecvErrors    uint64 `json:"recv_errors"`
	Panics        uint64 `json:"panics"`
}

// Values snapshots c.
func (c *Counters) Values() CounterValues {
	return CounterValues{
		Allowed:       c.Allowed.Load(),
		Denied:        c.Denied.Load(),
		Malformed:     c.Malformed.Load(),
		Requeued:      c.Requeued.Load(),
		VerdictErrors: c.VerdictErrors.Load(),
		NoBufs:        c.NoBufs.Load(),
		RecvErrors:    c.RecvErrors.Load(),
		Panics:        c.Panics.Load(),
	}
}

// Add returns the sum of v and o.
func (v CounterValues) Add(o CounterValues) CounterValues {
	return CounterValues{
		Allowed:       v.Allowed + o.Allowed,
		Denied:        v.Denied + o.Denied,
		Malformed:     v.Malformed + o.Malformed,
		Requeued:      v.Requeued + o.Requeued,
		VerdictErrors: v.VerdictErrors + o.VerdictErrors,
		NoBufs:        v.NoBufs + o.NoBufs,
		RecvErrors:    v.RecvErrors + o.RecvErrors,
		Panics:        v.Panics + o.Panics,
	}
}

// Observers fans each verdict out to several observers, in order (metrics,
// flow log, capture). Nil entries are skipped.
type Observers []Observer

// OnVerdict implements Observer.
func (os Observers) OnVerdict(f filter.Flow, v filter.Verdict, pkt []byte, at time.Time, latency time.Duration) {
	for _, o := range os {
		if o != nil {
			o.OnVerdict(f, v, pkt, at, latency)
		}
	}
}
