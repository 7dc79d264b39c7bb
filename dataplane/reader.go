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
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
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

// Reader answers the packets of one NFQUEUE queue. Its hook runs on the
// single goroutine go-nfqueue reads the socket with, so the decoder and
// the precomputed verdict options need no locking.
type Reader struct {
	cfg      ReaderConfig
	nf       *nfqueue.Nfqueue
	dec      Decoder
	counters Counters
	ctx      context.Context
	cancel   context.CancelFunc
	debug    bool

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
		send:   newNFSender(nf, cfg.AllowMark, cfg.DenyMark),
	}
	if rsr, ok := cfg.Decider.(rulesetter); ok {
		r.ruleset = rsr.Ruleset
	}
	if err := nf.RegisterWithErrorFunc(rctx, r.handle, r.onError); err != nil {
		cancel()
		nf.Close()
		return nil, fmt.Errorf("bind nfqueue %d: %w", cfg.Queue, explainErrno(err, true))
	}
	return r, nil
}

// Close unbinds the queue and waits for the reader goroutine to end. From
// then on the kernel drops (or with --queue-bypass accepts) what the rules
// queue here; established, marked flows are not affected.
func (r *Reader) Close() error {
	r.cancel()
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

// nfSender sends verdicts on the queue's socket.
type nfSender struct {
	nf                  *nfqueue.Nfqueue
	allowMark, denyMark uint32
	// Options for packets that carried no other mark bits, the common
	// case, built once so that answering them allocates only inside
	// go-nfqueue.
	allowOpt, denyOpt nfqueue.VerdictOption
}

func newNFSender(nf *nfqueue.Nfqueue, allow, deny uint32) *nfSender {
	return &nfSender{nf: nf, allowMark: allow, denyMark: deny, allowOpt: nfqueue.WithMark(allow), denyOpt: nfqueue.WithMark(deny)}
}

func (s *nfSender) repeat(id, mark uint32) error {
	var opt nfqueue.VerdictOption
	switch mark {
	case s.allowMark:
		opt = s.allowOpt
	case s.denyMark:
		opt = s.denyOpt
	default:
		opt = nfqueue.WithMark(mark)
	}
	return s.nf.SetVerdictWithOption(id, nfqueue.NfRepeat, opt)
}

func (s *nfSender) final(id uint32, verdict int) error { return s.nf.SetVerdict(id, verdict) }

// malformed is the verdict for a packet that could not be decoded.
var malformed = filter.Verdict{
	Egress:  filter.Side{Decision: filter.Malformed, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
	Ingress: filter.Side{Decision: filter.Malformed, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
}

// handle answers one packet. It is the hot path: no allocation beyond what
// go-nfqueue does for parsing and sending, no logging unless at debug.
func (r *Reader) handle(a nfqueue.Attribute) int {
	start := time.Now()
	r.consecutiveErrs = 0
	if a.PacketID == nil {
		// Nothing to answer; the kernel will keep the packet until the
		// queue is unbound. Never seen in practice.
		r.counters.RecvErrors.Add(1)
		return 0
	}
	id := *a.PacketID
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
	var pkt []byte
	if a.Payload != nil {
		pkt = *a.Payload
	}
	var pktMark uint32
	if a.Mark != nil {
		pktMark = *a.Mark
	}

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
	return 0
}

// onError decides whether the reader goes on after a socket error. Only a
// closed socket or a cancelled context stops it; everything else (above
// all ENOBUFS: the socket buffer overflowed and the kernel dropped queued
// packets, which the senders will retransmit) is counted and survived.
func (r *Reader) onError(err error) int {
	if r.ctx.Err() != nil || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		return 1
	}
	var op *netlink.OpError
	if errors.As(err, &op) && op.Timeout() {
		return 0
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
