// Package agent is the node agent's main loop: it follows the cluster
// state, recompiles the policies on every change, publishes the new
// Ruleset to the verdict engine the queue readers share, keeps the kernel's
// diversion rules and local-pod sets in step, and serves health and
// counters.
//
// What stays behind when the agent stops (on purpose): the rules and sets.
// The connmark-accept rule in them keeps every established, allowed flow
// flowing while no agent runs (upgrade, crash, OOM). New flows meanwhile
// are dropped by the kernel (nobody listens on the queue), or accepted
// unmarked with fail-open (--queue-bypass); they are never allowed by a
// stale decision. Only `nfqpolicy cleanup` removes the rules.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

// Established says what happens to established flows when policies change.
type Established string

const (
	// Keep: a connection allowed once stays allowed until it ends.
	Keep Established = "keep"
	// Recheck: connections are re-decided after each change and those now
	// denied are cut (done by the OnSwap hook; see package conntrack).
	Recheck Established = "recheck"
)

// ParseEstablished reads the --established flag.
func ParseEstablished(s string) (Established, error) {
	switch Established(s) {
	case Keep, Recheck:
		return Established(s), nil
	}
	return "", fmt.Errorf("established %q: want keep or recheck", s)
}

// Config configures an Agent.
type Config struct {
	NodeName string
	Rules    iptables.Config
	Backend  iptables.Backend
	// Families are the IP families diverted (nil: both).
	Families []iptables.Family
	// CacheSize is the number of flows the engine's cache remembers.
	CacheSize int
	// MaxQueueLen is the kernel-side length of each queue.
	MaxQueueLen uint32
	Established Established
	// ResyncInterval re-installs rules and sets this often, repairing
	// what someone else flushed (0: never).
	ResyncInterval time.Duration
	// CheckInterval is how often the agent looks for its jumps, chains
	// and sets (iptables -F, ipset flush or destroy, a firewall reload)
	// and restores them at once when something is missing (0: never;
	// only the resync repairs then). See rulecheck.go.
	CheckInterval time.Duration
	// HealthAddr serves /healthz, /readyz and /debug/counters ("" none).
	HealthAddr string
	// Handlers are served on HealthAddr next to the agent's own paths, by
	// pattern (e.g. "GET /metrics"): metrics and debugging plug in here.
	Handlers map[string]http.Handler
	// Observer sees every verdict (nil: none).
	Observer dataplane.Observer
	// Audit decides and reports every flow but accepts them all
	// (--mode audit).
	Audit bool
	// OnSwap is called after each recompile with the previous and the new
	// Ruleset (never with old == nil: the first compile is not a swap).
	// With Established == Recheck it is where established flows are
	// re-decided. It runs on the agent's loop: a slow hook delays the
	// next recompile, not packets.
	OnSwap func(old, new *filter.Ruleset)
	// OnCompile, if set, is told how long each compile took and whether it
	// failed (metrics).
	OnCompile func(d time.Duration, err error)
	// Runner runs iptables and ipset (nil: locally).
	Runner iptables.Runner
	Log    zerolog.Logger
}

// Agent is one node's enforcer.
type Agent struct {
	cfg    Config
	src    k8swatch.Source
	tables *iptables.Tables
	log    zerolog.Logger

	engine atomic.Pointer[filter.Engine]
	// compiler keeps the last compile's state, so that a change costs
	// what it touches; only the agent's loop uses it.
	compiler *filter.Compiler
	mu       sync.Mutex // guards readers
	readers  []*dataplane.Reader

	ready         atomic.Bool
	notReady      atomic.Pointer[string] // why not ready
	compiles      atomic.Uint64
	compileErrors atomic.Uint64
	syncErrors    atomic.Uint64
	localAddrs    atomic.Int64
	localPodNets  atomic.Int64

	// What the last successful sync wrote into the kernel's sets; only
	// the agent's loop touches them.
	setsSynced  bool
	syncedAddrs []netip.Addr
	syncedNets  []netip.Prefix

	checks ruleChecks
	drops  queueDrops // the agent loop's own
}

