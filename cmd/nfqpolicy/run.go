package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"k8s.io/klog/v2"

	"github.com/nfqpolicy/nfqpolicy/conntrack"
	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/dataplane/agent"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
	"github.com/nfqpolicy/nfqpolicy/metrics"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// runFlags are the flags of `nfqpolicy run`, parsed into an agent.Config.
type runFlags struct {
	nodeName    string
	snapshots   stringList
	poll        time.Duration
	kubeconfig  string
	queues      uint
	queueNum    uint
	queueLen    uint
	failOpen    bool
	denyAction  string
	invalid     string
	markBits    string
	established string
	mode        string
	cacheSize   int
	logLevel    string
	healthAddr  string
	backend     string
	families    string
	resync      time.Duration
	rulesCheck  time.Duration
	printRules  bool
	obs         observeFlags
	// informer coalescing (k8swatch.InformerOptions)
	rebuildQuiet, rebuildMax time.Duration
}

func newRunFlags(stderr io.Writer) (*flag.FlagSet, *runFlags) {
	f := &runFlags{}
	fs := flag.NewFlagSet("nfqpolicy run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name as the cluster knows it (default $NODE_NAME)")
	fs.Var(&f.snapshots, "snapshot", "read the cluster state from this file or directory instead of the API server (repeatable)")
	fs.DurationVar(&f.poll, "snapshot-poll", time.Second, "how often snapshot files are checked for changes")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for the API server (default: in-cluster, then $KUBECONFIG)")
	fs.UintVar(&f.queues, "queues", uint(runtime.NumCPU()), "number of NFQUEUE queues (one reader goroutine each; >1 uses --queue-balance)")
	fs.UintVar(&f.queueNum, "queue-num", 100, "first NFQUEUE queue number")
	fs.UintVar(&f.queueLen, "queue-len", dataplane.DefaultMaxQueueLen, "kernel-side length of each queue")
	fs.BoolVar(&f.failOpen, "fail-open", false, "let new flows through while no agent listens or a queue is full (default: they are dropped)")
	fs.StringVar(&f.invalid, "invalid", "", "packets to or from local pods that conntrack marks INVALID (malformed, outside any known connection): drop (counted in nfqpolicy_invalid_dropped_total), or pass (asymmetric routing); default drop, pass with --mode audit")
	fs.StringVar(&f.denyAction, "deny-action", "drop", "what a denied flow gets: drop, or reject (TCP reset / ICMP port unreachable)")
	fs.StringVar(&f.markBits, "mark-bits", iptables.DefaultMarks.String(), "packet/connmark bits we own, ALLOW,DENY/MASK (must avoid kube-proxy's 0x4000 and 0x8000)")
	fs.StringVar(&f.established, "established", "keep", "on policy change, established flows: keep, or recheck (re-decide and cut the now-denied)")
	fs.StringVar(&f.mode, "mode", "enforce", "enforce, or audit: decide, log and count every flow but accept them all (per-policy audit: annotation nfqpolicy.io/mode=audit; per-namespace: label nfqpolicy.io/mode=audit)")
	fs.IntVar(&f.cacheSize, "cache-size", 65536, "flow verdict cache entries (0 disables the cache)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error (debug logs every verdict)")
	fs.StringVar(&f.healthAddr, "health-addr", "127.0.0.1:9901", "serve /healthz, /readyz and /debug/counters here (empty: off)")
	fs.StringVar(&f.backend, "iptables-backend", "auto", "iptables binaries: auto (the backend holding the node's KUBE-* chains, kube-proxy's; nft when none), legacy or nft")
	fs.StringVar(&f.families, "ip-families", "auto", "IP families to divert: auto (IPv6 too unless the kernel has none), ipv4, ipv6 or ipv4,ipv6")
	fs.DurationVar(&f.resync, "resync", time.Minute, "re-install rules and sets this often to repair what others flushed (0: never)")
	fs.DurationVar(&f.rebuildQuiet, "rebuild-quiet", 0, "recompile once no API event arrived for this long (0: the default, 100ms)")
	fs.DurationVar(&f.rebuildMax, "rebuild-max-delay", 0, "under continuous changes, recompile at least this often (0: the default, 300ms)")
	fs.DurationVar(&f.rulesCheck, "rules-check", time.Second, "check this often that our jumps, chains and sets are still there, and restore them at once if not (0: only --resync repairs)")
	fs.BoolVar(&f.printRules, "print-rules", false, "print the iptables-restore input these flags install on a clean node (both families) and exit")
	f.obs.register(fs)
	return fs, f
}

