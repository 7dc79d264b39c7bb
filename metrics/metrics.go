// Package metrics exposes the agent's Prometheus metrics, health and
// readiness endpoints.
//
// Everything is registered on a registry of its own (never the global
// default one), so that tests and several agents in one process do not
// collide. The verdict path feeds it through OnVerdict, which only touches
// label children resolved at construction: no label lookup, no allocation
// per packet. What other components already count (the kernel's queue
// statistics, the flow log's and capture's totals) is read at scrape time
// instead of being mirrored.
package metrics

import (
	"fmt"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nfqpolicy/nfqpolicy/conntrack"
	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

const namespace = "nfqpolicy"

// LatencyBuckets are the decision latency histogram's bounds, in seconds:
// 1µs to 10ms. A cache hit takes about a microsecond, a compiled lookup a
// few; anything past a millisecond is the queue backing up.
var LatencyBuckets = []float64{1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3}

// CompileBuckets bound the compile duration histogram, in seconds.
var CompileBuckets = []float64{1e-3, 5e-3, 10e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10}

// Totals is a snapshot of counters another component keeps.
type Totals struct {
	Written, Lost, RateLimited uint64
}

// Options say where the metrics read at scrape time come from. Every
// function may be nil (the metric is then not exported).
type Options struct {
	// Mode labels the verdict counter: "enforce" or "audit".
	Mode string
	// QueueStatsPath is the kernel's nfnetlink_queue statistics file
	// (default dataplane.ProcQueuePath; "-" disables).
	QueueStatsPath string
	// FlowLog and Capture return their components' totals.
	FlowLog func() Totals
	Capture func() Totals
	// InvalidDropped returns the packets to or from local pods dropped
	// because conntrack marked them INVALID (the agent's rules check reads
	// the kernel's counter).
	InvalidDropped func() uint64
	// Ready says whether the agent is ready (nil error) or why not.
	Ready func() error
	// Ruleset returns the policies enforced now (nil before the first
	// compile); metrics about them are read from it at scrape time.
	Ruleset func() *filter.Ruleset
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool
	// NoRuntime leaves out the Go runtime and process collectors (tests).
	NoRuntime bool
}

// Metrics is the agent's metric set. Its methods are safe for concurrent
// use.
type Metrics struct {
	o   Options
	reg *prometheus.Registry

	verdicts      [2]prometheus.Counter // [allow]
	malformed     prometheus.Counter
	latency       [2]prometheus.Observer // [cached]
	cache         [2]prometheus.Counter  // [hit]
	compiles      [2]prometheus.Counter  // [failed]
	compileTime   prometheus.Histogram
	rechecks      [2]prometheus.Counter // [failed]
	rechecked     prometheus.Counter
	cut           prometheus.Counter
	recheckTime   prometheus.Histogram
	auditVec      *prometheus.CounterVec
	auditChildren sync.Map // auditKey -> prometheus.Counter
	cnpVec        *prometheus.CounterVec
	cnpMu         sync.RWMutex
	cnpChildren   map[cnpKey]prometheus.Counter
}

// cnpKey is one child of cluster_policy_rules_total. Its strings come from
// the Ruleset (built at compile time) and constants, so looking a child up
// per flow allocates nothing.
type cnpKey struct {
	policy, tier, action string
}

type auditKey struct {
	policy    string
	wouldDeny bool
}

// New builds the metrics and their registry.
func New(o Options) (*Metrics, error) {
	if o.Mode == "" {
		o.Mode = "enforce"
	}
	if o.Mode != "enforce" && o.Mode != "audit" {
		return nil, fmt.Errorf("metrics: mode %q: want enforce or audit", o.Mode)
	}
	if o.QueueStatsPath == "" {
		o.QueueStatsPath = dataplane.ProcQueuePath
	}
	m := &Metrics{o: o, reg: prometheus.NewRegistry()}

	verdicts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "verdicts_total",
		Help: "Flows decided, by verdict and enforcement mode.",
	}, []string{"verdict", "mode"})
	m.verdicts[0] = verdicts.WithLabelValues("deny", o.Mode)
	m.verdicts[1] = verdicts.WithLabelValues("allow", o.Mode)
	m.malformed = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "malformed_packets_total",
		Help: "Packets that could not be decoded (denied).",
	})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "decision_latency_seconds",
		Help:    "Time from reading a packet to its verdict, by whether the flow cache answered.",
		Buckets: LatencyBuckets,
	}, []string{"cached"})
	m.latency[0] = latency.WithLabelValues("false")
	m.latency[1] = latency.WithLabelValues("true")
	cache := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cache_lookups_total",
		Help: "Flow cache lookups by result (hit or miss).",
	}, []string{"result"})
	m.cache[0] = cache.WithLabelValues("miss")
	m.cache[1] = cache.WithLabelValues("hit")
	compiles := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "compiles_total",
		Help: "Policy compilations by result (ok or error).",
	}, []string{"result"})
	m.compiles[0] = compiles.WithLabelValues("ok")
	m.compiles[1] = compiles.WithLabelValues("error")
	m.compileTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "compile_duration_seconds",
		Help: "Time to compile the cluster's policies.", Buckets: CompileBuckets,
	})
	rechecks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "conntrack_rechecks_total",
		Help: "Passes over established connections after a policy change, by result (ok or error).",
	}, []string{"result"})
	m.rechecks[0] = rechecks.WithLabelValues("ok")
	m.rechecks[1] = rechecks.WithLabelValues("error")
	m.recheckTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "conntrack_recheck_duration_seconds",
		Help: "Time to re-decide the established connections.", Buckets: CompileBuckets,
	})
	m.rechecked = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "conntrack_rechecked_total",
		Help: "Established connections re-decided after a policy change.",
	})
	m.cut = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "conntrack_cut_total",
		Help: "Established connections cut because a policy change denies them.",
	})
	m.auditVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "audit_verdicts_total",
		Help: "Flows whose verdict a staged (audit-mode) policy would change, by staged policy and audit verdict (would-deny, would-allow).",
	}, []string{"policy", "audit_verdict"})

	m.cnpVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cluster_policy_rules_total",
		Help: "Flow sides a ClusterNetworkPolicy rule decided (Accept, Deny) or passed on (Pass), by policy, tier (Admin, Baseline) and action; a flow counts once per side.",
	}, []string{"policy", "tier", "action"})
	m.cnpChildren = make(map[cnpKey]prometheus.Counter)

	cs := []prometheus.Collector{verdicts, m.malformed, latency, cache, compiles, m.compileTime, rechecks, m.recheckTime, m.rechecked, m.cut, m.auditVec, m.cnpVec}
	if o.QueueStatsPath != "-" {
		cs = append(cs, newQueueCollector(o.QueueStatsPath))
	}
	if o.FlowLog != nil {
		cs = append(cs, newTotalsCollector("flowlog_records_total", "Flow log records by result (written, lost: buffer full, rate_limited).", o.FlowLog))
	}
	if o.InvalidDropped != nil {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "invalid_dropped_total",
			Help: "Packets to or from local pods dropped because conntrack marked them INVALID (malformed, or outside any known connection); never queued, so in no verdict count. Read from the kernel's rule counter at each rules check, so it survives agent restarts.",
		}, func() float64 { return float64(o.InvalidDropped()) }))
	}
	if o.Ruleset != nil {
		cs = append(cs, newDomainNamesCollector(o.Ruleset))
	}
	if o.Capture != nil {
		cs = append(cs, newTotalsCollector("capture_packets_total", "Captured packets by result (written, lost: buffer full).", o.Capture))
	}
	if !o.NoRuntime {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, c := range cs {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	return m, nil
}

// Registry returns the registry, for components that add their own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// OnVerdict counts one decided flow. Flows staged policies would decide
// differently are also counted per staged policy; naming those policies
// allocates, so only that (rollout-time) path does.
func (m *Metrics) OnVerdict(_ filter.Flow, v filter.Verdict, _ []byte, _ time.Time, latency time.Duration) {
	m.verdicts[b2i(v.Allow)].Inc()
	if v.Egress.Decision == filter.Malformed || v.Ingress.Decision == filter.Malformed {
		m.malformed.Inc()
		return
	}
	m.cache[b2i(v.Cached)].Inc()
	m.latency[b2i(v.Cached)].Observe(latency.Seconds())
	if v.AuditDiffers() && v.Ruleset != nil {
		for _, p := range v.Ruleset.StagedCause(v) {
			m.auditCounter(p, !v.Audit.Allow).Inc()
		}
	}
	if v.Ruleset != nil {
		m.countClusterRules(v.Ruleset, &v.Egress, "egress")
		m.countClusterRules(v.Ruleset, &v.Ingress, "ingress")
	}
}

// countClusterRules counts the ClusterNetworkPolicy rules that decided or
// passed on side s.
func (m *Metrics) countClusterRules(rs *filter.Ruleset, s *filter.Side, direction string) {
	if s.Pass != 0 {
		if ref, ok := rs.PassRule(*s); ok {
			m.cnpCounter(cnpKey{ref.Policy, ref.Tier, ref.Action}).Inc()
		}
	}
	switch s.Decision {
	case filter.AdminAccepted, filter.AdminDenied, filter.BaselineAccepted, filter.BaselineDenied, filter.BaselinePassed:
		if ref, ok := rs.DecidingRule(*s, direction); ok {
			m.cnpCounter(cnpKey{ref.Policy, ref.Tier, ref.Action}).Inc()
		}
	}
}

func (m *Metrics) cnpCounter(k cnpKey) prometheus.Counter {
	m.cnpMu.RLock()
	c, ok := m.cnpChildren[k]
	m.cnpMu.RUnlock()
	if ok {
		return c
	}
	m.cnpMu.Lock()
	defer m.cnpMu.Unlock()
	if c, ok := m.cnpChildren[k]; ok {
		return c
	}
	c = m.cnpVec.WithLabelValues(k.policy, k.tier, k.action)
	m.cnpChildren[k] = c
	return c
}

func (m *Metrics) auditCounter(policy string, wouldDeny bool) prometheus.Counter {
	k := auditKey{policy, wouldDeny}
	if c, ok := m.auditChildren.Load(k); ok {
		return c.(prometheus.Counter)
	}
	av := "would-allow"
	if wouldDeny {
		av = "would-deny"
	}
	c, _ := m.auditChildren.LoadOrStore(k, m.auditVec.WithLabelValues(policy, av))
	return c.(prometheus.Counter)
}

// ObserveCompile records one compilation.
func (m *Metrics) ObserveCompile(d time.Duration, err error) {
	m.compiles[b2i(err != nil)].Inc()
	m.compileTime.Observe(d.Seconds())
}

// ObserveRecheck records one pass over established connections; it fits
// conntrack.Rechecker.SetObserver.
func (m *Metrics) ObserveRecheck(st conntrack.Stats, err error) {
	m.rechecks[b2i(err != nil)].Inc()
	m.recheckTime.Observe(st.Duration.Seconds())
	m.rechecked.Add(float64(max(st.Checked, 0)))
	m.cut.Add(float64(max(st.Cut, 0)))
}

// Register adds /metrics, /healthz, /readyz (and /debug/pprof/ when
// enabled) to mux, so that the debug API can share the health port.
func (m *Metrics) Register(mux *http.ServeMux) {
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// One failing collector must not hide the others.
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg,
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		var err error
		if m.o.Ready != nil {
			err = m.o.Ready()
		}
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if m.o.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
}

// Handler returns a mux serving what Register adds.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	m.Register(mux)
	return mux
}
