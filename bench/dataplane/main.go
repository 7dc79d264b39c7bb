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
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfqpolicy/nfqpolicy/e2e"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/syntap"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// Targets (issue 11): ratios against lanes measured in the same run, in
// alternating rounds; medians of the per-round ratios.
const (
	targetConnRatio       = 1.00
	targetThroughputRatio = 0.95
	// SYN hold time, enforcing agent over the accept-all reader, with
	// the flow cache on and off.
	targetHoldCached   = 1.2
	targetHoldUncached = 1.4
)

// enforcedCacheSize is the flow cache of the enforcing lane's agent: far
// fewer entries than the cache-miss lane has pairs, so that cycling
// through them misses every time (the default 65536 would hold them all
// after the first pass), while the benchmark's one flow still hits.
const enforcedCacheSize = 4096

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
	missClients  int
	missServers  int
	debugPhase   bool
	// Experiments (docs/performance.md): extra agent flags and
	// environment, and the accept-all reader's verdict.
	agentArgs, agentEnv multiFlag
	acceptAllVerdict    string
	// only, when set, runs one phase (conn, throughput or hold) and no
	// summary: experiments.
	only string
}

// multiFlag is a flag that may be given several times.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

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
	fs.DurationVar(&o.duration, "duration", 7500*time.Millisecond, "measured time per mode of the connection-rate comparison (split into 5 x -rounds rounds) and of the throughput comparison (split into -rounds rounds of at least 400ms)")
	fs.IntVar(&o.rounds, "rounds", 30, "alternating rounds the -duration of each mode is split into (the -latency-conns of each SYN hold lane: twice as many)")
	fs.IntVar(&o.workers, "workers", 4, "parallel clients of the connection-rate phases")
	fs.IntVar(&o.queues, "queues", runtime.NumCPU(), "NFQUEUE queues of the agent and of the accept-all reader (the agent's default)")
	fs.IntVar(&o.latencyConns, "latency-conns", 30000, "sequential connections of each SYN hold lane, over all rounds")
	fs.IntVar(&o.missClients, "miss-clients", 100, "client pods of the cache-miss connection-rate lane")
	fs.IntVar(&o.missServers, "miss-servers", 400, "server pods of the cache-miss connection-rate lane")
	fs.BoolVar(&o.debugPhase, "debug-phase", false, "also time the agent's own reader-side latency from a run at --log-level debug")
	fs.Var(&o.agentArgs, "agent-arg", "extra flag for both agents (repeatable; experiments)")
	fs.Var(&o.agentEnv, "agent-env", "extra KEY=VALUE environment for both agents (repeatable; experiments, e.g. GOMAXPROCS=1)")
	fs.StringVar(&o.only, "only", "", "run only this phase: conn, throughput or hold, without the summary (experiments)")
	fs.StringVar(&o.acceptAllVerdict, "acceptall-verdict", "accept", "the accept-all reader's verdict: accept, or repeat (NF_REPEAT with a mark that a rule above the queue rule accepts: the agent's second pass; experiments)")
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
	if o.rounds < 1 || o.rounds > 100 || (o.rounds > 0 && o.duration/time.Duration(o.rounds) < 100*time.Millisecond) {
		errs = append(errs, fmt.Errorf("-rounds %d: want 1..100 rounds of at least 100ms each", o.rounds))
	} else if o.latencyConns/(holdRoundsPer*o.rounds) < 20 {
		errs = append(errs, fmt.Errorf("-latency-conns %d: want at least 20 per round", o.latencyConns))
	}
	if o.missClients < 1 || o.missServers < 1 || o.missClients+o.missServers > 1000 {
		errs = append(errs, fmt.Errorf("-miss-clients %d -miss-servers %d: want at least 1 each, at most 1000 together", o.missClients, o.missServers))
	}
	if o.acceptAllVerdict != "accept" && o.acceptAllVerdict != "repeat" {
		errs = append(errs, fmt.Errorf("-acceptall-verdict %q: want accept or repeat", o.acceptAllVerdict))
	}
	if o.only != "" && o.only != "conn" && o.only != "throughput" && o.only != "hold" {
		errs = append(errs, fmt.Errorf("-only %q: want conn, throughput or hold", o.only))
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
	one    *targets // the benchmark's flow
	many   *targets // the cache-miss lane's pairs
	// missClients and missServers: how many pods the pairs are between.
	missClients, missServers int
	ports                    portCursor
	dir                      string // temporary: snapshot, agent binary and logs
	bin                      string
	snap                     string // the snapshot the agents read

	// The lanes are identical topologies that differ only in what the
	// node runs, so that the modes can be measured in alternating
	// rounds: on two shared cores the background load drifts within
	// seconds, and a ratio of figures taken seconds apart measures the
	// drift as much as the dataplane.
	lanes                                 []*lane
	norules, acceptall, enforced, nocache *lane
	reader                                *acceptAllProc
}