// New checks cfg and returns an agent following src.
func New(cfg Config, src k8swatch.Source) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("node name is required (--node-name or NODE_NAME)")
	}
	if err := cfg.Rules.Validate(); err != nil {
		return nil, err
	}
	if cfg.Established == "" {
		cfg.Established = Keep
	}
	if _, err := ParseEstablished(string(cfg.Established)); err != nil {
		return nil, err
	}
	if src == nil {
		return nil, errors.New("no cluster source")
	}
	for pattern, h := range cfg.Handlers {
		if err := checkPattern(pattern, h); err != nil {
			return nil, err
		}
	}
	r := cfg.Runner
	if r == nil {
		r = iptables.Exec{}
	}
	a := &Agent{cfg: cfg, src: src, tables: iptables.New(r, cfg.Backend, cfg.Families...), log: cfg.Log, compiler: filter.NewCompiler()}
	a.setNotReady("waiting for the first cluster state")
	return a, nil
}

// Preflight reports, all at once, what keeps the agent from running on
// this host: the capability and the binaries.
func Preflight(b iptables.Backend, fams ...iptables.Family) error {
	return errors.Join(dataplane.CheckNetAdmin(), iptables.CheckTools(b, fams...))
}

func (a *Agent) setNotReady(why string) {
	a.ready.Store(false)
	a.notReady.Store(&why)
}

// Run enforces until ctx is done. It returns an error when it cannot start
// (no first state, a first compile that fails, a queue it cannot bind,
// rules it cannot install) or when the source stops on its own.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var health *http.Server
	if a.cfg.HealthAddr != "" {
		ln, err := net.Listen("tcp", a.cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("health listener: %w", err)
		}
		health = &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := health.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error().Err(err).Msg("health server stopped")
			}
		}()
		defer func() {
			sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer scancel()
			_ = health.Shutdown(sctx)
		}()
		a.log.Info().Str("addr", ln.Addr().String()).Msg("health endpoint listening")
	}

	srcDone := make(chan error, 1)
	go func() { srcDone <- a.src.Run(ctx) }()

	state, err := a.firstState(ctx, srcDone)
	if err != nil || state == nil {
		return err
	}
	rs, err := a.compile(state)
	if err != nil {
		return fmt.Errorf("compile the first cluster state: %w", err)
	}
	a.compiled(rs)
	a.engine.Store(filter.NewEngine(rs, a.cfg.CacheSize))

	// Readers before rules: on a restart the rules are already there and
	// every moment without a reader drops (or bypasses) new flows.
	if err := a.openReaders(ctx); err != nil {
		return err
	}
	defer a.closeReaders()
	if err := a.sync(ctx, rs, true); err != nil {
		return err
	}
	a.ready.Store(true)
	backend, why := a.tables.Backend()
	a.log.Info().Str("node", a.cfg.NodeName).Str("iptables_backend", string(backend)).Str("iptables_backend_reason", why).
		Int("queues", int(a.cfg.Rules.Queues)).
		Uint16("queue_base", a.cfg.Rules.QueueBase).Bool("fail_open", a.cfg.Rules.FailOpen).
		Str("deny_action", a.cfg.Rules.Deny.String()).Str("marks", a.cfg.Rules.Marks.String()).
		Str("established", string(a.cfg.Established)).Msg("enforcing")

	var tick, check <-chan time.Time
	if a.cfg.ResyncInterval > 0 {
		t := time.NewTicker(a.cfg.ResyncInterval)
		defer t.Stop()
		tick = t.C
	}
	if a.cfg.CheckInterval > 0 {
		t := time.NewTicker(a.cfg.CheckInterval)
		defer t.Stop()
		check = t.C
	}
	for {
		select {
		case <-ctx.Done():
			a.log.Info().Msg("stopping; rules stay installed so established flows keep flowing")
			return nil
		case err := <-srcDone:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("returned")
			}
			return fmt.Errorf("cluster source stopped: %w", err)
		case <-a.src.Changed():
			a.recompile(ctx)
		case <-tick:
			eng := a.engine.Load()
			if err := a.sync(ctx, eng.Ruleset(), true); err != nil {
				a.log.Error().Err(err).Msg("periodic resync failed")
			}
		case <-check:
			a.checkRules(ctx)
			a.logQueueDrops()
		}
	}
}