// config validates the flags and turns them into an agent configuration.
func (f *runFlags) config(log zerolog.Logger) (agent.Config, error) {
	var errs []error
	if f.nodeName == "" {
		errs = append(errs, errors.New("--node-name (or NODE_NAME) is required"))
	}
	if f.queues < 1 || f.queues > 1024 {
		errs = append(errs, fmt.Errorf("--queues %d: want 1..1024", f.queues))
	}
	if f.queueNum > 65535 || f.queueNum+f.queues-1 > 65535 {
		errs = append(errs, fmt.Errorf("--queue-num %d with --queues %d: queue numbers end at 65535", f.queueNum, f.queues))
	}
	if f.queueLen < 1 || f.queueLen > 1<<20 {
		errs = append(errs, fmt.Errorf("--queue-len %d: want 1..1048576", f.queueLen))
	}
	if f.cacheSize < 0 {
		errs = append(errs, fmt.Errorf("--cache-size %d: must not be negative", f.cacheSize))
	}
	if f.resync < 0 {
		errs = append(errs, fmt.Errorf("--resync %v: must not be negative", f.resync))
	}
	if f.rulesCheck < 0 {
		errs = append(errs, fmt.Errorf("--rules-check %v: must not be negative", f.rulesCheck))
	}
	deny, err := iptables.ParseDenyAction(f.denyAction)
	errs = append(errs, err)
	marks, err := iptables.ParseMarks(f.markBits)
	errs = append(errs, err)
	est, err := agent.ParseEstablished(f.established)
	errs = append(errs, err)
	backend, err := iptables.ParseBackend(f.backend)
	errs = append(errs, err)
	fams, err := iptables.ParseFamilies(f.families)
	errs = append(errs, err)
	if f.mode != "enforce" && f.mode != "audit" {
		errs = append(errs, fmt.Errorf("--mode %q: want enforce or audit", f.mode))
	}
	// Audit mode promises not to touch traffic: it passes INVALID packets
	// too unless told otherwise.
	passInvalid := f.mode == "audit"
	switch f.invalid {
	case "":
	case "drop":
		passInvalid = false
	case "pass":
		passInvalid = true
	default:
		errs = append(errs, fmt.Errorf("--invalid %q: want drop or pass", f.invalid))
	}
	if err := errors.Join(errs...); err != nil {
		return agent.Config{}, err
	}
	return agent.Config{
		NodeName: f.nodeName,
		Rules: iptables.Config{
			Marks:       marks,
			QueueBase:   uint16(f.queueNum),
			Queues:      uint16(f.queues),
			FailOpen:    f.failOpen,
			Deny:        deny,
			PassInvalid: passInvalid,
		},
		Backend:        backend,
		Families:       fams,
		CacheSize:      f.cacheSize,
		MaxQueueLen:    uint32(f.queueLen),
		Established:    est,
		ResyncInterval: f.resync,
		CheckInterval:  f.rulesCheck,
		HealthAddr:     f.healthAddr,
		Audit:          f.mode == "audit",
		Log:            log,
	}, nil
}

