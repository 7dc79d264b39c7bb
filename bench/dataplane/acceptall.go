package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nfqpolicy/nfqpolicy/dataplane"
)

// acceptAllCmd is the hidden first argument that makes this binary the
// accept-everything queue reader of phase (b). It runs as a process of its
// own, like the agent, so that (b) and (c) differ only in what answers the
// queue.
const acceptAllCmd = "__acceptall"

// acceptAllMark is the mark the accept-all reader's repeat verdict sets.
const acceptAllMark = 0x10000

// runAcceptAll binds queues base..base+n-1 of the current network
// namespace with the agent's options (GSO, copy range 128, the same queue
// length and socket buffer), accepts every packet (with VERDICT repeat:
// answers NF_REPEAT with acceptAllMark, for a rule to accept on the second
// pass, as the agent's rules do), prints "ready" once
// bound and its counts when SIGTERM or SIGINT ends it. It times each
// packet the way the agent's reader does (hook entry to verdict sent), so
// that the agent's figure has a reference with no decision in it; SIGUSR1
// drops the samples so far and is acknowledged with "reset".
func runAcceptAll(args []string, stdout, stderr io.Writer) int {
	if len(args) != 3 || (args[2] != "accept" && args[2] != "repeat") {
		fmt.Fprintf(stderr, "%s: want QUEUE_BASE QUEUES accept|repeat\n", acceptAllCmd)
		return 2
	}
	repeat := args[2] == "repeat"
	base, err1 := strconv.ParseUint(args[0], 10, 16)
	n, err2 := strconv.ParseUint(args[1], 10, 16)
	if err := errors.Join(err1, err2); err != nil || n == 0 || base+n-1 > 65535 {
		fmt.Fprintf(stderr, "%s: bad queue range %q %q: %v\n", acceptAllCmd, args[0], args[1], err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	var accepted, noBufs, failed atomic.Uint64
	var queues []*nfqueue.Nfqueue
	var recs []*latencyRecord
	defer func() {
		for _, q := range queues {
			_ = q.Close()
		}
	}()
	for q := uint16(base); q < uint16(base+n); q++ {
		nf, err := nfqueue.Open(&nfqueue.Config{
			NfQueue:      q,
			MaxQueueLen:  dataplane.DefaultMaxQueueLen,
			MaxPacketLen: dataplane.CopyRange,
			Copymode:     nfqueue.NfQnlCopyPacket,
			Flags:        nfqueue.NfQaCfgFlagGSO,
			AfFamily:     unix.AF_INET,
		})
		if err != nil {
			fmt.Fprintf(stderr, "%s: open queue %d: %v\n", acceptAllCmd, q, err)
			return 1
		}
		queues = append(queues, nf)
		// The agent's reader enlarges its buffer the same way.
		_ = nf.Con.SetReadBuffer(4 << 20)
		rec := &latencyRecord{}
		recs = append(recs, rec)
		hook := func(a nfqueue.Attribute) int {
			start := time.Now()
			if a.PacketID == nil {
				return 0
			}
			var err error
			if repeat {
				err = nf.SetVerdictWithOption(*a.PacketID, nfqueue.NfRepeat, nfqueue.WithMark(acceptAllMark))
			} else {
				err = nf.SetVerdict(*a.PacketID, nfqueue.NfAccept)
			}
			if err != nil {
				failed.Add(1)
				return 0
			}
			accepted.Add(1)
			rec.add(time.Since(start))
			return 0
		}
		onErr := func(err error) int {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return 1
			}
			var op *netlink.OpError
			if errors.As(err, &op) && op.Timeout() {
				return 0
			}
			if errors.Is(err, unix.ENOBUFS) {
				noBufs.Add(1)
				return 0
			}
			failed.Add(1)
			return 0
		}
		if err := nf.RegisterWithErrorFunc(ctx, hook, onErr); err != nil {
			fmt.Fprintf(stderr, "%s: bind queue %d: %v\n", acceptAllCmd, q, err)
			return 1
		}
	}
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	fmt.Fprintln(stdout, "ready")
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-usr1:
			for _, r := range recs {
				r.reset()
			}
			runtime.ReadMemStats(&ms0)
			fmt.Fprintln(stdout, "reset")
		}
	}
	for _, q := range queues {
		_ = q.Close()
	}
	queues = nil
	var lat []time.Duration
	for _, r := range recs {
		lat = append(lat, r.take()...)
	}
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	var s summary
	if len(lat) > 0 {
		s, _ = summarize(lat)
	}
	fmt.Fprintf(stdout, "accepted %d enobufs %d errors %d latency_ns n %d p50 %d p90 %d p99 %d max %d mallocs %d gcs %d\n",
		accepted.Load(), noBufs.Load(), failed.Load(), s.n, s.p50, s.p90, s.p99, s.max, ms1.Mallocs-ms0.Mallocs, ms1.NumGC-ms0.NumGC)
	return 0
}