// lane is one topology with its server and, for the enforcing lanes,
// its agent.
type lane struct {
	name string
	// pid is the process answering the lane's queue (0: none).
	pid   int
	topo  *topology
	srv   *server
	agent *agentProc
	// agentArgs are the lane's own agent flags.
	agentArgs []string
}

// close stops what runs in the lanes and deletes them.
func (b *bench) close() error {
	var errs []error
	for _, l := range b.lanes {
		if l.agent != nil {
			errs = append(errs, l.agent.stop())
		}
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
	b.one = oneTarget(b.pair.client, b.dst)
	clients, servers, pairs, err := manyPairs(b.rs, b.pair, o.missClients, o.missServers)
	if err != nil {
		return fmt.Errorf("workload %s: %w", o.workload, err)
	}
	b.many = &targets{conns: pairs}
	b.missClients, b.missServers = len(clients), len(servers)

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
	b.snap = filepath.Join(b.dir, filepath.Base(o.workload))
	if err := os.WriteFile(b.snap, data, 0o644); err != nil {
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
	// Deferred in reverse: agents and reader stop before their
	// namespaces go, servers close before theirs.
	defer func() { err = errors.Join(err, b.close()) }()
	for i, name := range []string{"norules", "acceptall", "enforced", "nocache"} {
		l := &lane{name: name}
		b.lanes = append(b.lanes, l)
		var ec, es []netip.Addr
		if name == "acceptall" || name == "enforced" {
			ec, es = clients, servers
		}
		if l.topo, err = buildTopology(ctx, prefix+"abcd"[i:i+1]+"-", b.pair.client, b.pair.server, ec, es); err != nil {
			return err
		}
		if l.srv, err = startServer(l.topo.server, b.pair.port); err != nil {
			return err
		}

		if err := b.warmUp(ctx, l, b.one); err != nil {
			return err
		}
	}
	b.norules, b.acceptall, b.enforced, b.nocache = b.lanes[0], b.lanes[1], b.lanes[2], b.lanes[3]
	b.nocache.agentArgs = []string{"--cache-size", "0"}
	if len(b.many.conns) < 2*enforcedCacheSize {
		return fmt.Errorf("workload %s: %d pairs for the cache-miss lane, want at least %d", o.workload, len(b.many.conns), 2*enforcedCacheSize)
	}
	b.enforced.agentArgs = []string{"--cache-size", strconv.Itoa(enforcedCacheSize)}
	return b.phases(ctx)
}

// warmUp checks a lane's path with a connection before anything is
// measured; the first also resolves the neighbours, which the first
// measured round would otherwise pay for alone.
func (b *bench) warmUp(ctx context.Context, l *lane, tg *targets) error {
	var last error
	for range 5 {
		rr, err := connRate(ctx, l.topo.client, tg, &b.ports, 1, 2*time.Second, 1)
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
	connRatios, missRatios, tputRatios   []float64 // per round
	rateNoRules, rateEnforcedOverNoRules float64
	// Per round, enforced over accept-all SYN hold p50, cache on and
	// off.
	holdP50, holdP50NoCache []float64
	// p99 ratios: of all the rounds' SYNs (pooled), and per block of
	// holdBlock rounds for the spread.
	holdP99, holdP99NoCache             float64
	holdP99Blocks, holdP99NoCacheBlocks []float64
	readerAcceptAll                     summary
}

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

// startAgent starts l's agent.
func (b *bench) startAgent(ctx context.Context, l *lane, logName string, extra ...string) (err error) {
	args := append(append(append([]string{"--debug-socket", filepath.Join(b.dir, l.name+".sock")}, l.agentArgs...), b.o.agentArgs...), extra...)
	l.agent, err = startAgent(ctx, b.sp, b.bin, l.topo.node, b.pair.node, b.snap, b.o.queues, filepath.Join(b.dir, logName), b.o.agentEnv, args...)
	if err != nil {
		return fmt.Errorf("%s lane: %w", l.name, err)
	}
	// ip netns exec execs the agent: same process.
	l.pid = l.agent.cmd.Process.Pid
	return nil
}

func (b *bench) phases(ctx context.Context) (err error) {
	o := b.o
	round := o.duration / time.Duration(o.rounds)
	load, _ := os.ReadFile("/proc/loadavg")
	b.printf("# nfqpolicy dataplane benchmark, %s, %d CPUs, GOMAXPROCS %d, load average %s\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0), strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	b.printf("# NOTE: figures are noisy: client, server, kernel and queue reader share this machine's cores with each other and with other work. The modes run on identical namespace topologies, measured in alternating rounds (each round starting with the next mode) so that drifting background load hits them alike; ratios are medians of per-round ratios, with their interquartile range. Compare ratios, not absolutes.\n")
	b.printf("# workload %s; agents --node-name %s --queues %d %s%s\n", o.workload, b.pair.node, o.queues, strings.Join(o.agentArgs, " "), map[bool]string{true: " env " + strings.Join(o.agentEnv, " "), false: ""}[len(o.agentEnv) > 0])
	b.printf("# flow %s\n", b.pair)
	b.printf("# cache-miss lane: %d distinct allowed pairs between %d clients and %d servers of node %s, cycled in order through the agent's flow cache of %d entries (LRU: every pair is evicted before it comes round again; the cache's key is the address pair and port, not the source port)\n",
		len(b.many.conns), b.missClients, b.missServers, b.pair.node, enforcedCacheSize)
	b.printf("# connection rate: %d rounds x %v per mode, %d workers, each connection = connect + 1 byte each way + close with SO_LINGER 0 (reset), a fresh source port each; throughput: %d rounds x %v per mode, one flow each (after %v warm-up); SYN hold: %d rounds of %d sequential connections per lane; accept-all verdict: %s\n",
		connRoundsPer*o.rounds, round/connRoundsPer, o.workers, o.rounds, max(round, minBulkRound), bulkWarmup, holdRoundsPer*o.rounds, o.latencyConns/(holdRoundsPer*o.rounds), o.acceptAllVerdict)

	// The accept-all lane: our reader behind the simplest diversion
	// rule. Reader first, as the agent does: a rule without a reader
	// drops.
	if b.reader, err = startAcceptAll(ctx, b.sp, b.acceptall.topo.node, queueBase, o.queues, o.acceptAllVerdict); err != nil {
		return fmt.Errorf("accept-all lane: %w", err)
	}
	b.acceptall.pid = b.reader.cmd.Process.Pid
	target := fmt.Sprintf("--queue-num %d", queueBase)
	if o.queues > 1 {
		target = fmt.Sprintf("--queue-balance %d:%d", queueBase, queueBase+o.queues-1)
	}
	if o.acceptAllVerdict == "repeat" {
		// The agent's shape: the repeated packet comes back marked and
		// a rule above the queue rule accepts it.
		if err := execIn(ctx, b.acceptall.topo.node, "iptables", "-w", "-A", "FORWARD", "-m", "mark", "--mark", fmt.Sprintf("%#x/%#x", acceptAllMark, acceptAllMark), "-j", "ACCEPT"); err != nil {
			return fmt.Errorf("accept-all lane: install the mark rule: %w", err)
		}
	}
	rule := append([]string{"-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE"}, strings.Fields(target)...)
	if err := execIn(ctx, b.acceptall.topo.node, "iptables", rule...); err != nil {
		return fmt.Errorf("accept-all lane: install the diversion rule: %w", err)
	}
	for _, l := range []*lane{b.enforced, b.nocache} {
		if err := b.startAgent(ctx, l, "agent-"+l.name+".log"); err != nil {
			return err
		}
	}
	// The rule sets loaded conntrack, so its per-namespace timeouts exist.
	for _, l := range []*lane{b.acceptall, b.enforced, b.nocache} {
		if err := l.topo.setConntrackTimeouts(ctx); err != nil {
			fmt.Fprintf(b.errOut, "warning: cannot shorten conntrack timeouts in %s: %v\n", l.topo.node.Name, err)
		}
		if err := b.warmUp(ctx, l, b.one); err != nil {
			return err
		}
	}
	for _, l := range []*lane{b.acceptall, b.enforced} {
		if err := b.warmUp(ctx, l, b.many); err != nil {
			return fmt.Errorf("cache-miss pairs: %w", err)
		}
	}

	var r result
	if o.only == "" || o.only == "conn" {
		if err := b.connRounds(ctx, connRoundsPer*o.rounds, round/connRoundsPer, &r); err != nil {
			return err
		}
	}
	if o.only == "" || o.only == "throughput" {
		if err := b.throughputRounds(ctx, max(round, minBulkRound), &r); err != nil {
			return err
		}
	}
	if o.only == "" || o.only == "hold" {
		if err := b.holdRounds(ctx, &r); err != nil {
			return err
		}
	}
	if o.only != "" {
		return nil
	}
	if o.debugPhase {
		if err := b.debugPhase(ctx); err != nil {
			return err
		}
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
	cost       procStat // of the lane's queue reader, over the mode's rounds
}

// connMode is one mode of the connection-rate rounds: a lane and the
// pairs its clients connect.
type connMode struct {
	name string
	lane *lane
	tg   *targets
}

// connRoundsPer: the connection-rate comparison runs this many times
// more, and this many times shorter, rounds than -rounds says: the load
// on the machine drifts over hundreds of milliseconds, and the five
// modes of a round should see the same load. 150 rounds by default: a
// round's ratio swings by a third either way on two loaded cores, and the
// median of 90 still moved by 0.1 from run to run.
const connRoundsPer = 5

// holdRoundsPer: the SYN hold lanes run this many times more rounds than
// -rounds says (60 of 500 connections by default).
const holdRoundsPer = 2

// holdBlock is how many consecutive SYN hold rounds make one block for the
// p99 ratios' spread: a round's 500 SYNs put its p99 at the fifth slowest,
// one scheduler stall on a loaded core; a block's 5,000 at the fiftieth.
const holdBlock = 10

// minBulkRound is the shortest measured window of a throughput round: a
// bulk flow's rate over less swings with every burst of other work.
const minBulkRound = 400 * time.Millisecond

// connRounds measures new connections per second, in rounds alternating
// between: no rules, the accept-all reader and the agent on the
// benchmark's flow, and the accept-all reader and the agent on the
// cache-miss lane's many pairs.
func (b *bench) connRounds(ctx context.Context, rounds int, round time.Duration, r *result) error {
	modes := []connMode{
		{"norules", b.norules, b.one},
		{"acceptall", b.acceptall, b.one},
		{"enforced", b.enforced, b.one},
		// Cursors of their own, so that each lane goes through the pairs
		// once before it repeats one.
		{"acceptall-miss", b.acceptall, &targets{conns: b.many.conns}},
		{"enforced-miss", b.enforced, &targets{conns: b.many.conns}},
	}
	figs := make([]modeFigures, len(modes))
	var hitsOne, missesOne, hitsMany, missesMany, noBufs, drops uint64
	// One unmeasured round first: the previous setup's work (agents
	// compiling, conntrack tables filling, threads and caches cold) would
	// otherwise land on whichever modes run first.
	for _, m := range modes {
		if _, err := connRate(ctx, m.lane.topo.client, m.tg, &b.ports, b.o.workers, round, 0); err != nil {
			return fmt.Errorf("connection rate warm-up (%s): %w", m.name, err)
		}
	}
	for k := range rounds {
		rates := make([]float64, len(modes))
		for _, i := range shuffled(len(modes), k) {
			m := modes[i]
			var before agentStatus
			if m.lane.agent != nil {
				var err error
				if before, err = m.lane.agent.status(ctx); err != nil {
					return fmt.Errorf("%s lane: %w", m.name, err)
				}
			}
			var ps0 procStat
			if m.lane.pid != 0 {
				var err error
				if ps0, err = readProcStat(m.lane.pid); err != nil {
					return fmt.Errorf("connection rate (%s): %w", m.name, err)
				}
			}
			rr, err := connRate(ctx, m.lane.topo.client, m.tg, &b.ports, b.o.workers, round, 0)
			if m.lane.pid != 0 {
				ps1, perr := readProcStat(m.lane.pid)
				err = errors.Join(err, perr)
				figs[i].cost = figs[i].cost.add(ps1.sub(ps0))
			}
			if err != nil {
				return fmt.Errorf("connection rate (%s): %w", m.name, err)
			}
			if rr.ok == 0 {
				return fmt.Errorf("connection rate (%s): no connection completed (%d failed; first: %v)", m.name, rr.failed, rr.firstErr)
			}
			if m.lane.agent != nil {
				after, err := m.lane.agent.allowedAtLeast(ctx, before, rr.ok)
				if err != nil {
					return fmt.Errorf("%s lane: %w", m.name, err)
				}
				h, ms := after.CacheHits-before.CacheHits, after.CacheMisses-before.CacheMisses
				noBufs += after.Total.NoBufs - before.Total.NoBufs
				drops += after.kernelDrops() - before.kernelDrops()
				if len(m.tg.conns) > 1 {
					hitsMany, missesMany = hitsMany+h, missesMany+ms
				} else {
					hitsOne, missesOne = hitsOne+h, missesOne+ms
				}
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
		r.missRatios = append(r.missRatios, rates[4]/rates[3])
	}
	for i, m := range modes {
		f := figs[i]
		s, _ := summarize(f.connect)
		b.printf("conn_rate %-14s rate=%.0f/s (rounds: %s) conns=%d failed=%d connect(SYN->SYN-ACK under load): p50=%.1fus p99=%.1fus\n",
			m.name, median(f.rates), formatFloats(f.rates, "%.0f"), f.ok, f.failed, us(s.p50), us(s.p99))
		if f.failed > 0 {
			b.printf("  %s: first failure: %v\n", m.name, f.firstErr)
		}
		if m.lane.pid != 0 && f.ok > 0 {
			n := float64(f.ok)
			b.printf("reader_cost %-14s per connection: cpu=%.1fus voluntary_switches=%.2f involuntary_switches=%.2f (the queue reader's process, all threads, during its connection-rate rounds)\n",
				m.name, us(f.cost.cpu)/n, float64(f.cost.voluntary)/n, float64(f.cost.forced)/n)
		}
	}
	b.printf("ratio per round conn_rate_enforced_vs_acceptall: %s\n", formatFloats(r.connRatios, "%.2f"))
	b.printf("ratio per round conn_rate_enforced_miss_vs_acceptall_miss: %s\n", formatFloats(r.missRatios, "%.2f"))
	b.printf("agent cache during the connection rounds: one flow hits=%d misses=%d; cache-miss lane hits=%d misses=%d (%.0f%% misses); enobufs=%d kernel_queue_drops=%d\n",
		hitsOne, missesOne, hitsMany, missesMany, 100*float64(missesMany)/float64(max(hitsMany+missesMany, 1)), noBufs, drops)
	r.rateNoRules = median(figs[0].rates)
	r.rateEnforcedOverNoRules = median(figs[2].rates) / r.rateNoRules
	return nil
}

// throughputRounds: alternating rounds of one bulk flow without rules and
// through the agent.
func (b *bench) throughputRounds(ctx context.Context, round time.Duration, r *result) error {
	lanes := []*lane{b.norules, b.enforced}
	rates := make([][]float64, len(lanes))
	before, err := b.enforced.agent.status(ctx)
	if err != nil {
		return fmt.Errorf("throughput: %w", err)
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
	after, err := b.enforced.agent.status(ctx)
	if err != nil {
		return fmt.Errorf("throughput: %w", err)
	}
	for i, l := range lanes {
		b.printf("throughput %-9s rate=%.2f Gbit/s (rounds: %s)\n", l.name, median(rates[i]), formatFloats(rates[i], "%.2f"))
	}
	b.printf("ratio per round throughput_enforced_vs_norules: %s\n", formatFloats(r.tputRatios, "%.2f"))
	b.printf("agent during the throughput rounds: verdicts=%d for %d bulk flows (each flow's first packet; every later one stays in the kernel)\n",
		after.Total.Allowed+after.Total.Denied-before.Total.Allowed-before.Total.Denied, b.o.rounds)
	return nil
}

// holdFigures are one lane's SYN hold rounds.
type holdFigures struct {
	held, connect               []time.Duration // all rounds
	p50, p99                    []time.Duration // per round
	rounds                      [][]time.Duration
	failed, unmatched, inverted int
	firstErr                    error
	cost                        procStat    // of the lane's queue reader, over its rounds
	before                      agentStatus // the lane's agent's counters before the rounds
}

// holdRounds times, in rounds, how long each node holds a SYN: one
// connection at a time, the lanes interleaved connection by connection,
// kernel time stamps on the node's two links. The lanes: no rules, the accept-all reader, the agent with its
// cache (every SYN of the flow after the first is a hit) and the agent
// without (every SYN takes the miss path).
func (b *bench) holdRounds(ctx context.Context, r *result) error {
	lanes := []*lane{b.norules, b.acceptall, b.enforced, b.nocache}
	figs := make([]holdFigures, len(lanes))
	rounds := holdRoundsPer * b.o.rounds
	per := b.o.latencyConns / rounds
	stopStamping, err := syntap.KeepStamping()
	if err != nil {
		return err
	}
	defer stopStamping()
	// The reader's own timing covers these rounds only.
	if err := b.reader.reset(); err != nil {
		return fmt.Errorf("accept-all lane: %w", err)
	}
	// An unmeasured round first, as in the connection rounds: the lanes
	// that would otherwise run first after the throughput phase would pay
	// for waking up alone.
	for _, l := range lanes {
		if _, err := connRate(ctx, l.topo.client, b.one, &b.ports, 1, 10*time.Second, per/5); err != nil {
			return fmt.Errorf("SYN hold warm-up (%s): %w", l.name, err)
		}
	}
	for i, l := range lanes {
		if l.agent != nil {
			st, err := l.agent.status(ctx)
			if err != nil {
				return fmt.Errorf("%s lane: %w", l.name, err)
			}
			figs[i].before = st
		}
	}
	taps := make([]*syntap.Tap, len(lanes))
	socks := make([][]clientSocket, len(lanes))
	defer func() {
		for _, cs := range socks {
			closeClientSockets(cs)
		}
	}()
	ps0 := make([]procStat, len(lanes))
	for k := range rounds {
		// All lanes at once, one connection at a time, the lane of each
		// drawn in turn: a stall of the machine (milliseconds, on two
		// loaded cores) then lands on consecutive SYNs of different
		// lanes alike instead of on one lane's round, which is what made
		// the p99 ratios swing between runs.
		for i, l := range lanes {
			if socks[i], err = openClientSockets(l.topo.client, per, b.one, &b.ports); err != nil {
				return fmt.Errorf("SYN hold (%s): %w", l.name, err)
			}
			if taps[i], err = syntap.Open(l.topo.node, "vc", "vs", b.dst); err != nil {
				return fmt.Errorf("SYN hold (%s): %w", l.name, err)
			}
			if l.pid != 0 {
				if ps0[i], err = readProcStat(l.pid); err != nil {
					return fmt.Errorf("SYN hold (%s): %w", l.name, err)
				}
			}
		}
		res := make([]connResult, len(lanes))
		for j := range per {
			for _, i := range shuffled(len(lanes), k*per+j) {
				took, err := socks[i][j].ping()
				socks[i][j].fd = -1
				if err != nil {
					res[i].failed++
					if res[i].firstErr == nil {
						res[i].firstErr = err
					}
					continue
				}
				res[i].ok++
				res[i].connect = append(res[i].connect, took)
			}
		}
		for i, l := range lanes {
			f, rr := &figs[i], res[i]
			if l.pid != 0 {
				ps1, err := readProcStat(l.pid)
				if err != nil {
					return fmt.Errorf("SYN hold (%s): %w", l.name, err)
				}
				f.cost = f.cost.add(ps1.sub(ps0[i]))
			}
			socks[i] = nil
			held, unmatched, inverted, err := taps[i].Close()
			if err != nil {
				return fmt.Errorf("SYN hold (%s): %w", l.name, err)
			}
			s, err := summarize(held)
			if err != nil {
				return fmt.Errorf("SYN hold (%s): the tap saw no SYN cross the node (%d connections, %d failed, first: %v; %d seen on one link only)", l.name, rr.ok, rr.failed, rr.firstErr, unmatched)
			}
			f.held = append(f.held, held...)
			f.rounds = append(f.rounds, held)
			f.connect = append(f.connect, rr.connect...)
			f.p50 = append(f.p50, s.p50)
			f.p99 = append(f.p99, s.p99)
			f.failed += rr.failed
			f.unmatched += unmatched
			f.inverted += inverted
			if f.firstErr == nil {
				f.firstErr = rr.firstErr
			}
		}
		ratio := func(i, j int, p func(*holdFigures) []time.Duration) float64 {
			return float64(p(&figs[i])[k]) / float64(p(&figs[j])[k])
		}
		p50 := func(f *holdFigures) []time.Duration { return f.p50 }
		r.holdP50 = append(r.holdP50, ratio(2, 1, p50))
		r.holdP50NoCache = append(r.holdP50NoCache, ratio(3, 1, p50))
	}
	// A round's p99 is one stall; the lanes' p99 over all their
	// (interleaved) rounds is what the ratio compares, and blocks of
	// rounds show how much it moves within the run.
	var err99 error
	p99Ratio := func(i, j int, from, to int) float64 {
		x, err1 := percentile(slices.Concat(figs[i].rounds[from:to]...), 99)
		y, err2 := percentile(slices.Concat(figs[j].rounds[from:to]...), 99)
		if err := errors.Join(err1, err2); err != nil {
			err99 = errors.Join(err99, err)
			return 0
		}
		return float64(x) / float64(y)
	}
	r.holdP99, r.holdP99NoCache = p99Ratio(2, 1, 0, rounds), p99Ratio(3, 1, 0, rounds)
	block := min(holdBlock, rounds)
	for from := 0; from+block <= rounds; from += block {
		r.holdP99Blocks = append(r.holdP99Blocks, p99Ratio(2, 1, from, from+block))
		r.holdP99NoCacheBlocks = append(r.holdP99NoCacheBlocks, p99Ratio(3, 1, from, from+block))
	}
	if err99 != nil {
		return fmt.Errorf("SYN hold p99: %w", err99)
	}
	for i, l := range lanes {
		f := &figs[i]
		held, _ := summarize(f.held)
		conn, _ := summarize(f.connect)
		b.printf("syn_held   %-9s all rounds %s per-round p50 %s us, p99 %s us; unmatched=%d inverted=%d (node: SYN in on the client link -> out on the server link, kernel time stamps)\n",
			l.name, held, formatDurations(f.p50), formatDurations(f.p99), f.unmatched, f.inverted)
		b.printf("syn_synack %-9s all rounds %s failed=%d (client's connect() time)\n", l.name, conn, f.failed)
		if l.pid != 0 && len(f.connect) > 0 {
			n := float64(len(f.connect))
			b.printf("reader_cost %-9s per connection: cpu=%.1fus voluntary_switches=%.2f involuntary_switches=%.2f (the queue reader's process, all threads, during its rounds)\n",
				l.name, us(f.cost.cpu)/n, float64(f.cost.voluntary)/n, float64(f.cost.forced)/n)
		}
		if l.agent == nil {
			continue
		}
		after, err := l.agent.allowedAtLeast(ctx, f.before, len(f.connect))
		if err != nil {
			return fmt.Errorf("%s lane: %w", l.name, err)
		}
		allowed := after.Total.Allowed - f.before.Total.Allowed
		hits := after.CacheHits - f.before.CacheHits
		if l == b.nocache && hits > 0 {
			return fmt.Errorf("%s lane: %d cache hits with --cache-size 0", l.name, hits)
		}
		b.printf("agent %-9s during the SYN hold rounds: allowed=%d cache_hits=%d cache_misses=%d\n", l.name, allowed, hits, after.CacheMisses-f.before.CacheMisses)
	}
	c, err := b.reader.stop()
	b.reader = nil
	if err != nil {
		return fmt.Errorf("accept-all lane: %w", err)
	}
	r.readerAcceptAll = c.latency
	b.printf("verdict_latency acceptall %s (reader-side, SYN hold rounds: packet handed to the reader -> verdict sent)\n", c.latency)
	b.printf("acceptall reader: queued_and_answered=%d (whole run) enobufs=%d verdict_errors=%d; during the SYN hold rounds %.1f allocations per packet (go-nfqueue's receive loop and SetVerdict) and %d garbage collections\n",
		c.accepted, c.noBufs, c.errors, float64(c.mallocs)/float64(max(c.latency.n, 1)), c.gcs)
	b.printf("ratio per round syn_hold_p50_enforced_vs_acceptall: %s\n", formatFloats(r.holdP50, "%.2f"))
	b.printf("ratio per block of %d rounds syn_hold_p99_enforced_vs_acceptall: %s (all rounds: %.2f)\n", holdBlock, formatFloats(r.holdP99Blocks, "%.2f"), r.holdP99)
	b.printf("ratio per round syn_hold_p50_nocache_vs_acceptall: %s\n", formatFloats(r.holdP50NoCache, "%.2f"))
	b.printf("ratio per block of %d rounds syn_hold_p99_nocache_vs_acceptall: %s (all rounds: %.2f)\n", holdBlock, formatFloats(r.holdP99NoCacheBlocks, "%.2f"), r.holdP99NoCache)
	return nil
}

// debugPhase restarts the cache-off lane's agent at debug level, which
// logs every verdict with the time from receiving the packet to having
// sent the verdict (the latency its Observer hook gets): the agent's own
// figure. Logging costs the reader time, hence a run of its own, after
// the measured rounds.
func (b *bench) debugPhase(ctx context.Context) error {
	l := b.nocache
	if err := l.agent.stop(); err != nil {
		return fmt.Errorf("debug phase: %w", err)
	}
	l.agent = nil
	logName := "agent-debug.log"
	if err := b.startAgent(ctx, l, logName, "--log-level", "debug"); err != nil {
		return fmt.Errorf("debug phase: %w", err)
	}
	rr, err := connRate(ctx, l.topo.client, b.one, &b.ports, 1, 10*time.Second, b.o.latencyConns/4)
	if err != nil {
		return fmt.Errorf("debug phase: %w", err)
	}
	if err := l.agent.stop(); err != nil {
		return fmt.Errorf("debug phase: %w", err)
	}
	l.agent = nil
	f, err := os.Open(filepath.Join(b.dir, logName))
	if err != nil {
		return fmt.Errorf("debug phase: %w", err)
	}
	defer f.Close()
	lat, err := verdictLatencies(f, verdictFilter{src: b.pair.client, dst: b.pair.server, dport: b.pair.port})
	if err != nil {
		return fmt.Errorf("debug phase: %w", err)
	}
	s, err := summarize(lat)
	if err != nil {
		return fmt.Errorf("debug phase: no verdict for the flow in the agent's debug log (%d connections)", rr.ok)
	}
	b.printf("verdict_latency enforced %s (agent-side, sequential, cache off, debug level: packet handed to the reader -> verdict sent; from its debug log)\n", s)
	return nil
}

func (b *bench) summary(r result) error {
	if len(r.connRatios) == 0 || len(r.tputRatios) == 0 || len(r.holdP50) == 0 || len(r.holdP99Blocks) == 0 {
		return errors.New("no rounds measured")
	}
	spread := func(name string, xs []float64) float64 {
		q1, m, q3 := quartiles(xs)
		b.printf("ratio_spread %s median=%.2f iqr=%.2f..%.2f rounds=%d\n", name, m, q1, q3, len(xs))
		return m
	}
	conn := spread("conn_rate_enforced_vs_acceptall", r.connRatios)
	miss := spread("conn_rate_enforced_miss_vs_acceptall_miss", r.missRatios)
	tput := spread("throughput_enforced_vs_norules", r.tputRatios)
	p50 := spread("syn_hold_p50_enforced_vs_acceptall", r.holdP50)
	pooled := func(name string, all float64, blocks []float64) float64 {
		q1, m, q3 := quartiles(blocks)
		b.printf("ratio_spread %s all_rounds=%.2f blocks of %d rounds: median=%.2f iqr=%.2f..%.2f blocks=%d\n", name, all, holdBlock, m, q1, q3, len(blocks))
		return all
	}
	p99 := pooled("syn_hold_p99_enforced_vs_acceptall", r.holdP99, r.holdP99Blocks)
	p50n := spread("syn_hold_p50_nocache_vs_acceptall", r.holdP50NoCache)
	p99n := pooled("syn_hold_p99_nocache_vs_acceptall", r.holdP99NoCache, r.holdP99NoCacheBlocks)
	b.printf("ratio conn_rate_enforced_vs_norules=%.2f (medians of rounds; for reference, no target)\n", r.rateEnforcedOverNoRules)
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	b.printf("target conn_rate_enforced_vs_acceptall >= %.2f: %s\n", targetConnRatio, met(conn >= targetConnRatio))
	b.printf("target conn_rate_enforced_miss_vs_acceptall_miss >= %.2f: %s\n", targetConnRatio, met(miss >= targetConnRatio))
	b.printf("target throughput_enforced_vs_norules >= %.2f: %s\n", targetThroughputRatio, met(tput >= targetThroughputRatio))
	b.printf("target syn_hold_p50_enforced_vs_acceptall <= %.1f (cache on): %s\n", targetHoldCached, met(p50 <= targetHoldCached))
	b.printf("target syn_hold_p99_enforced_vs_acceptall <= %.1f (cache on): %s\n", targetHoldCached, met(p99 <= targetHoldCached))
	b.printf("target syn_hold_p50_nocache_vs_acceptall <= %.1f (cache off): %s\n", targetHoldUncached, met(p50n <= targetHoldUncached))
	b.printf("target syn_hold_p99_nocache_vs_acceptall <= %.1f (cache off): %s\n", targetHoldUncached, met(p99n <= targetHoldUncached))
	b.printf("ratio conn_rate_enforced_miss_vs_acceptall_miss=%.2f\n", miss)
	b.printf("ratio syn_hold_p50_nocache_vs_acceptall=%.2f\n", p50n)
	b.printf("ratio syn_hold_p99_nocache_vs_acceptall=%.2f\n", p99n)
	b.printf("ratio conn_rate_enforced_vs_acceptall=%.2f\n", conn)
	b.printf("ratio throughput_enforced_vs_norules=%.2f\n", tput)
	b.printf("ratio syn_hold_p50_enforced_vs_acceptall=%.2f\n", p50)
	b.printf("ratio syn_hold_p99_enforced_vs_acceptall=%.2f\n", p99)
	return nil
}

// formatDurations renders ds in microseconds, one decimal, space-separated.
func formatDurations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = strconv.FormatFloat(us(d), 'f', 1, 64)
	}
	return strings.Join(parts, " ")
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

// shuffled is the order the n modes run in round k: a permutation drawn
// from a generator seeded with k, the same on every run. Rotating a fixed
// order would give every mode the same predecessor in every round, and
// what runs first drifts with what ran just before (an agent whose
// threads are still awake, a cold one).
func shuffled(n, k int) []int {
	return rand.New(rand.NewPCG(uint64(k), 11)).Perm(n)
}

// formatFloats renders xs with format, space-separated.
func formatFloats(xs []float64, format string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, " ")
}