// runLogger returns the JSON logger every command of the agent logs with.
func runLogger(w io.Writer, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// cmdRun is the node agent. It exits 0 when ctx is cancelled (SIGTERM,
// SIGINT), leaving the rules installed (see package agent for why), 1 when
// it fails while running, and 2 for bad flags or a host it cannot run on.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, f := newRunFlags(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nfqpolicy run: unexpected arguments %q\n", fs.Args())
		return 2
	}
	log, err := runLogger(stderr, f.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "nfqpolicy run: %v\n", err)
		return 2
	}
	log = log.With().Str("component", "agent").Logger()
	cfg, err := f.config(log)
	if err != nil {
		log.Error().Err(err).Msg("bad flags")
		return 2
	}
	if f.printRules {
		for _, fam := range cfg.Families {
			fmt.Fprintf(stdout, "# %s: %s-restore --noflush\n", fam, map[iptables.Family]string{iptables.IPv4: "iptables", iptables.IPv6: "ip6tables"}[fam])
			fmt.Fprint(stdout, iptables.RenderInstall(cfg.Rules, fam, ""))
		}
		return 0
	}
	if err := agent.Preflight(cfg.Backend, cfg.Families...); err != nil {
		log.Error().Err(err).Msg("cannot run on this host")
		return 2
	}
	if procs, ok := readerProcs(runtime.GOMAXPROCS(0), int(cfg.Rules.Queues), os.Getenv("GOMAXPROCS")); ok {
		runtime.GOMAXPROCS(procs)
		log.Info().Int("gomaxprocs", procs).Int("queues", int(cfg.Rules.Queues)).Msg("one P per queue reader on top of the runtime's default")
	}
	var src k8swatch.Source
	if len(f.snapshots) > 0 {
		src = k8swatch.NewSnapshotSource(f.snapshots, f.poll, log)
	} else {
		rc, err := k8swatch.RESTConfig(f.kubeconfig)
		if err != nil {
			log.Error().Err(err).Msg("no cluster state: pass --snapshot or give access to the API server")
			return 2
		}
		// client-go logs through klog; make its lines JSON like ours.
		klog.SetLogger(k8swatch.KlogLogger(log.With().Str("component", "client-go").Logger()))
		is, err := k8swatch.NewInformerSource(rc, k8swatch.InformerOptions{Quiet: f.rebuildQuiet, MaxDelay: f.rebuildMax}, log)
		if err != nil {
			log.Error().Err(err).Msg("API server source")
			return 2
		}
		src = is
	}
	var rechecker *conntrack.Rechecker
	if cfg.Established == agent.Recheck {
		// Deny values are never saved in the connmark (see package
		// iptables), so only allowed connections have anything to recheck.
		rc, err := conntrack.NewRechecker(cfg.Rules.Marks.Allow, 0, cfg.Rules.Marks.Mask, log)
		if err != nil {
			log.Error().Err(err).Msg("conntrack recheck")
			return 2
		}
		defer rc.Close()
		cfg.OnSwap = rc.OnSwap
		rechecker = rc
	}
	obs, err := f.obs.start(cfg.NodeName, f.mode)
	if err != nil {
		log.Error().Err(err).Msg("flow log / capture")
		return 2
	}
	log = log.With().Str("run", obs.run).Logger()
	cfg.Log = log
	// Deferred before a.Run returns, so it runs after the readers stopped.
	defer func() {
		if err := obs.Close(); err != nil {
			log.Error().Err(err).Msg("closing flow log / capture")
		}
	}()
	var a *agent.Agent
	mo := metrics.Options{Mode: f.mode, Pprof: f.obs.pprof, Ready: func() error {
		if a != nil && a.Ready() {
			return nil
		}
		return errors.New("not enforcing yet")
	}, InvalidDropped: func() uint64 {
		if a == nil {
			return 0
		}
		n, _ := a.InvalidDropped()
		return n
	}, Ruleset: func() *filter.Ruleset {
		if a == nil || a.Engine() == nil {
			return nil
		}
		return a.Engine().Ruleset()
	}}
	obs.metricsOptions(&mo)
	m, err := metrics.New(mo)
	if err != nil {
		log.Error().Err(err).Msg("metrics")
		return 2
	}
	cfg.Observer = append(dataplane.Observers{m}, obs.list...)
	cfg.OnCompile = m.ObserveCompile
	state := liveState(func() *filter.Engine {
		if a == nil {
			return nil
		}
		return a.Engine()
	})
	explain := func(from, to string, port int, proto string, family int) (any, error) {
		c, ok := src.Current()
		rs := state()
		if !ok || rs == nil {
			return nil, errors.New("no policies compiled yet")
		}
		pr, err := filter.ProtoNumber(proto)
		if err != nil {
			return nil, err
		}
		return explainFlow(c, rs, from, to, portSpec{port: port, proto: pr}, family)
	}
	dbgSrv, dbg, err := f.obs.debugServer(obs, cfg.NodeName, f.mode, state, explain)
	if err != nil {
		log.Error().Err(err).Msg("debug API")
		return 2
	}
	cfg.Handlers = map[string]http.Handler{"GET /metrics": m.Handler(), "/debug/pprof/": m.Handler(), "/debug/": dbg}
	if is, ok := src.(*k8swatch.InformerSource); ok {
		registerAPIServerMetrics(m.Registry(), is)
		cfg.Handlers["GET /healthz/apiserver"] = apiServerHealth(is)
	}
	if rechecker != nil {
		rechecker.SetObserver(m.ObserveRecheck)
	}
	a, err = agent.New(cfg, src)
	if err != nil {
		log.Error().Err(err).Msg("bad configuration")
		return 2
	}
	f.obs.serveDebug(ctx, dbgSrv, log)
	if err := a.Run(ctx); err != nil {
		log.Error().Err(err).Msg("agent failed")
		return 1
	}
	return 0
}

