// Command dataplane is the dataplane benchmark (`make bench-dataplane`):
// on one network-namespace topology (a node namespace routing between a
// client pod and a server pod of the knp workload) it measures, back to
// back, the rate of new TCP connections with no rules, with an
// accept-everything NFQUEUE reader of its own (the ceiling for any
// userspace verdict) and with `nfqpolicy run` enforcing the workload; the
// throughput of one bulk flow with no rules and with the agent (whose fast
// path keeps all but the first packet in the kernel); and the agent's
// verdict latency on cache misses. It prints the raw figures and, last,
// three summary lines. It exits non-zero only when the harness itself
// fails, never for a missed target.
//
// Everything runs in namespaces named nfqbench-<pid>-*, created and
// deleted here (also on SIGINT; a later run sweeps what a killed run left).
// Nothing is added to the namespace the harness starts in and no packet
// leaves the namespaces. It needs root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfqpolicy/nfqpolicy/e2e"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// Targets, from issue 3.
const (
	targetConnRatio       = 0.90
	targetThroughputRatio = 0.95
	targetP99             = 50 * time.Microsecond
)

// queueBase is the agent's default first queue; the accept-all reader
// uses the same numbers.
const queueBase = 100

type options struct {
	workload     string
	nfqpolicy    string
	duration     time.Duration
	workers      int
	queues       int
	latencyConns int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == acceptAllCmd {
		os.Exit(runAcceptAll(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(cmdMain(os.Args[1:], os.Stdout, os.Stderr))
}

func cmdMain(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("bench/dataplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.workload, "workload", "testdata/bench/knp-workload.yaml", "scenario file with the cluster and the probe to reproduce")
	fs.StringVar(&o.nfqpolicy, "nfqpolicy", "", "agent binary (default: go build ./cmd/nfqpolicy into a temporary directory)")
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "length of each connection-rate and throughput phase")
	fs.IntVar(&o.workers, "workers", 4, "parallel clients of the connection-rate phases")
	fs.IntVar(&o.queues, "queues", runtime.NumCPU(), "NFQUEUE queues of the agent and of the accept-all reader (the agent's default)")
	fs.IntVar(&o.latencyConns, "latency-conns", 2000, "connections of each sequential latency phase (also bounded by -duration)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := o.check(fs.NArg()); err != nil {
		fmt.Fprintf(stderr, "bench/dataplane: %v\n", err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, o, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "bench/dataplane: %v\n", err)
		return 1
	}
	return 0
}

func (o options) check(nargs int) error {
	var errs []error
	if nargs > 0 {
		errs = append(errs, errors.New("no arguments expected"))
	}
	if o.duration < 500*time.Millisecond || o.duration > 5*time.Minute {
		errs = append(errs, fmt.Errorf("-duration %v: want 500ms..5m", o.duration))
	}
	if o.workers < 1 || o.workers > 64 {
		errs = append(errs, fmt.Errorf("-workers %d: want 1..64", o.workers))
	}
	if o.queues < 1 || o.queues > 64 {
		errs = append(errs, fmt.Errorf("-queues %d: want 1..64", o.queues))
	}
	if o.latencyConns < 100 || o.latencyConns > 1_000_000 {
		errs = append(errs, fmt.Errorf("-latency-conns %d: want 100..1000000", o.latencyConns))
	}
	return errors.Join(errs...)
}

// bench is one run's state.
type bench struct {
	o      options
	out    io.Writer
	errOut io.Writer
	sp     *spawner
	topo   *topology
	srv    *server
	pair   pair
	dst    netip.AddrPort
	dir    string // temporary: snapshot, agent binary and logs
	bin    string
}

func run(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, iptables, NFQUEUE)")
	}
	if swept, err := sweepStale(); err != nil {
		return err
	} else if len(swept) > 0 {
		fmt.Fprintf(stderr, "swept namespaces of a killed run: %s\n", strings.Join(swept, " "))
	}
	b := &bench{o: o, out: stdout, errOut: stderr}

	ss, lerr := scenario.Load(o.workload)
	if len(ss) == 0 {
		return fmt.Errorf("workload: %w", lerr)
	}
	if lerr != nil {
		return fmt.Errorf("workload %s has invalid objects or probes: %w", o.workload, lerr)
	}
	if len(ss) != 1 {
		return fmt.Errorf("workload %s: %d scenarios, want one", o.workload, len(ss))
	}
	rs, err := filter.Compile(ss[0].Cluster)
	if err != nil {
		return fmt.Errorf("compile workload: %w", err)
	}
	if b.pair, err = choosePair(ss[0], rs); err != nil {
		return fmt.Errorf("workload %s: %w", o.workload, err)
	}
	b.dst = netip.AddrPortFrom(b.pair.server, b.pair.port)

	if b.dir, err = os.MkdirTemp("", "nfqbench-"); err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(b.dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	data, err := os.ReadFile(o.workload)
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	snapshot := filepath.Join(b.dir, filepath.Base(o.workload))
	if err := os.WriteFile(snapshot, data, 0o644); err != nil {
		return fmt.Errorf("snapshot copy: %w", err)
	}
	b.bin = o.nfqpolicy
	if b.bin == "" {
		fmt.Fprintln(stderr, "building ./cmd/nfqpolicy ...")
		if b.bin, err = e2e.BuildAgent(ctx, "", b.dir); err != nil {
			return err
		}
	}

	b.sp = newSpawner()
	defer b.sp.close()
	prefix := fmt.Sprintf("%s%d-", namePrefix, os.Getpid())
	if b.topo, err = buildTopology(ctx, prefix, b.pair.client, b.pair.server); err != nil {
		return err
	}
	defer func() {
		if cerr := b.topo.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if b.srv, err = startServer(b.topo.server, b.dst); err != nil {
		return err
	}
	defer b.srv.close()
	return b.phases(ctx, snapshot)
}

// result collects the figures the summary lines are made of.
type result struct {
	rateNoRules, rateAcceptAll, rateEnforced float64
	tputNoRules, tputEnforced                float64
	seqNoRules, seqAcceptAll, seqEnforced    summary
	verdict                                  summary
}

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

func (b *bench) phases(ctx context.Context, snapshot string) error {
	o := b.o
	b.printf("# nfqpolicy dataplane benchmark, %s, %d CPUs, GOMAXPROCS %d\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0))
	b.printf("# NOTE: figures are noisy: client, server, kernel and queue reader share this machine's cores with each other and with other work; compare ratios, not absolutes, and rerun before concluding.\n")
	b.printf("# workload %s; agent --node-name %s --queues %d\n", o.workload, b.pair.node, o.queues)
	b.printf("# flow %s\n", b.pair)
	b.printf("# connection phases: %d workers for %v, each connection = connect + 1 byte each way + close with SO_LINGER 0 (reset), fresh source port each; latency phases: 1 worker, up to %d connections\n", o.workers, o.duration, o.latencyConns)
	var r result
	var err error

	// Nothing installed yet: not even conntrack is active in the node.
	rr, err := b.connPhase(ctx, "a", "norules")
	if err != nil {
		return err
	}
	r.rateNoRules = rr.rate()
	if r.seqNoRules, err = b.latencyPhase(ctx, "a", "norules"); err != nil {
		return err
	}
	tp, err := b.throughputPhase(ctx, "d", "norules")
	if err != nil {
		return err
	}
	r.tputNoRules = tp.gbps()

	if err := b.acceptAllPhases(ctx, &r); err != nil {
		return err
	}
	if err := b.enforcedPhases(ctx, snapshot, &r); err != nil {
		return err
	}
	return b.summary(r)
}

// connPhase runs one connection-rate phase and prints it.
func (b *bench) connPhase(ctx context.Context, phase, mode string) (connResult, error) {
	rr, err := connRate(ctx, b.topo.client, b.pair.client, b.dst, b.o.workers, b.o.duration, 0)
	if err != nil {
		return rr, fmt.Errorf("phase %s (%s connection rate): %w", phase, mode, err)
	}
	if rr.ok == 0 {
		return rr, fmt.Errorf("phase %s (%s connection rate): no connection completed (%d failed; first: %v)", phase, mode, rr.failed, rr.firstErr)
	}
	s, _ := summarize(rr.connect)
	b.printf("conn_rate %-9s phase=%s conns=%d failed=%d elapsed=%.2fs rate=%.0f/s connect(SYN->SYN-ACK under load): p50=%.1fus p99=%.1fus\n",
		mode, phase, rr.ok, rr.failed, rr.elapsed.Seconds(), rr.rate(), us(s.p50), us(s.p99))
	if rr.failed > 0 {
		b.printf("  %s: first failure: %v\n", mode, rr.firstErr)
	}
	return rr, nil
}

// latencyPhase opens connections one at a time and returns the spread of
// connect() times: the SYN -> SYN-ACK round trip through the node.
func (b *bench) latencyPhase(ctx context.Context, phase, mode string) (summary, error) {
	rr, err := connRate(ctx, b.topo.client, b.pair.client, b.dst, 1, b.o.duration, b.o.latencyConns)
	if err != nil {
		return summary{}, fmt.Errorf("phase %s (%s sequential latency): %w", phase, mode, err)
	}
	s, err := summarize(rr.connect)
	if err != nil {
		return summary{}, fmt.Errorf("phase %s (%s sequential latency): no connection completed (%d failed; first: %v)", phase, mode, rr.failed, rr.firstErr)
	}
	b.printf("syn_synack %-9s phase=%s sequential %s failed=%d\n", mode, phase, s, rr.failed)
	return s, nil
}

func (b *bench) throughputPhase(ctx context.Context, phase, mode string) (throughputResult, error) {
	tp, err := throughput(ctx, b.topo.client, b.pair.client, b.dst, b.srv, b.o.duration)
	if err != nil {
		return tp, fmt.Errorf("phase %s (%s throughput): %w", phase, mode, err)
	}
	b.printf("throughput %-9s phase=%s bytes=%d elapsed=%.2fs rate=%.2f Gbit/s\n", mode, phase, tp.bytes, tp.elapsed.Seconds(), tp.gbps())
	return tp, nil
}

// acceptAllPhases is (b): our own reader accepting every queued packet,
// behind the simplest diversion rule.
func (b *bench) acceptAllPhases(ctx context.Context, r *result) (err error) {
	target := fmt.Sprintf("--queue-num %d", queueBase)
	if b.o.queues > 1 {
		target = fmt.Sprintf("--queue-balance %d:%d", queueBase, queueBase+b.o.queues-1)
	}
	rule := append([]string{"-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE"}, strings.Fields(target)...)
	// Reader first, as the agent does: a rule without a reader drops.
	p, err := startAcceptAll(ctx, b.sp, b.topo.node, queueBase, b.o.queues)
	if err != nil {
		return fmt.Errorf("phase b: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_, serr := p.stop()
			err = errors.Join(err, serr)
		}
	}()
	if err := b.topo.node.exec(ctx, "iptables", rule...); err != nil {
		return fmt.Errorf("phase b: install the diversion rule: %w", err)
	}
	// The rule loaded conntrack; the node's conntrack timeouts are now
	// settable.
	if err := b.topo.setConntrackTimeouts(ctx); err != nil {
		fmt.Fprintf(b.errOut, "warning: cannot shorten conntrack timeouts in the node namespace: %v\n", err)
	}
	rr, err := b.connPhase(ctx, "b", "acceptall")
	if err != nil {
		return err
	}
	r.rateAcceptAll = rr.rate()
	if r.seqAcceptAll, err = b.latencyPhase(ctx, "b", "acceptall"); err != nil {
		return err
	}
	stopped = true
	c, err := p.stop()
	if err != nil {
		return fmt.Errorf("phase b: %w", err)
	}
	b.printf("acceptall reader: queued_and_accepted=%d enobufs=%d verdict_errors=%d\n", c.accepted, c.noBufs, c.errors)
	if c.accepted < uint64(rr.ok) {
		return fmt.Errorf("phase b: the reader accepted %d packets for %d connections: the rule does not divert the flow", c.accepted, rr.ok)
	}
	if err := b.topo.node.exec(ctx, "iptables", "-w", "-F", "FORWARD"); err != nil {
		return fmt.Errorf("phase b: remove the diversion rule: %w", err)
	}
	return nil
}

// enforcedPhases are (c), (e) and (f): the agent enforcing the workload.
func (b *bench) enforcedPhases(ctx context.Context, snapshot string, r *result) (err error) {
	a, err := startAgent(ctx, b.sp, b.bin, b.topo.node, b.pair.node, snapshot, b.o.queues, filepath.Join(b.dir, "agent.log"))
	if err != nil {
		return fmt.Errorf("phase c: %w", err)
	}
	defer func() { err = errors.Join(err, a.stop()) }()
	before, err := a.status(ctx)
	if err != nil {
		return fmt.Errorf("phase c: %w", err)
	}
	rr, err := b.connPhase(ctx, "c", "enforced")
	if err != nil {
		return fmt.Errorf("%w; agent log:\n%s", err, a.logTail())
	}
	after, err := a.status(ctx)
	if err != nil {
		return fmt.Errorf("phase c: %w", err)
	}
	allowed := after.Total.Allowed - before.Total.Allowed
	b.printf("agent during phase c: allowed=%d denied=%d cache_misses=%d cache_hits=%d enobufs=%d kernel_queue_drops=%d (the flow cache's key has no source port: one client/server pair is one entry)\n",
		allowed, after.Total.Denied-before.Total.Denied, after.CacheMisses-before.CacheMisses, after.CacheHits-before.CacheHits,
		after.Total.NoBufs-before.Total.NoBufs, after.kernelDrops()-before.kernelDrops())
	if allowed < uint64(rr.ok) {
		return fmt.Errorf("phase c: the agent allowed %d packets for %d connections: it is not deciding this flow", allowed, rr.ok)
	}
	r.rateEnforced = rr.rate()

	before = after
	tp, err := b.throughputPhase(ctx, "e", "enforced")
	if err != nil {
		return err
	}
	if after, err = a.status(ctx); err != nil {
		return fmt.Errorf("phase e: %w", err)
	}
	b.printf("agent during phase e: verdicts=%d (the bulk flow's first packet; every later one stays in the kernel)\n",
		after.Total.Allowed+after.Total.Denied-before.Total.Allowed-before.Total.Denied)
	r.tputEnforced = tp.gbps()
	if err := a.stop(); err != nil {
		return fmt.Errorf("phase e: %w", err)
	}
	return b.latencyPhaseEnforced(ctx, snapshot, r)
}

// latencyPhaseEnforced is (f): the agent restarted at debug level, which
// logs every verdict with the time from receiving the packet to having
// sent the verdict (the latency its Observer hook gets), while one client
// opens connections one at a time. The flow cache's key leaves the source
// port out, so with the cache on every connection of one client/server
// pair after the first is a hit; the agent runs with --cache-size 0 here,
// which sends every packet down the miss path (decide against the compiled
// policies) minus the LRU lookup and insert.
func (b *bench) latencyPhaseEnforced(ctx context.Context, snapshot string, r *result) (err error) {
	logPath := filepath.Join(b.dir, "agent-debug.log")
	a, err := startAgent(ctx, b.sp, b.bin, b.topo.node, b.pair.node, snapshot, b.o.queues, logPath, "--log-level", "debug", "--cache-size", "0")
	if err != nil {
		return fmt.Errorf("phase f: %w", err)
	}
	defer func() { err = errors.Join(err, a.stop()) }()
	before, err := a.status(ctx)
	if err != nil {
		return fmt.Errorf("phase f: %w", err)
	}
	if r.seqEnforced, err = b.latencyPhase(ctx, "f", "enforced"); err != nil {
		return err
	}
	after, err := a.status(ctx)
	if err != nil {
		return fmt.Errorf("phase f: %w", err)
	}
	if err := a.stop(); err != nil {
		return fmt.Errorf("phase f: %w", err)
	}
	f, err := os.Open(logPath)
	if err != nil {
		return fmt.Errorf("phase f: %w", err)
	}
	defer f.Close()
	lat, err := verdictLatencies(f, verdictFilter{src: b.pair.client, dst: b.pair.server, dport: b.pair.port})
	if err != nil {
		return fmt.Errorf("phase f: %w", err)
	}
	if r.verdict, err = summarize(lat); err != nil {
		return fmt.Errorf("phase f: no verdict for the flow in the agent's debug log %s", logPath)
	}
	allowed := after.Total.Allowed - before.Total.Allowed
	if hits := after.CacheHits - before.CacheHits; hits > 0 {
		return fmt.Errorf("phase f: %d cache hits with --cache-size 0", hits)
	}
	b.printf("verdict_latency agent     phase=f %s verdicts=%d cache=off (every verdict decided against the compiled policies; agent-side: packet handed to the reader -> verdict sent, from its debug log)\n",
		r.verdict, allowed)
	return nil
}

func (b *bench) summary(r result) error {
	delta := func(name string, x, base summary) {
		b.printf("syn_synack_added %-9s p50=%+.1fus p99=%+.1fus (sequential connect() time minus no rules: what the queue round trip adds end to end)\n",
			name, us(x.p50-base.p50), us(x.p99-base.p99))
	}
	delta("acceptall", r.seqAcceptAll, r.seqNoRules)
	delta("enforced", r.seqEnforced, r.seqNoRules)
	connVsAcceptAll, err := ratio("conn_rate_enforced_vs_acceptall", r.rateEnforced, r.rateAcceptAll)
	if err != nil {
		return err
	}
	connVsNoRules, err := ratio("conn_rate_enforced_vs_norules", r.rateEnforced, r.rateNoRules)
	if err != nil {
		return err
	}
	tput, err := ratio("throughput_enforced_vs_norules", r.tputEnforced, r.tputNoRules)
	if err != nil {
		return err
	}
	b.printf("ratio conn_rate_enforced_vs_norules=%.2f (for reference; no target)\n", connVsNoRules)
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	b.printf("target conn_rate_enforced_vs_acceptall >= %.2f: %s\n", targetConnRatio, met(connVsAcceptAll >= targetConnRatio))
	b.printf("target throughput_enforced_vs_norules >= %.2f: %s\n", targetThroughputRatio, met(tput >= targetThroughputRatio))
	b.printf("target verdict_latency p99 <= %dus: %s\n", targetP99/time.Microsecond, met(r.verdict.p99 <= targetP99))
	b.printf("ratio conn_rate_enforced_vs_acceptall=%.2f\n", connVsAcceptAll)
	b.printf("ratio throughput_enforced_vs_norules=%.2f\n", tput)
	b.printf("verdict_latency_us p50=%s p99=%s\n", roundUS(r.verdict.p50), roundUS(r.verdict.p99))
	return nil
}

// roundUS renders d in whole microseconds, rounded.
func roundUS(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Microsecond/2)/time.Microsecond), 10)
}
