// Command dataplane is the dataplane benchmark (`make bench-dataplane`).
// A node namespace routes between a client pod and a server pod of the knp
// workload; three identical copies of that topology ("lanes") differ only
// in what the node runs: nothing, an accept-everything NFQUEUE reader of
// this harness's own (the ceiling for any userspace verdict), or
// `nfqpolicy run` enforcing the workload. In alternating rounds it
// measures the rate of new TCP connections in each lane and the
// throughput of one bulk flow without rules and with the agent (whose
// fast path keeps all but the first packet in the kernel); then, one
// connection at a time, how long each node holds a SYN (kernel time
// stamps on its two links: the queue-to-verdict latency) and what the
// readers report about themselves. It prints the raw figures and, last,
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

// decideOnlyN is how many packets the in-process decision timing takes.
const decideOnlyN = 100_000

// queueBase is the agent's default first queue; the accept-all reader
// uses the same numbers.
const queueBase = 100

type options struct {
	workload     string
	nfqpolicy    string
	duration     time.Duration
	rounds       int
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
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "measured time per mode of the connection-rate and of the throughput comparison, split into -rounds")
	fs.IntVar(&o.rounds, "rounds", 6, "alternating rounds the -duration of each mode is split into")
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
	if o.rounds < 1 || o.rounds > 100 || (o.rounds > 0 && o.duration/time.Duration(o.rounds) < 200*time.Millisecond) {
		errs = append(errs, fmt.Errorf("-rounds %d: want 1..100 rounds of at least 200ms each", o.rounds))
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
	pair   pair
	rs     *filter.Ruleset // the workload compiled, for the in-process figures
	dst    netip.AddrPort
	ports  portCursor
	dir    string // temporary: snapshot, agent binary and logs
	bin    string

	// The three lanes are identical topologies that differ only in what
	// the node runs, so that the modes can be measured in alternating
	// rounds: on two shared cores the background load drifts within
	// seconds, and a ratio of figures taken seconds apart measures the
	// drift as much as the dataplane.
	lanes                        []*lane
	norules, acceptall, enforced *lane
	reader                       *acceptAllProc
	agent                        *agentProc
}

// lane is one topology with its server.
type lane struct {
	name string
	topo *topology
	srv  *server
}

// close stops what runs in the lanes and deletes them.
func (b *bench) close() error {
	var errs []error
	if b.agent != nil {
		errs = append(errs, b.agent.stop())
	}
	if b.reader != nil {
		_, err := b.reader.stop()
		errs = append(errs, err)
	}
	for _, l := range b.lanes {
		if l.srv != nil {
			l.srv.close()
		}
		if l.topo != nil {
			errs = append(errs, l.topo.close())
		}
	}
	return errors.Join(errs...)
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
	if b.rs, err = filter.Compile(ss[0].Cluster); err != nil {
		return fmt.Errorf("compile workload: %w", err)
	}
	if b.pair, err = choosePair(ss[0], b.rs); err != nil {
		return fmt.Errorf("workload %s: %w", o.workload, err)
	}
	b.dst = netip.AddrPortFrom(b.pair.server, b.pair.port)

	if swept, err := sweepStaleDirs(os.TempDir()); err != nil {
		return err
	} else if len(swept) > 0 {
		fmt.Fprintf(stderr, "swept directories of a killed run: %s\n", strings.Join(swept, " "))
	}
	if b.dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", namePrefix, os.Getpid())); err != nil {
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
	// Deferred in reverse: agent and reader stop before their namespaces
	// go, servers close before theirs.
	defer func() { err = errors.Join(err, b.close()) }()
	for _, name := range []string{"norules", "acceptall", "enforced"} {
		l := &lane{name: name}
		b.lanes = append(b.lanes, l)
		if l.topo, err = buildTopology(ctx, prefix+name[:1]+"-", b.pair.client, b.pair.server); err != nil {
			return err
		}
		if l.srv, err = startServer(l.topo.server, b.dst); err != nil {
			return err
		}
		if err := b.warmUp(ctx, l); err != nil {
			return err
		}
	}
	b.norules, b.acceptall, b.enforced = b.lanes[0], b.lanes[1], b.lanes[2]
	return b.phases(ctx, snapshot)
}