// registerAPIServerMetrics exports whether the informers reach the API
// server and how often the cluster state was rebuilt, read at scrape time.
func registerAPIServerMetrics(reg prometheus.Registerer, is *k8swatch.InformerSource) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nfqpolicy_apiserver_connected",
			Help: "1 while the last request to the API server succeeded; the agent keeps enforcing the last known state while it is 0."},
			func() float64 {
				if is.Connected() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nfqpolicy_cluster_rebuilds_total",
			Help: "Cluster state snapshots published by the informer source (bursts of changes are coalesced)."},
			func() float64 { return float64(is.Rebuilds()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nfqpolicy_watch_events_total",
			Help: "Watch events the informers delivered (initial list items included): what this agent costs the API server."},
			func() float64 { all, _ := is.Events(); return float64(all) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nfqpolicy_watch_events_relevant_total",
			Help: "Watch events that changed something the compiler reads; minus the rebuilds, what coalescing saved."},
			func() float64 { _, rel := is.Events(); return float64(rel) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nfqpolicy_cluster_network_policies_watched",
			Help: "1 when the ClusterNetworkPolicy CRD is served and all its objects are in the state the agent enforces; 0 while the CRD is not installed (or its informer has not synced yet)."},
			func() float64 {
				if is.ClusterPolicyVersion() != "" {
					return 1
				}
				return 0
			}),
	)
}

// apiServerHealth serves whether the informers reach the API server: 200
// "connected", or 503 saying the agent enforces the last state it read.
// It is not part of /readyz on purpose: an agent cut off from the API
// server still enforces, and a failing readiness would stall a rollout.
func apiServerHealth(is *k8swatch.InformerSource) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if is.Connected() {
			fmt.Fprintln(w, "connected")
			return
		}
		http.Error(w, "API server unreachable: enforcing the last state read from it", http.StatusServiceUnavailable)
	})
}

// readerProcs is the GOMAXPROCS the agent runs with: the runtime's default
// (procs: the CPUs it may use) plus one per queue reader, unless the
// operator set GOMAXPROCS (env). A reader blocks in read(2) and keeps its
// P while it waits (the runtime's rule for a goroutine in a system call),
// using no CPU. With one P per CPU, once every reader waits no P is idle,
// and the runtime's monitor then takes each waiting reader's P away after
// 20 µs and wakes a thread to use it: on two CPUs with two busy queues,
// a third more CPU and context switches per new flow than with one queue
// (docs/performance.md, suspect 4). The extra Ps are tokens for waiting,
// not CPUs: a reader that runs has a packet to answer. Setting GOMAXPROCS
// stops the runtime from following later changes of the CPU limit.
func readerProcs(procs, queues int, env string) (int, bool) {
	if env != "" || queues < 1 {
		return 0, false
	}
	return procs + queues, true
}