// firstState waits for the source's first complete state; nil, nil when
// ctx ends first.
func (a *Agent) firstState(ctx context.Context, srcDone <-chan error) (*cluster.Cluster, error) {
	for {
		if c, ok := a.src.Current(); ok {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case err := <-srcDone:
			if ctx.Err() != nil {
				return nil, nil
			}
			if err == nil {
				err = errors.New("stopped before the first state")
			}
			return nil, fmt.Errorf("cluster source: %w", err)
		case <-a.src.Changed():
		}
	}
}

// compile compiles c, timing and counting it.
func (a *Agent) compile(c *cluster.Cluster) (*filter.Ruleset, error) {
	start := time.Now()
	rs, err := a.compiler.Compile(c)
	if err != nil {
		a.compileErrors.Add(1)
	}
	if a.cfg.OnCompile != nil {
		a.cfg.OnCompile(time.Since(start), err)
	}
	return rs, err
}

func (a *Agent) compiled(rs *filter.Ruleset) {
	a.compiles.Add(1)
	pods, nodes, pols, rules := rs.Counts()
	ev := a.log.Info().Int("pods", pods).Int("nodes", nodes).Int("policies", pols).Int("rules", rules).
		Int("local_addrs", len(rs.LocalPodAddrs(a.cfg.NodeName))).
		Int("local_pod_cidrs", len(rs.LocalPodCIDRs(a.cfg.NodeName)))
	ev.Msg("policies compiled")
	for _, w := range rs.Warnings {
		a.log.Warn().Str("warning", w).Msg("compile warning")
	}
}

// recompile publishes the source's current state. A state that does not
// compile keeps the previous Ruleset (and says so): enforcing yesterday's
// policies beats enforcing none.
func (a *Agent) recompile(ctx context.Context) {
	c, ok := a.src.Current()
	if !ok {
		return
	}
	rs, err := a.compile(c)
	if err != nil {
		a.log.Error().Err(err).Msg("cluster state does not compile; keeping the previous policies")
		return
	}
	a.compiled(rs)
	eng := a.engine.Load()
	old := eng.Ruleset()
	eng.Swap(rs)
	a.onSwap(old, rs)
	if err := a.sync(ctx, rs, false); err != nil {
		a.log.Error().Err(err).Msg("local pod set sync failed; retrying at the next change or resync")
	}
}

// onSwap runs the hook; a hook that panics is logged, not fatal: the new
// policies are already in force and the sets still need syncing.
func (a *Agent) onSwap(old, rs *filter.Ruleset) {
	if a.cfg.OnSwap == nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			a.log.Error().Str("panic", fmt.Sprint(p)).Msg("OnSwap hook panicked")
		}
	}()
	a.cfg.OnSwap(old, rs)
}

