package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// Options configure a kernel run.
type Options struct {
	// Agent is the nfqpolicy binary started in every node namespace. Empty
	// runs without any agent: then every probe must be allowed, which tests
	// the topology and the probes themselves.
	Agent string
	// AgentArgs are extra flags for every `nfqpolicy run` (for instance
	// --deny-action=reject).
	AgentArgs []string
	// Timeout bounds one probe attempt; a denied probe costs one Timeout.
	// Default 1s.
	Timeout time.Duration
	// Attempts is how often a probe that is expected to be allowed is tried
	// before it counts as denied. Default 3.
	Attempts int
	// Parallel bounds the probes in flight. Default 256.
	Parallel int
	// Fresh gives every scenario its own topology and agents instead of
	// reloading the agents of scenarios that share one: slower, and tells
	// a reload bug from a policy bug.
	Fresh bool
	// Log receives progress (JSON lines); the zero Logger discards.
	Log zerolog.Logger
	// OnResult, when set, is called with every result as soon as it is
	// known (from several goroutines, serialised by Run).
	OnResult func(Result)

	// beforeProbes, for tests, runs once per topology after it is built
	// and before any probe is sent.
	beforeProbes func(*topology) error
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
	if o.Parallel <= 0 {
		o.Parallel = 256
	}
	return o
}

// Result is the kernel's verdict for one probe.
type Result struct {
	Scenario string
	File     string
	Index    int // of the probe in its scenario
	Probe    scenario.Probe
	// Got is allow, deny, or error when the harness could not send the
	// probe (Detail says why).
	Got      string
	Detail   string
	Attempts int
	Elapsed  time.Duration

	order int // of the scenario in the run
}

// Pass reports whether the kernel agreed with the scenario.
func (r Result) Pass() bool { return r.Got == r.Probe.Expect }

// Skipped reports a probe the kernel cannot carry (an endpoint address
// that cannot be routed, see Detail): it has no kernel verdict.
func (r Result) Skipped() bool { return r.Got == "skip" }

// Report is the outcome of a run.
type Report struct {
	Results        []Result
	Passed, Failed int
	// Skipped probes have no kernel verdict; they are neither passed nor
	// failed.
	Skipped    int
	Topologies int
	Elapsed    time.Duration
	// Agents sums the agents' own verdict counters over the run: first
	// packets they allowed and denied (zero without agents).
	Agents AgentCounters
}

// InputError is returned for scenarios that cannot be run at all (an
// endpoint that names nothing, addresses that collide); nothing was built.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// prepared is a scenario with its endpoints resolved against its plan.
type prepared struct {
	order  int
	s      *scenario.Scenario
	pl     *plan
	ends   [][2]endpoint // per probe: from, to
	skip   []string      // per probe: why it cannot be sent ("" when it can)
	extern []netip.Addr
}

func prepare(s *scenario.Scenario) (*prepared, error) {
	pl, err := planCluster(s.Cluster)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", s.Name, err)
	}
	r := newResolver(s.Cluster, pl)
	p := &prepared{s: s, pl: pl}
	for i, pr := range s.Probes {
		from, err := r.resolve(pr.From, pr.Family)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: probes[%d]: from: %w", s.Name, i, err)
		}
		to, err := r.resolve(pr.To, pr.Family)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: probes[%d]: to: %w", s.Name, i, err)
		}
		if from.addr == to.addr {
			return nil, fmt.Errorf("scenario %s: probes[%d]: source and destination are the same address %s", s.Name, i, from.addr)
		}
		p.ends = append(p.ends, [2]endpoint{from, to})
		why := ""
		for _, e := range []endpoint{from, to} {
			if w := unroutable(e.addr); w != "" && e.place.kind == placeExt {
				why = e.addr.String() + ": " + w
			}
		}
		p.skip = append(p.skip, why)
		if why != "" {
			continue
		}
		for _, e := range []endpoint{from, to} {
			if e.place.kind == placeExt {
				p.extern = appendUnique(p.extern, e.addr)
			}
		}
	}
	return p, nil
}

// group is scenarios that share one topology.
type group struct {
	pl        *plan
	scenarios []*prepared
	externals []netip.Addr
	servers   []serverKey
}

