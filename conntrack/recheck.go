package conntrack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// batchSize is how many deletes share one sendmsg: about 100 bytes each,
// so a batch stays far below the socket's send buffer.
const batchSize = 256

// Stats describes one recheck.
type Stats struct {
	// Checked counts the marked entries decided (an entry the kernel's dump
	// repeats, which it may when entries are deleted under it, counts
	// twice).
	Checked int
	// Cut counts the entries deleted because their verdict flipped.
	Cut int
	// Vanished counts the entries whose verdict flipped but that were gone
	// by the time of the delete (the connection ended, or the tuple
	// belongs to a newer connection).
	Vanished int
	// Malformed counts entries that could not be read; they are kept.
	Malformed int
	Duration  time.Duration
}

// Counters are the Rechecker's totals since it was made.
type Counters struct {
	Rechecks       uint64        `json:"rechecks"`
	Cuts           uint64        `json:"cuts"`
	Errors         uint64        `json:"errors"`
	LastChecked    uint64        `json:"last_checked"`
	LastDuration   time.Duration `json:"last_duration_ns"`
	LastDurationMS float64       `json:"last_duration_ms"`
}

// Rechecker re-decides marked conntrack entries against a Ruleset and
// deletes those whose verdict flipped. Its methods are safe for concurrent
// use; rechecks run one at a time.
type Rechecker struct {
	marks Marks
	log   zerolog.Logger

	// run is Recheck; the coalescing tests replace it.
	run func(ctx context.Context, rs *filter.Ruleset) (Stats, error)
	// observe sees every recheck's outcome (metrics); guarded by mu.
	observe func(Stats, error)

	mu      sync.Mutex // one recheck at a time; guards the sockets and buffers
	netns   *nsHandle  // where the sockets are opened
	dumpSk  *nlSocket
	delSk   *nlSocket
	dumpBuf []byte
	ackBuf  []byte
	batches [3]deleteBatch

	// OnSwap's coalescing state.
	swapMu  sync.Mutex
	pending *filter.Ruleset
	running bool
	closed  bool
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc

	rechecks, cuts, errs, lastChecked atomic.Uint64
	lastDuration                      atomic.Int64
}

// NewRechecker returns a Rechecker for the dataplane's connmark values
// (markDeny 0: denials are never saved in the connmark, so only allowed
// entries are rechecked). It works in the network namespace of the calling
// thread: it opens its netlink sockets there right away, and reopens them
// there when needed; if opening fails it logs and tries again at the next
// recheck. Only invalid marks are an error.
func NewRechecker(markAllow, markDeny, mask uint32, log zerolog.Logger) (*Rechecker, error) {
	m := Marks{Allow: markAllow, Deny: markDeny, Mask: mask}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Rechecker{
		marks:   m,
		log:     log.With().Str("component", "conntrack-recheck").Logger(),
		dumpBuf: make([]byte, recvBufSize),
		ackBuf:  make([]byte, recvBufSize),
		ctx:     ctx,
		cancel:  cancel,
	}
	r.run = r.Recheck
	for i := range r.batches {
		r.batches[i].buf = make([]byte, 0, batchSize*128)
	}
	r.mu.Lock()
	ns, err := pinNetns()
	if err != nil {
		// Without /proc the sockets open wherever the reopening thread
		// is, which in an agent process is its one namespace.
		r.log.Warn().Err(err).Msg("cannot pin the network namespace")
	}
	r.netns = ns
	if err := r.openLocked(); err != nil {
		r.log.Error().Err(err).Msg("conntrack netlink unavailable; will retry at the next policy change")
	}
	r.mu.Unlock()
	if b, err := os.ReadFile(tcpLooseSysctl); err == nil && strings.TrimSpace(string(b)) == "0" {
		// Without loose pickup the packet after a delete is INVALID, not
		// NEW: it is not queued, and unless something drops INVALID (the
		// iptables kube-proxy's KUBE-FORWARD does, unless
		// nf_conntrack_tcp_be_liberal is set) a cut TCP connection flows on.
		r.log.Warn().Str("sysctl", tcpLooseSysctl).
			Msg("nf_conntrack_tcp_loose is 0: cut TCP connections are stopped only if INVALID packets are dropped")
	}
	return r, nil
}

// tcpLooseSysctl decides whether a mid-stream TCP packet without a
// conntrack entry starts a NEW one (1, the default) or is INVALID (0).
const tcpLooseSysctl = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"

func (r *Rechecker) openLocked() error {
	if r.dumpSk == nil {
		s, err := openSocketIn(r.netns)
		if err != nil {
			return err
		}
		r.dumpSk = s
	}
	if r.delSk == nil {
		s, err := openSocketIn(r.netns)
		if err != nil {
			return err
		}
		r.delSk = s
	}
	return nil
}

// Close stops a running recheck (it ends at its next receive), waits for
// it and closes the sockets. OnSwap does nothing afterwards.
func (r *Rechecker) Close() error {
	r.swapMu.Lock()
	r.closed = true
	r.swapMu.Unlock()
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dumpSk.close()
	r.delSk.close()
	r.dumpSk, r.delSk = nil, nil
	r.netns.close()
	r.netns = nil
	return nil
}