// sync makes the local pod sets (addresses and the node's pod CIDRs)
// match rs and, with rules, (re)installs the chains. Sets first: the
// chains match them, and on a fresh node the sets must exist before the
// rules referencing them. The pod CIDR set is what diverts a pod created
// since the last compile, which the engine then denies as unknown.
func (a *Agent) sync(ctx context.Context, rs *filter.Ruleset, rules bool) error {
	addrs := rs.LocalPodAddrs(a.cfg.NodeName)
	// Most changes in a large cluster are elsewhere: when this node's
	// sets already hold what rs says, running ipset again only costs two
	// process starts per recompile. The periodic resync (rules) always
	// rewrites them, repairing whatever someone else changed.
	if rules || !a.setsSynced || !slices.Equal(addrs, a.syncedAddrs) {
		a.setsSynced = false
		if err := a.tables.SyncSets(ctx, addrs); err != nil {
			a.syncErrors.Add(1)
			a.setNotReady(err.Error())
			return err
		}
		a.syncedAddrs = addrs
	}
	a.localAddrs.Store(int64(len(addrs)))
	nets := rs.LocalPodCIDRs(a.cfg.NodeName)
	if rules || !a.setsSynced || !slices.Equal(nets, a.syncedNets) {
		a.setsSynced = false
		if err := a.tables.SyncPodNets(ctx, nets); err != nil {
			a.syncErrors.Add(1)
			a.setNotReady(err.Error())
			return err
		}
		a.syncedNets = nets
	}
	a.setsSynced = true
	a.localPodNets.Store(int64(len(nets)))
	if rules {
		if err := a.tables.Install(ctx, a.cfg.Rules); err != nil {
			a.syncErrors.Add(1)
			a.setNotReady(err.Error())
			return err
		}
	}
	if a.engine.Load() != nil && !a.ready.Load() && a.readersOpen() {
		a.ready.Store(true)
	}
	return nil
}

func (a *Agent) readersOpen() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.readers) > 0
}

func (a *Agent) openReaders(ctx context.Context) error {
	eng := a.engine.Load()
	m := a.cfg.Rules.Marks
	var rs []*dataplane.Reader
	for q := range a.cfg.Rules.Queues {
		r, err := dataplane.Open(ctx, dataplane.ReaderConfig{
			Queue:       a.cfg.Rules.QueueBase + q,
			MaxQueueLen: a.cfg.MaxQueueLen,
			FailOpen:    a.cfg.Rules.FailOpen,
			AllowMark:   m.Allow, DenyMark: m.Deny, MarkMask: m.Mask,
			Decider:    eng,
			NewDecoder: func() dataplane.Decoder { return filter.NewDecoder() },
			Observer:   a.cfg.Observer,
			Audit:      a.cfg.Audit,
			Log:        a.log,
		})
		if err != nil {
			for _, r := range rs {
				r.Close()
			}
			return err
		}
		rs = append(rs, r)
	}
	a.mu.Lock()
	a.readers = rs
	a.mu.Unlock()
	return nil
}

func (a *Agent) closeReaders() {
	a.mu.Lock()
	rs := a.readers
	a.readers = nil
	a.mu.Unlock()
	a.setNotReady("stopped")
	for _, r := range rs {
		if err := r.Close(); err != nil {
			a.log.Warn().Err(err).Uint16("queue", r.Queue()).Msg("closing queue")
		}
	}
}

// Status is what /debug/counters serves.
type Status struct {
	Ready         bool                               `json:"ready"`
	NotReady      string                             `json:"not_ready,omitempty"`
	Total         dataplane.CounterValues            `json:"total"`
	Queues        map[uint16]dataplane.CounterValues `json:"queues"`
	Kernel        []dataplane.QueueStats             `json:"kernel_queues,omitempty"`
	KernelError   string                             `json:"kernel_queues_error,omitempty"`
	CacheHits     uint64                             `json:"cache_hits"`
	CacheMisses   uint64                             `json:"cache_misses"`
	Compiles      uint64                             `json:"compiles"`
	CompileErrors uint64                             `json:"compile_errors"`
	SyncErrors    uint64                             `json:"sync_errors"`
	LocalAddrs    int64                              `json:"local_addrs"`
	// LocalPodCIDRs counts the local node's pod CIDRs diverted (0: the
	// node has no spec.podCIDR(s), and unsynced pods are not diverted).
	LocalPodCIDRs int64 `json:"local_pod_cidrs"`
	// RuleChecks counts the checks for our rules and sets; RulesRestored
	// those that found something missing and put it back; LastRestoreMS
	// is how long the last restore took (see Config.CheckInterval).
	RuleChecks      uint64 `json:"rule_checks"`
	RuleCheckErrors uint64 `json:"rule_check_errors"`
	RulesRestored   uint64 `json:"rules_restored"`
	LastRestoreMS   int64  `json:"last_restore_ms"`
	// InvalidDropped counts the packets to or from local pods dropped
	// because conntrack marked them INVALID, as of the last rules check
	// (the kernel's counter: it survives agent restarts);
	// InvalidCounterResets how often that counter was found reset.
	InvalidDropped       uint64 `json:"invalid_dropped"`
	InvalidCounterResets uint64 `json:"invalid_counter_resets"`
}