func groupScenarios(ps []*prepared, fresh bool) []*group {
	var out []*group
	byFP := map[string]*group{}
	for _, p := range ps {
		fp := p.pl.fingerprint()
		if fresh {
			fp = fmt.Sprint(p.order)
		}
		g, ok := byFP[fp]
		if !ok {
			g = &group{pl: p.pl}
			byFP[fp] = g
			out = append(out, g)
		}
		g.scenarios = append(g.scenarios, p)
		for _, a := range p.extern {
			g.externals = appendUnique(g.externals, a)
		}
	}
	for _, g := range out {
		sortAddrs(g.externals)
		seen := map[serverKey]bool{}
		for _, p := range g.scenarios {
			for i, pr := range p.s.Probes {
				if pr.Protocol == "SCTP" || p.skip[i] != "" {
					continue
				}
				k := serverKey{place: p.ends[i][1].place, addr: p.ends[i][1].addr, port: pr.Port, proto: pr.Protocol}
				if !seen[k] {
					seen[k] = true
					g.servers = append(g.servers, k)
				}
			}
		}
	}
	return out
}

// Run builds the topologies the scenarios need, sends every probe, tears
// everything down and reports each probe's kernel verdict. It returns an
// *InputError, before building anything, when a scenario cannot be run.
func Run(ctx context.Context, scenarios []*scenario.Scenario, opts Options) (*Report, error) {
	opts = opts.withDefaults()
	start := time.Now()
	var ps []*prepared
	for i, s := range scenarios {
		p, err := prepare(s)
		if err != nil {
			return nil, &InputError{Err: err}
		}
		p.order = i
		ps = append(ps, p)
	}
	if deleted, err := SweepStale(); err != nil {
		opts.Log.Warn().Err(err).Msg("sweeping stale namespaces")
	} else if len(deleted) > 0 {
		opts.Log.Info().Strs("namespaces", deleted).Msg("deleted namespaces of dead runs")
	}
	groups := groupScenarios(ps, opts.Fresh)
	rep := &Report{Topologies: len(groups)}
	var mu sync.Mutex
	emit := func(r Result) {
		mu.Lock()
		defer mu.Unlock()
		rep.Results = append(rep.Results, r)
		switch {
		case r.Skipped():
			rep.Skipped++
		case r.Pass():
			rep.Passed++
		default:
			rep.Failed++
		}
		if opts.OnResult != nil {
			opts.OnResult(r)
		}
	}
	for gi, g := range groups {
		prefix := fmt.Sprintf("%s%d-g%d-", NamePrefix, os.Getpid(), gi)
		if err := runGroup(ctx, prefix, g, opts, emit, &rep.Agents); err != nil {
			return rep, err
		}
	}
	sort.SliceStable(rep.Results, func(i, j int) bool {
		a, b := rep.Results[i], rep.Results[j]
		if a.order != b.order {
			return a.order < b.order
		}
		return a.Index < b.Index
	})
	rep.Elapsed = time.Since(start)
	return rep, nil
}

func runGroup(ctx context.Context, prefix string, g *group, opts Options, emit func(Result), counters *AgentCounters) (err error) {
	log := opts.Log.With().Str("topology", prefix).Logger()
	t0 := time.Now()
	t, err := buildTopology(ctx, prefix, g.pl, g.externals)
	if err != nil {
		return fmt.Errorf("build topology: %w", err)
	}
	defer func() {
		if cerr := t.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tear down topology: %w", cerr))
		}
	}()
	srv, err := startServers(t, g.servers)
	if err != nil {
		return err
	}
	defer srv.close()
	pr := newProber(t, srv, g.servers, opts.Timeout)
	log.Info().Int("nodes", len(g.pl.Nodes)).Int("pods", len(g.pl.Pods)).Int("externals", len(g.externals)).
		Int("servers", len(g.servers)).Int("scenarios", len(g.scenarios)).Dur("took", time.Since(t0)).Msg("topology built")

	if broken := warmUp(ctx, pr, g, opts.Parallel); len(broken) > 0 {
		// Every verdict of these pairs would be a denial the agents did
		// not make.
		if len(broken) > 10 {
			broken = append(broken[:10], fmt.Sprintf("and %d more", len(broken)-10))
		}
		log.Error().Strs("pairs", broken).Msg("topology self-check: some address pairs cannot reach each other even without agents")
	}
	log.Debug().Dur("took", time.Since(t0)).Msg("topology self-check done")
	if opts.beforeProbes != nil {
		if err := opts.beforeProbes(t); err != nil {
			return err
		}
	}
	var agents *agentSet
	if opts.Agent != "" {
		t2 := time.Now()
		agents, err = startAgents(ctx, opts.Agent, opts.AgentArgs, t, g.scenarios[0], log)
		if err != nil {
			return err
		}
		defer func() {
			if c, verr := agents.verdicts(context.Background()); verr == nil {
				counters.add(c)
				log.Info().Uint64("allowed", c.Allowed).Uint64("denied", c.Denied).Uint64("malformed", c.Malformed).
					Uint64("verdict_errors", c.VerdictErrors).Uint64("enobufs", c.NoBufs).Msg("agents' verdicts")
			} else {
				log.Warn().Err(verr).Msg("reading the agents' counters")
			}
			if aerr := agents.stop(); aerr != nil {
				err = errors.Join(err, aerr)
			}
		}()
		log.Info().Int("agents", len(agents.agents)).Dur("took", time.Since(t2)).Msg("agents ready")
	}
	for i, p := range g.scenarios {
		if err := ctx.Err(); err != nil {
			return err
		}
		if agents != nil && i > 0 {
			t2 := time.Now()
			if err := agents.load(ctx, p); err != nil {
				if aerr := agents.alive(); aerr != nil || ctx.Err() != nil {
					return fmt.Errorf("scenario %s: %w", p.s.Name, err)
				}
				// The agents still run the previous state: this
				// scenario's verdicts would mean nothing.
				log.Error().Err(err).Str("scenario", p.s.Name).Msg("agents did not load the scenario")
				for j, probe := range p.s.Probes {
					emit(Result{order: p.order, Scenario: p.s.Name, File: p.s.File, Index: j, Probe: probe,
						Got: "error", Detail: "agents did not load the scenario: " + err.Error()})
				}
				continue
			}
			log.Debug().Str("scenario", p.s.Name).Dur("took", time.Since(t2)).Msg("agents reloaded")
		}
		t1 := time.Now()
		runProbes(ctx, pr, p, opts, emit)
		log.Info().Str("scenario", p.s.Name).Int("probes", len(p.s.Probes)).Dur("took", time.Since(t1)).Msg("scenario probed")
		if agents != nil {
			if err := agents.alive(); err != nil {
				return fmt.Errorf("scenario %s: %w", p.s.Name, err)
			}
		}
	}
	return ctx.Err()
}