// SetObserver has fn called after every recheck with its outcome (e.g. to
// feed metrics). fn runs on the recheck's goroutine and must not block.
func (r *Rechecker) SetObserver(fn func(Stats, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.observe = fn
}

// Counters returns the totals so far.
func (r *Rechecker) Counters() Counters {
	d := time.Duration(r.lastDuration.Load())
	return Counters{
		Rechecks:       r.rechecks.Load(),
		Cuts:           r.cuts.Load(),
		Errors:         r.errs.Load(),
		LastChecked:    r.lastChecked.Load(),
		LastDuration:   d,
		LastDurationMS: float64(d.Microseconds()) / 1000,
	}
}

// OnSwap is the agent's hook: it starts a recheck against new in the
// background and returns at once. Swaps that arrive while a recheck runs
// are coalesced: when it ends, one more recheck runs against the latest
// Ruleset, however many swaps came meanwhile.
func (r *Rechecker) OnSwap(_, new *filter.Ruleset) {
	if new == nil {
		return
	}
	r.swapMu.Lock()
	defer r.swapMu.Unlock()
	if r.closed {
		return
	}
	r.pending = new
	if r.running {
		return
	}
	r.running = true
	r.wg.Add(1)
	go r.loop()
}

func (r *Rechecker) loop() {
	defer r.wg.Done()
	for {
		r.swapMu.Lock()
		rs := r.pending
		r.pending = nil
		if rs == nil || r.closed {
			r.running = false
			r.swapMu.Unlock()
			return
		}
		r.swapMu.Unlock()
		// Errors are counted and logged by Recheck; the agent goes on
		// enforcing new flows whatever happens here.
		_, _ = r.run(r.ctx, rs)
	}
}

// Recheck decides every entry carrying our allow (and, if set, deny) mark
// against rs and deletes those whose verdict flipped.
//
// Deleting is the whole cut, on purpose. Clearing the connmark alone would
// leave an ESTABLISHED entry whose packets our rules no longer match (only
// NEW packets are queued), so they would fall through to the chain's
// default and pass. Clearing and then deleting adds a netlink round trip
// per entry for nothing: the delete alone makes the next packet NEW, it is
// queued and gets the new verdict (a denied one is dropped or rejected and
// the connection stalls or resets). Packets already past the connmark rule
// when the entry goes are the only ones that slip through.
func (r *Rechecker) Recheck(ctx context.Context, rs *filter.Ruleset) (Stats, error) {
	if rs == nil {
		return Stats{}, errors.New("recheck: no ruleset")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	st, err := r.recheckLocked(ctx, rs)
	st.Duration = time.Since(start)

	r.rechecks.Add(1)
	r.cuts.Add(uint64(st.Cut))
	r.lastChecked.Store(uint64(st.Checked))
	r.lastDuration.Store(int64(st.Duration))
	ev := r.log.Info()
	if err != nil {
		r.errs.Add(1)
		ev = r.log.Error().Err(err)
	}
	ev.Int("checked", st.Checked).Int("cut", st.Cut).Int("vanished", st.Vanished).
		Int("malformed", st.Malformed).Dur("duration", st.Duration).Msg("established flows rechecked")
	if r.observe != nil {
		r.observe(st, err)
	}
	return st, err
}

func (r *Rechecker) recheckLocked(ctx context.Context, rs *filter.Ruleset) (Stats, error) {
	var st Stats
	if r.ctx.Err() != nil {
		return st, errors.New("recheck: rechecker closed")
	}
	if err := r.openLocked(); err != nil {
		return st, err
	}

	// Deletes go out from a goroutine of their own, so that the kernel
	// work of deleting (in its sendmsg) overlaps the kernel work of
	// dumping (in the dumper's recvmsg). Batches circulate between the
	// two; the dumper blocks only when all of them are in flight.
	full := make(chan *deleteBatch, len(r.batches))
	free := make(chan *deleteBatch, len(r.batches))
	for i := range r.batches {
		free <- &r.batches[i]
	}
	done := make(chan deleteResult, 1)
	go func() {
		var tot deleteResult
		for b := range full {
			res := r.delSk.flush(b, r.ackBuf)
			tot.deleted += res.deleted
			tot.vanished += res.vanished
			tot.failed += res.failed
			if tot.err == nil {
				tot.err = res.err
			}
			free <- b
		}
		done <- tot
	}()

	var malformedErr error
	var e entry
	var seq uint32
	cur := <-free
	decide := func(family uint8, attrs []byte) error {
		if err := parseEntry(family, attrs, &e); err != nil {
			st.Malformed++
			if malformedErr == nil {
				malformedErr = err
			}
			return nil
		}
		st.Checked++
		if !shouldCut(rs, r.marks, &e) {
			return nil
		}
		// The entry's bytes live in the dump buffer until the next
		// receive; add copies them into the batch.
		seq++
		cur.add(&e, seq)
		if cur.n >= batchSize {
			full <- cur
			cur = <-free
		}
		return nil
	}
	marks := []uint32{r.marks.Allow}
	if r.marks.Deny != 0 {
		marks = append(marks, r.marks.Deny)
	}
	var dumpErr error
	for _, m := range marks {
		if err := r.dumpSk.dump(ctx, r.dumpBuf, m, r.marks.Mask, decide); err != nil {
			// The rest of the dump is still queued on the socket; a fresh
			// one is cheaper than draining it.
			r.dumpSk.close()
			r.dumpSk = nil
			dumpErr = fmt.Errorf("recheck mark %#x/%#x: %w", m, r.marks.Mask, err)
			break
		}
	}
	// What was decided is deleted even when the dump broke off.
	full <- cur
	close(full)
	tot := <-done
	st.Cut, st.Vanished = tot.deleted, tot.vanished
	if malformedErr != nil {
		r.log.Warn().Err(malformedErr).Int("malformed", st.Malformed).Msg("conntrack entries kept unread")
	}
	if dumpErr != nil {
		return st, dumpErr
	}
	return st, tot.err
}