// warmUp checks a lane's path with a connection before anything is
// measured; the first also resolves the neighbours, which the first
// measured round would otherwise pay for alone.
func (b *bench) warmUp(ctx context.Context, l *lane) error {
	var last error
	for range 5 {
		rr, err := connRate(ctx, l.topo.client, b.pair.client, b.dst, &b.ports, 1, 2*time.Second, 1)
		if err != nil {
			return fmt.Errorf("warm-up of %s: %w", l.name, err)
		}
		if rr.ok == 1 {
			return nil
		}
		last = rr.firstErr
	}
	return fmt.Errorf("warm-up of %s: no connection from %s to %s: %v", l.name, b.pair.client, b.dst, last)
}

// result collects the figures the summary lines are made of.
type result struct {
	connRatios, tputRatios                []float64 // per round
	rateNoRules, rateEnforcedOverNoRules  float64
	seqNoRules, seqAcceptAll, seqEnforced seqTimes
	seqEnforcedHits                       seqTimes // (c)'s agent: info level, cache on
	verdict, readerAcceptAll              summary
}

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

func (b *bench) phases(ctx context.Context, snapshot string) (err error) {
	o := b.o
	round := o.duration / time.Duration(o.rounds)
	b.printf("# nfqpolicy dataplane benchmark, %s, %d CPUs, GOMAXPROCS %d\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0))
	b.printf("# NOTE: figures are noisy: client, server, kernel and queue reader share this machine's cores with each other and with other work. The modes run on three identical namespace topologies, measured in alternating rounds (each round starting with the next mode) so that drifting background load hits them alike; ratios are medians of per-round ratios. Compare ratios, not absolutes, and rerun before concluding.\n")
	b.printf("# workload %s; agent --node-name %s --queues %d\n", o.workload, b.pair.node, o.queues)
	b.printf("# flow %s\n", b.pair)
	b.printf("# connection rate: %d rounds x %v per mode, %d workers, each connection = connect + 1 byte each way + close with SO_LINGER 0 (reset), a fresh source port each; throughput: %d rounds x %v per mode, one flow each (after %v warm-up); latency: 1 worker, up to %d connections\n",
		o.rounds, round, o.workers, o.rounds, round, bulkWarmup, o.latencyConns)

	// (b): our reader behind the simplest diversion rule. Reader first,
	// as the agent does: a rule without a reader drops.
	if b.reader, err = startAcceptAll(ctx, b.sp, b.acceptall.topo.node, queueBase, o.queues); err != nil {
		return fmt.Errorf("phase b: %w", err)
	}
	target := fmt.Sprintf("--queue-num %d", queueBase)
	if o.queues > 1 {
		target = fmt.Sprintf("--queue-balance %d:%d", queueBase, queueBase+o.queues-1)
	}
	rule := append([]string{"-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE"}, strings.Fields(target)...)
	if err := execIn(ctx, b.acceptall.topo.node, "iptables", rule...); err != nil {
		return fmt.Errorf("phase b: install the diversion rule: %w", err)
	}
	// (c): the agent.
	if b.agent, err = startAgent(ctx, b.sp, b.bin, b.enforced.topo.node, b.pair.node, snapshot, o.queues, filepath.Join(b.dir, "agent.log")); err != nil {
		return fmt.Errorf("phase c: %w", err)
	}
	// Both rule sets loaded conntrack, so its per-namespace timeouts exist.
	for _, l := range []*lane{b.acceptall, b.enforced} {
		if err := l.topo.setConntrackTimeouts(ctx); err != nil {
			fmt.Fprintf(b.errOut, "warning: cannot shorten conntrack timeouts in %s: %v\n", l.topo.node.Name, err)
		}
		if err := b.warmUp(ctx, l); err != nil {
			return err
		}
	}

	var r result
	if err := b.connRounds(ctx, round, &r); err != nil {
		return err
	}
	if err := b.throughputRounds(ctx, round, &r); err != nil {
		return err
	}
	if err := b.latencyPhases(ctx, snapshot, &r); err != nil {
		return err
	}
	for _, c := range []struct {
		name  string
		cache int
	}{{"miss", 0}, {"hit", 65536}} {
		s, err := decideOnly(b.rs, b.pair, c.cache, decideOnlyN)
		if err != nil {
			return fmt.Errorf("in-process decision: %w", err)
		}
		b.printf("decide_only %-4s in-process filter Decode+Decide of the flow's SYN (cache %d): %s\n", c.name, c.cache, s)
	}
	return b.summary(r)
}

// modeFigures accumulates one mode's rounds.
type modeFigures struct {
	rates      []float64
	ok, failed int
	connect    []time.Duration
	firstErr   error
}

// connRounds are (a), (b) and (c): rounds of norules, acceptall,
// enforced.
func (b *bench) connRounds(ctx context.Context, round time.Duration, r *result) error {
	lanes := []*lane{b.norules, b.acceptall, b.enforced}
	figs := make([]modeFigures, len(lanes))
	before, err := b.agent.status(ctx)
	if err != nil {
		return fmt.Errorf("phase c: %w", err)
	}
	for k := range b.o.rounds {
		rates := make([]float64, len(lanes))
		for _, i := range rotated(len(lanes), k) {
			l := lanes[i]
			rr, err := connRate(ctx, l.topo.client, b.pair.client, b.dst, &b.ports, b.o.workers, round, 0)
			if err != nil {
				return fmt.Errorf("connection rate (%s): %w", l.name, err)
			}
			if rr.ok == 0 {
				return fmt.Errorf("connection rate (%s): no connection completed (%d failed; first: %v)", l.name, rr.failed, rr.firstErr)
			}
			f := &figs[i]
			f.rates = append(f.rates, rr.rate())
			f.ok += rr.ok
			f.failed += rr.failed
			f.connect = append(f.connect, rr.connect...)
			if f.firstErr == nil {
				f.firstErr = rr.firstErr
			}
			rates[i] = rr.rate()
		}
		r.connRatios = append(r.connRatios, rates[2]/rates[1])
	}
	after, err := b.agent.status(ctx)
	if err != nil {
		return fmt.Errorf("phase c: %w", err)
	}
	for i, l := range lanes {
		f := figs[i]
		s, _ := summarize(f.connect)
		b.printf("conn_rate %-9s phase=%c rate=%.0f/s (median of rounds: %s) conns=%d failed=%d connect(SYN->SYN-ACK under load): p50=%.1fus p99=%.1fus\n",
			l.name, "abc"[i], median(f.rates), formatFloats(f.rates, "%.0f"), f.ok, f.failed, us(s.p50), us(s.p99))
		if f.failed > 0 {
			b.printf("  %s: first failure: %v\n", l.name, f.firstErr)
		}
	}
	r.rateNoRules = median(figs[0].rates)
	b.printf("ratio per round conn_rate_enforced_vs_acceptall: %s\n", formatFloats(r.connRatios, "%.2f"))
	allowed := after.Total.Allowed - before.Total.Allowed
	b.printf("agent during phase c: allowed=%d denied=%d cache_misses=%d cache_hits=%d enobufs=%d kernel_queue_drops=%d (the flow cache's key has no source port: one client/server pair is one entry)\n",
		allowed, after.Total.Denied-before.Total.Denied, after.CacheMisses-before.CacheMisses, after.CacheHits-before.CacheHits,
		after.Total.NoBufs-before.Total.NoBufs, after.kernelDrops()-before.kernelDrops())
	if allowed < uint64(figs[2].ok) {
		return fmt.Errorf("phase c: the agent allowed %d packets for %d connections: it is not deciding this flow", allowed, figs[2].ok)
	}
	r.rateEnforcedOverNoRules = median(figs[2].rates) / r.rateNoRules
	return nil
}

// throughputRounds are (d) and (e): rounds of norules, enforced.
func (b *bench) throughputRounds(ctx context.Context, round time.Duration, r *result) error {
	lanes := []*lane{b.norules, b.enforced}
	rates := make([][]float64, len(lanes))
	before, err := b.agent.status(ctx)
	if err != nil {
		return fmt.Errorf("phase e: %w", err)
	}
	for k := range b.o.rounds {
		for _, i := range rotated(len(lanes), k) {
			l := lanes[i]
			tp, err := throughput(ctx, l.topo.client, b.pair.client, b.dst, l.srv, round)
			if err != nil {
				return fmt.Errorf("throughput (%s): %w", l.name, err)
			}
			rates[i] = append(rates[i], tp.gbps())
		}
		n := len(rates[0]) - 1
		r.tputRatios = append(r.tputRatios, rates[1][n]/rates[0][n])
	}
	after, err := b.agent.status(ctx)
	if err != nil {
		return fmt.Errorf("phase e: %w", err)
	}
	for i, l := range lanes {
		b.printf("throughput %-9s phase=%c rate=%.2f Gbit/s (median of rounds: %s)\n", l.name, "de"[i], median(rates[i]), formatFloats(rates[i], "%.2f"))
	}
	b.printf("ratio per round throughput_enforced_vs_norules: %s\n", formatFloats(r.tputRatios, "%.2f"))
	b.printf("agent during phase e: verdicts=%d for %d bulk flows (each flow's first packet; every later one stays in the kernel)\n",
		after.Total.Allowed+after.Total.Denied-before.Total.Allowed-before.Total.Denied, b.o.rounds)
	return nil
}

// seqTimes are a sequential phase's figures.
type seqTimes struct {
	// connect: connect() times, the SYN -> SYN-ACK round trip through
	// the node, seen by the client.
	connect summary
	// held: how long the node held each SYN, from the kernel's stamps on
	// its two links.
	held summary
}

// seqLatency opens connections one at a time in a lane while the SYN tap
// watches the node.
func (b *bench) seqLatency(ctx context.Context, phase string, l *lane) (seqTimes, error) {
	var st seqTimes
	tap, err := openSynTap(l.topo.node, "vc", "vs", synFilter{dst: b.dst})
	if err != nil {
		return st, fmt.Errorf("phase %s (%s sequential latency): %w", phase, l.name, err)
	}
	rr, err := connRate(ctx, l.topo.client, b.pair.client, b.dst, &b.ports, 1, b.o.duration, b.o.latencyConns)
	held, unmatched, terr := tap.close()
	if err = errors.Join(err, terr); err != nil {
		return st, fmt.Errorf("phase %s (%s sequential latency): %w", phase, l.name, err)
	}
	if st.connect, err = summarize(rr.connect); err != nil {
		return st, fmt.Errorf("phase %s (%s sequential latency): no connection completed (%d failed; first: %v)", phase, l.name, rr.failed, rr.firstErr)
	}
	if st.held, err = summarize(held); err != nil {
		return st, fmt.Errorf("phase %s (%s sequential latency): the tap saw no SYN cross the node (%d seen on one link only)", phase, l.name, unmatched)
	}
	b.printf("syn_synack %-9s phase=%s sequential %s failed=%d (client's connect() time)\n", l.name, phase, st.connect, rr.failed)
	b.printf("syn_held   %-9s phase=%s sequential %s unmatched=%d (node: SYN in on the client link -> out on the server link, kernel timestamps; unmatched: seen on one link only)\n", l.name, phase, st.held, unmatched)
	return st, nil
}

// latencyPhases are the sequential runs of each lane; for the enforced
// lane three of them, with the agent restarted in between:
//   - c: the agent of (c) as deployed (info level, cache on). The flow
//     cache's key leaves the source port out, so every connection of one
//     client/server pair after the first is a hit.
//   - f: --cache-size 0, which sends every packet down the miss path
//     (decide against the compiled policies, minus the LRU lookup and
//     insert). Its SYN hold time is the summary's verdict latency.
//   - f-debug: the same at debug level, which logs every verdict with the
//     time from receiving the packet to having sent the verdict (the
//     latency its Observer hook gets): the agent's own figure. Logging
//     costs the reader time, hence a run of its own.
func (b *bench) latencyPhases(ctx context.Context, snapshot string, r *result) (err error) {
	if r.seqNoRules, err = b.seqLatency(ctx, "a", b.norules); err != nil {
		return err
	}
	// The reader's own timing covers its sequential run only, like the
	// agent's in f-debug.
	if err := b.reader.reset(); err != nil {
		return fmt.Errorf("phase b: %w", err)
	}
	if r.seqAcceptAll, err = b.seqLatency(ctx, "b", b.acceptall); err != nil {
		return err
	}
	c, err := b.reader.stop()
	b.reader = nil
	if err != nil {
		return fmt.Errorf("phase b: %w", err)
	}
	r.readerAcceptAll = c.latency
	b.printf("verdict_latency acceptall phase=b %s (reader-side, sequential: packet handed to the reader -> NfAccept sent)\n", c.latency)
	b.printf("acceptall reader: queued_and_accepted=%d (whole run) enobufs=%d verdict_errors=%d\n", c.accepted, c.noBufs, c.errors)

	if r.seqEnforcedHits, err = b.seqLatency(ctx, "c", b.enforced); err != nil {
		return err
	}
	if err := b.restartAgent(ctx, snapshot, "agent-nocache.log", "--cache-size", "0"); err != nil {
		return fmt.Errorf("phase f: %w", err)
	}
	if r.seqEnforced, err = b.seqMisses(ctx, "f"); err != nil {
		return err
	}
	logPath := filepath.Join(b.dir, "agent-debug.log")
	if err := b.restartAgent(ctx, snapshot, filepath.Base(logPath), "--cache-size", "0", "--log-level", "debug"); err != nil {
		return fmt.Errorf("phase f-debug: %w", err)
	}
	if _, err = b.seqMisses(ctx, "f-debug"); err != nil {
		return err
	}
	if err := b.agent.stop(); err != nil {
		return fmt.Errorf("phase f-debug: %w", err)
	}
	f, err := os.Open(logPath)
	if err != nil {
		return fmt.Errorf("phase f-debug: %w", err)
	}
	defer f.Close()
	lat, err := verdictLatencies(f, verdictFilter{src: b.pair.client, dst: b.pair.server, dport: b.pair.port})
	if err != nil {
		return fmt.Errorf("phase f-debug: %w", err)
	}
	if r.verdict, err = summarize(lat); err != nil {
		return fmt.Errorf("phase f-debug: no verdict for the flow in the agent's debug log %s", logPath)
	}
	b.printf("verdict_latency enforced  phase=f-debug %s (agent-side, sequential, cache off: packet handed to the reader -> verdict sent; from its debug log)\n", r.verdict)
	return nil
}

// restartAgent replaces the enforcing lane's agent by one started with
// extra flags, logging to name in the run's directory.
func (b *bench) restartAgent(ctx context.Context, snapshot, name string, extra ...string) (err error) {
	if err := b.agent.stop(); err != nil {
		return err
	}
	b.agent, err = startAgent(ctx, b.sp, b.bin, b.enforced.topo.node, b.pair.node, snapshot, b.o.queues, filepath.Join(b.dir, name), extra...)
	return err
}

// seqMisses is a sequential run of the enforcing lane whose agent has no
// cache; it checks, from the agent's counters, that every connection was
// decided and none was a cache hit.
func (b *bench) seqMisses(ctx context.Context, phase string) (seqTimes, error) {
	before, err := b.agent.status(ctx)
	if err != nil {
		return seqTimes{}, fmt.Errorf("phase %s: %w", phase, err)
	}
	st, err := b.seqLatency(ctx, phase, b.enforced)
	if err != nil {
		return st, err
	}
	after, err := b.agent.status(ctx)
	if err != nil {
		return st, fmt.Errorf("phase %s: %w", phase, err)
	}
	if hits := after.CacheHits - before.CacheHits; hits > 0 {
		return st, fmt.Errorf("phase %s: %d cache hits with --cache-size 0", phase, hits)
	}
	if allowed := after.Total.Allowed - before.Total.Allowed; allowed < uint64(st.connect.n) {
		return st, fmt.Errorf("phase %s: the agent allowed %d packets for %d connections", phase, allowed, st.connect.n)
	}
	return st, nil
}

func (b *bench) summary(r result) error {
	delta := func(name string, x, base summary) {
		b.printf("syn_synack_added %-9s p50=%+.1fus p99=%+.1fus (sequential connect() time minus no rules: what the queue round trip adds end to end)\n",
			name, us(x.p50-base.p50), us(x.p99-base.p99))
	}
	delta("acceptall", r.seqAcceptAll.connect, r.seqNoRules.connect)
	delta("enforced", r.seqEnforced.connect, r.seqNoRules.connect)
	b.printf("verdict_latency_added_by_agent p50=%+.1fus p99=%+.1fus (agent's reader-side time, at debug level, minus the accept-all reader's: decode, decide, NF_REPEAT's second pass through the chain, logging's side effects)\n",
		us(r.verdict.p50-r.readerAcceptAll.p50), us(r.verdict.p99-r.readerAcceptAll.p99))
	held := r.seqEnforced.held
	for _, l := range []struct {
		name string
		s    summary
	}{{"acceptall", r.seqAcceptAll.held}, {"enforced", held}} {
		b.printf("syn_held_added %-9s p50=%+.1fus p99=%+.1fus (node's SYN hold time minus no rules': the queue round trip alone)\n",
			l.name, us(l.s.p50-r.seqNoRules.held.p50), us(l.s.p99-r.seqNoRules.held.p99))
	}
	b.printf("# verdict_latency_us below is phase f's syn_held enforced: the agent as deployed but without its cache, so every SYN takes the miss path, timed from the kernel's stamps as it enters and leaves the node, so it counts the queue wait, the reader's wake-up, decode and decision, the verdict and the reinjection (and %.1fus of plain forwarding, the no-rules p50). The agent's own figure (verdict_latency enforced, phase f-debug) leaves out the wait and wake-up but counts what the kernel does synchronously inside the verdict's send after the packet has left the node.\n",
		us(r.seqNoRules.held.p50))
	if len(r.connRatios) == 0 || len(r.tputRatios) == 0 {
		return errors.New("no rounds measured")
	}
	conn, tput := median(r.connRatios), median(r.tputRatios)
	b.printf("ratio conn_rate_enforced_vs_norules=%.2f (medians of rounds; for reference, no target)\n", r.rateEnforcedOverNoRules)
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	b.printf("target conn_rate_enforced_vs_acceptall >= %.2f: %s\n", targetConnRatio, met(conn >= targetConnRatio))
	b.printf("target throughput_enforced_vs_norules >= %.2f: %s\n", targetThroughputRatio, met(tput >= targetThroughputRatio))
	b.printf("target verdict_latency p99 <= %dus: %s\n", targetP99/time.Microsecond, met(held.p99 <= targetP99))
	b.printf("ratio conn_rate_enforced_vs_acceptall=%.2f\n", conn)
	b.printf("ratio throughput_enforced_vs_norules=%.2f\n", tput)
	b.printf("verdict_latency_us p50=%s p99=%s\n", roundUS(held.p50), roundUS(held.p99))
	return nil
}

// roundUS renders d in whole microseconds, rounded.
func roundUS(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Microsecond/2)/time.Microsecond), 10)
}

// rotated is the order the n modes run in round k: each round starts with
// the next mode, so that none always runs first (after the previous
// phase's load) or last.
func rotated(n, k int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = (i + k) % n
	}
	return out
}

// formatFloats renders xs with format, space-separated.
func formatFloats(xs []float64, format string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, " ")
}