// runProbes sends the probes of one scenario, opts.Parallel at a time. A
// probe that is expected to be allowed gets up to opts.Attempts tries (a
// lost first packet is not a verdict); one expected to be denied gets one,
// since an allowed first try already decides it.
func runProbes(ctx context.Context, pr *prober, p *prepared, opts Options, emit func(Result)) {
	sem := make(chan struct{}, opts.Parallel)
	var wg sync.WaitGroup
	for i, probe := range p.s.Probes {
		if p.skip[i] != "" {
			emit(Result{order: p.order, Scenario: p.s.Name, File: p.s.File, Index: i, Probe: probe, Got: "skip", Detail: p.skip[i]})
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			attempts := 1
			if probe.Expect == "allow" {
				attempts = opts.Attempts
			}
			var o outcome
			n := 0
			for n < attempts {
				n++
				o = pr.once(ctx, p.ends[i][0], p.ends[i][1], probe.Port, probe.Protocol)
				if o.allowed || ctx.Err() != nil {
					break
				}
			}
			if ctx.Err() != nil {
				return // interrupted: no verdict
			}
			r := Result{order: p.order, Scenario: p.s.Name, File: p.s.File, Index: i, Probe: probe, Attempts: n, Elapsed: time.Since(t0), Detail: o.detail}
			switch {
			case o.err != nil:
				r.Got, r.Detail = "error", o.err.Error()
			case o.allowed:
				r.Got = "allow"
			default:
				r.Got = "deny"
			}
			emit(r)
		}()
	}
	wg.Wait()
}

// warmUp sends one TCP SYN between every pair of addresses the group's
// probes use, before anything polices the topology. Bridges learn where
// every MAC address is (until then they flood), and the pairs double as a
// self-check of the wiring: with nothing policing, every SYN must be
// answered, by a listener or by a reset. It returns the pairs that were
// not.
func warmUp(ctx context.Context, pr *prober, g *group, parallel int) []string {
	type pair struct{ from, to endpoint }
	seen := map[pair]bool{}
	var pairs []pair
	for _, p := range g.scenarios {
		for i, e := range p.ends {
			if p.skip[i] != "" {
				continue
			}
			k := pair{e[0], e[1]}
			if !seen[k] {
				seen[k] = true
				pairs = append(pairs, k)
			}
		}
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var broken []string
	for _, k := range pairs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			o := pr.once(ctx, k.from, k.to, 9, "TCP")
			if o.allowed || o.detail == "refused" || ctx.Err() != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			what := o.detail
			if o.err != nil {
				what = o.err.Error()
			}
			broken = append(broken, fmt.Sprintf("%s -> %s: %s", k.from.addr, k.to.addr, what))
		}()
	}
	wg.Wait()
	sort.Strings(broken)
	return broken
}