// Status snapshots the agent's counters.
func (a *Agent) Status() Status {
	s := Status{
		Ready:         a.ready.Load(),
		Queues:        map[uint16]dataplane.CounterValues{},
		Compiles:      a.compiles.Load(),
		CompileErrors: a.compileErrors.Load(),
		SyncErrors:    a.syncErrors.Load(),
		LocalAddrs:    a.localAddrs.Load(),
		LocalPodCIDRs: a.localPodNets.Load(),

		RuleChecks:      a.checks.checks.Load(),
		RuleCheckErrors: a.checks.errors.Load(),
		RulesRestored:   a.checks.restored.Load(),
		LastRestoreMS:   a.checks.lastRestoreMS.Load(),
	}
	s.InvalidDropped, s.InvalidCounterResets = a.tables.InvalidDropped()
	if !s.Ready {
		if p := a.notReady.Load(); p != nil {
			s.NotReady = *p
		}
	}
	a.mu.Lock()
	for _, r := range a.readers {
		v := r.Counters().Values()
		s.Queues[r.Queue()] = v
		s.Total = s.Total.Add(v)
	}
	a.mu.Unlock()
	if eng := a.engine.Load(); eng != nil {
		s.CacheHits, s.CacheMisses = eng.CacheStats()
	}
	k, err := dataplane.ReadQueueStats()
	if err != nil {
		s.KernelError = err.Error()
	}
	s.Kernel = k
	return s
}

// InvalidDropped returns the packets to or from local pods dropped because
// conntrack marked them INVALID, as of the last rules check, and how often
// that kernel counter was found reset.
func (a *Agent) InvalidDropped() (dropped, resets uint64) { return a.tables.InvalidDropped() }

// Engine returns the verdict engine the readers share; nil until the first
// state has compiled.
func (a *Agent) Engine() *filter.Engine { return a.engine.Load() }

// Ready reports whether the agent enforces: first state compiled, queues
// bound, rules and sets installed.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Handler serves /healthz (the process is alive), /readyz (Ready) and
// /debug/counters (Status as JSON).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.ready.Load() {
			fmt.Fprintln(w, "ready")
			return
		}
		why := "not ready"
		if p := a.notReady.Load(); p != nil {
			why = "not ready: " + *p
		}
		http.Error(w, why, http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /debug/counters", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.Status())
	})
	for pattern, h := range a.cfg.Handlers {
		mux.Handle(pattern, h)
	}
	return mux
}

// reserved are the agent's own paths.
var reserved = map[string]bool{"GET /healthz": true, "GET /readyz": true, "GET /debug/counters": true}

// checkPattern refuses what would make ServeMux panic: a nil handler, a
// pattern it cannot parse, or one that clashes with the agent's own.
func checkPattern(pattern string, h http.Handler) (err error) {
	if h == nil {
		return fmt.Errorf("handler for %q is nil", pattern)
	}
	if reserved[pattern] {
		return fmt.Errorf("handler pattern %q is the agent's own", pattern)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler pattern %q: %v", pattern, p)
		}
	}()
	mux := http.NewServeMux()
	for r := range reserved {
		mux.HandleFunc(r, func(http.ResponseWriter, *http.Request) {})
	}
	mux.Handle(pattern, h)
	return nil
}