// latencyRecord holds one queue's per-packet times. Its reader appends;
// the main goroutine resets and takes, hence the lock (uncontended on the
// packet path).
type latencyRecord struct {
	mu sync.Mutex
	xs []time.Duration
}

// maxLatencySamples bounds the memory of a long run.
const maxLatencySamples = 1 << 20

func (r *latencyRecord) add(d time.Duration) {
	r.mu.Lock()
	if len(r.xs) < maxLatencySamples {
		r.xs = append(r.xs, d)
	}
	r.mu.Unlock()
}

func (r *latencyRecord) reset() {
	r.mu.Lock()
	r.xs = r.xs[:0]
	r.mu.Unlock()
}

func (r *latencyRecord) take() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.xs...)
}

// acceptAllProc is the running child of phase (b).
type acceptAllProc struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan error
	stderr strings.Builder
}

// startAcceptAll starts this binary as the accept-all reader inside ns and
// returns once it has bound its queues.
func startAcceptAll(ctx context.Context, sp *spawner, ns *netNS, base, n int, verdict string) (*acceptAllProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("accept-all reader: find this binary: %w", err)
	}
	p := &acceptAllProc{lines: make(chan string, 4), exited: make(chan error, 1)}
	p.cmd = exec.Command("ip", "netns", "exec", ns.Name, self, acceptAllCmd, strconv.Itoa(base), strconv.Itoa(n), verdict)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("accept-all reader: %w", err)
	}
	if err := sp.start(p.cmd); err != nil {
		return nil, fmt.Errorf("accept-all reader: %w", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.exited <- p.cmd.Wait()
	}()
	select {
	case l, ok := <-p.lines:
		if ok && l == "ready" {
			return p, nil
		}
		_, _ = p.stop()
		return nil, fmt.Errorf("accept-all reader did not start (%q): %s", l, strings.TrimSpace(p.stderr.String()))
	case <-ctx.Done():
		_, _ = p.stop()
		return nil, ctx.Err()
	case <-time.After(10 * time.Second):
		_, _ = p.stop()
		return nil, errors.New("accept-all reader: not ready in 10s")
	}
}

// acceptAllCounts is what the child reports when it stops.
type acceptAllCounts struct {
	accepted, noBufs, errors uint64
	// mallocs and gcs since the last reset: go-nfqueue's allocations
	// per packet and the collections they cause.
	mallocs, gcs uint64
	// latency is the reader-side time per packet since the last reset.
	latency summary
}

// reset asks the child to drop its latency samples and waits until it
// has.
func (p *acceptAllProc) reset() error {
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return fmt.Errorf("accept-all reader: %w", err)
	}
	select {
	case l, ok := <-p.lines:
		if ok && l == "reset" {
			return nil
		}
		return fmt.Errorf("accept-all reader: got %q, want reset", l)
	case <-time.After(5 * time.Second):
		return errors.New("accept-all reader: no reset acknowledgement in 5s")
	}
}

// stop ends the child and returns its counts.
func (p *acceptAllProc) stop() (acceptAllCounts, error) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	var last string
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if ok {
				last = l
				continue
			}
			err := <-p.exited
			var c acceptAllCounts
			ls := &c.latency
			if _, serr := fmt.Sscanf(last, "accepted %d enobufs %d errors %d latency_ns n %d p50 %d p90 %d p99 %d max %d mallocs %d gcs %d",
				&c.accepted, &c.noBufs, &c.errors, &ls.n, &ls.p50, &ls.p90, &ls.p99, &ls.max, &c.mallocs, &c.gcs); serr != nil {
				return c, errors.Join(err, fmt.Errorf("accept-all reader: no final counts (%q): %s", last, strings.TrimSpace(p.stderr.String())))
			}
			return c, err
		case <-timeout:
			_ = p.cmd.Process.Kill()
			return acceptAllCounts{}, errors.New("accept-all reader ignored SIGTERM for 5s and was killed")
		}
	}
}
