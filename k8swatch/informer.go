package k8swatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/nfqpolicy/nfqpolicy/cluster"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// InformerOptions tunes the informer source. The zero value is usable.
type InformerOptions struct {
	// Quiet is how long the source waits after the last event before it
	// rebuilds the cluster.Cluster, so that a burst (a rollout, a node draining)
	// costs one recompilation instead of thousands. Default 100ms.
	Quiet time.Duration
	// MaxDelay bounds how long a change can wait for a rebuild while events
	// keep arriving. Default 300ms: under steady churn (bench/scale, 100
	// changes/s at 10,000 pods and 2,000 policies) it is the rebuild
	// period, so a change waits up to MaxDelay plus a compile (about
	// 0.1 s of CPU there) before it is enforced; 1 s put the p99 past 1 s,
	// while 300 ms costs about 0.3 core of compiles.
	MaxDelay time.Duration
	// Resync is client-go's periodic resync. Zero (the default) disables it:
	// the watch is authoritative and a resync would only cost rebuilds.
	Resync time.Duration
	// CRDCheck is how often discovery is asked whether (and in which
	// version) the ClusterNetworkPolicy CRD is served, so that installing,
	// upgrading or removing it takes effect without a restart. Default 30s.
	CRDCheck time.Duration
}

func (o InformerOptions) withDefaults() InformerOptions {
	if o.Quiet <= 0 {
		o.Quiet = 100 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 300 * time.Millisecond
	}
	if o.MaxDelay < o.Quiet {
		o.MaxDelay = o.Quiet
	}
	if o.CRDCheck <= 0 {
		o.CRDCheck = 30 * time.Second
	}
	return o
}

// InformerSource follows the API server with client-go shared informers for
// Pods, Namespaces, NetworkPolicies, Nodes and, when their CRD is served,
// ClusterNetworkPolicies, and publishes an immutable cluster.Cluster after
// every (coalesced) change. It implements Source.
type InformerSource struct {
	opts    InformerOptions
	log     zerolog.Logger
	factory informers.SharedInformerFactory

	namespaces, nodes, pods, policies cache.SharedIndexInformer

	cur     atomic.Pointer[cluster.Cluster]
	dirty   chan struct{} // an event arrived since the last rebuild
	changed chan struct{}

	rebuilds  atomic.Uint64
	events    atomic.Uint64 // watch events delivered (list items included)
	relevant  atomic.Uint64 // of which changed what the compiler reads
	connected atomic.Bool
	errMu     sync.Mutex
	lastErr   error

	started atomic.Bool

	// validated caches, per policy "ns/name", the validation result of the
	// version last seen. Only the rebuild goroutine touches it.
	validated map[string]policyCheck

	// The last lists of pods and policies in order, so that a rebuild
	// sorts only what changed. Only the rebuild goroutine touches them.
	podOrder    sortedList[*corev1.Pod]
	policyOrder sortedList[*networkingv1.NetworkPolicy]

	// cnp follows ClusterNetworkPolicies; nil without a dynamic client.
	cnp *cnpWatch
	// cnpChecked is validated for ClusterNetworkPolicies, by name.
	cnpChecked map[string]cnpCheck
	// cnpPublished is the version (string) of the ClusterNetworkPolicies
	// the last published state holds, complete; "" for none.
	cnpPublished atomic.Value
}

var _ Source = (*InformerSource)(nil)

// NewInformerSource returns a source that watches the API server cfg points
// at. Nothing is contacted until Run.
func NewInformerSource(cfg *rest.Config, opts InformerOptions, log zerolog.Logger) (*InformerSource, error) {
	if cfg == nil {
		return nil, errors.New("informer source: nil rest config")
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "nfqpolicy"
	}
	// Protobuf halves the decode cost of large pod lists; the types we read
	// are all built in, so the server always supports it.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	s := &InformerSource{}
	// The transport sees every request, including the relists client-go
	// retries with backoff, so it is where reachability is observed.
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if err != nil {
				if req.Context().Err() == nil {
					s.setDisconnected(fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err))
				}
				return resp, err
			}
			s.setConnected()
			return resp, nil
		})
	})
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("informer source: client for %s: %w", cfg.Host, err)
	}
	// Custom resources are served in JSON only.
	dcfg := rest.CopyConfig(cfg)
	dcfg.ContentType, dcfg.AcceptContentTypes = "", ""
	dyn, err := dynamic.NewForConfig(dcfg)
	if err != nil {
		return nil, fmt.Errorf("informer source: dynamic client for %s: %w", cfg.Host, err)
	}
	return newInformerSource(s, client, dyn, opts, log)
}

// NewInformerSourceForClient is NewInformerSource for an existing client
// (tests use client-go's fake clientset). Connected reports true once the
// caches have synced, since there is no transport to observe. dyn, when not
// nil, is the dynamic client ClusterNetworkPolicies are read with (their
// CRD is looked up with client's discovery); without it they are not
// watched.
func NewInformerSourceForClient(client kubernetes.Interface, dyn dynamic.Interface, opts InformerOptions, log zerolog.Logger) (*InformerSource, error) {
	if client == nil {
		return nil, errors.New("informer source: nil client")
	}
	return newInformerSource(&InformerSource{}, client, dyn, opts, log)
}

func newInformerSource(s *InformerSource, client kubernetes.Interface, dyn dynamic.Interface, opts InformerOptions, log zerolog.Logger) (*InformerSource, error) {
	s.opts = opts.withDefaults()
	s.log = log.With().Str("component", "k8swatch").Logger()
	s.dirty = make(chan struct{}, 1)
	s.changed = make(chan struct{}, 1)
	s.validated = map[string]policyCheck{}
	s.factory = informers.NewSharedInformerFactoryWithOptions(client, s.opts.Resync,
		informers.WithTransform(stripObject))
	s.namespaces = s.factory.Core().V1().Namespaces().Informer()
	s.nodes = s.factory.Core().V1().Nodes().Informer()
	s.pods = s.factory.Core().V1().Pods().Informer()
	s.policies = s.factory.Networking().V1().NetworkPolicies().Informer()
	for _, inf := range s.informers() {
		if err := s.watch(inf); err != nil {
			return nil, err
		}
	}
	if dyn != nil {
		s.cnpChecked = map[string]cnpCheck{}
		s.cnp = &cnpWatch{
			dyn: dyn, disco: client.Discovery(), every: s.opts.CRDCheck, resync: s.opts.Resync,
			log: s.log, onChange: s.markDirty, setup: s.watch, poke: make(chan struct{}, 1),
		}
	}
	return s, nil
}

// watch registers the source's handlers on an informer: every change that
// matters marks the state dirty, watch errors are logged our way.
func (s *InformerSource) watch(inf cache.SharedIndexInformer) error {
	if err := inf.SetWatchErrorHandlerWithContext(s.watchError); err != nil {
		return fmt.Errorf("informer source: %w", err)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.events.Add(1); s.markDirty() },
		UpdateFunc: func(oldObj, newObj any) {
			s.events.Add(1)
			if !sameStripped(oldObj, newObj) {
				s.markDirty()
			}
		},
		DeleteFunc: func(any) { s.events.Add(1); s.markDirty() },
	}); err != nil {
		return fmt.Errorf("informer source: %w", err)
	}
	return nil
}

func (s *InformerSource) informers() []cache.SharedIndexInformer {
	return []cache.SharedIndexInformer{s.namespaces, s.nodes, s.pods, s.policies}
}

// Run starts the informers and publishes Clusters until ctx is done. It
// does not return when the API server is unreachable: client-go retries with
// backoff and the last published cluster.Cluster stays current meanwhile.
func (s *InformerSource) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("informer source: Run called twice")
	}
	s.factory.Start(ctx.Done())
	defer s.factory.Shutdown()

	start := time.Now()
	synced := make([]cache.InformerSynced, 0, 5)
	for _, inf := range s.informers() {
		synced = append(synced, inf.HasSynced)
	}
	if s.cnp != nil {
		cnpDone := make(chan struct{})
		go func() {
			defer close(cnpDone)
			s.cnp.run(ctx)
		}()
		defer func() { <-cnpDone }()
		synced = append(synced, s.cnp.ready)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended before the first sync; nothing to report
	}
	// Events seen during the initial list are all in the first rebuild.
	select {
	case <-s.dirty:
	default:
	}
	s.connected.Store(true) // a sync proves a working connection, even with no transport to watch
	s.rebuild()
	c := s.cur.Load()
	s.log.Info().Dur("sync", time.Since(start)).Int("namespaces", len(c.Namespaces)).
		Int("nodes", len(c.Nodes)).Int("pods", len(c.Pods)).Int("policies", len(c.Policies)).
		Int("clusterPolicies", len(c.ClusterPolicies)).Msg("informer caches synced")

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.dirty:
		}
		if !s.coalesce(ctx) {
			return nil
		}
		s.rebuild()
	}
}

// coalesce waits until no event has arrived for Quiet, or MaxDelay has
// passed since the first one. It returns false when ctx ends.
func (s *InformerSource) coalesce(ctx context.Context) bool {
	deadline := time.Now().Add(s.opts.MaxDelay)
	timer := time.NewTimer(s.opts.Quiet)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return true
		case <-s.dirty:
			wait := min(s.opts.Quiet, time.Until(deadline))
			if wait <= 0 {
				return true
			}
			timer.Reset(wait)
		}
	}
}

func (s *InformerSource) markDirty() {
	s.relevant.Add(1)
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// rebuild reads every cache and publishes a new cluster.Cluster, sorted by
// namespace and name so that equal states compile identically.
func (s *InformerSource) rebuild() {
	start := time.Now()
	c := &cluster.Cluster{
		Namespaces: listAs[*corev1.Namespace](s.namespaces),
		Nodes:      listAs[*corev1.Node](s.nodes),
		Pods:       s.podOrder.list(s.pods),
	}
	all := s.policyOrder.list(s.policies)
	c.Policies = make([]*networkingv1.NetworkPolicy, 0, len(all))
	seen := make(map[string]bool, len(all))
	for _, p := range all {
		key := p.Namespace + "/" + p.Name
		seen[key] = true
		v, ok := s.validated[key]
		if !ok || v.resourceVersion != p.ResourceVersion {
			// Validate each version once: rebuilds are frequent, policy
			// changes are not, and a bad version is logged once.
			v = policyCheck{resourceVersion: p.ResourceVersion, err: validateInformerPolicy(p)}
			s.validated[key] = v
			if v.err != nil {
				s.log.Warn().Str("policy", key).Str("resourceVersion", p.ResourceVersion).
					Err(v.err).Msg("ignoring invalid NetworkPolicy")
			}
		}
		if v.err == nil {
			c.Policies = append(c.Policies, p)
		}
	}
	for key := range s.validated {
		if !seen[key] {
			delete(s.validated, key)
		}
	}
	if s.cnp != nil {
		c.ClusterPolicies = s.clusterPolicies(s.cur.Load())
	}
	s.cur.Store(c)
	n := s.rebuilds.Add(1)
	s.log.Debug().Uint64("rebuild", n).Dur("took", time.Since(start)).Int("pods", len(c.Pods)).
		Int("policies", len(c.Policies)).Int("clusterPolicies", len(c.ClusterPolicies)).Msg("cluster state published")
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

type policyCheck struct {
	resourceVersion string
	err             error
}

func listAs[T metav1.Object](inf cache.SharedIndexInformer) []T {
	items := inf.GetStore().List()
	// The names are read once, not in every comparison: at 10,000 pods
	// the interface calls were most of the sort, and the sort most of a
	// rebuild.
	type keyed struct {
		ns, name string
		obj      T
	}
	ks := make([]keyed, 0, len(items))
	for _, it := range items {
		if o, ok := it.(T); ok {
			ks = append(ks, keyed{o.GetNamespace(), o.GetName(), o})
		}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.name, b.name))
	})
	out := make([]T, len(ks))
	for i := range ks {
		out[i] = ks[i].obj
	}
	return out
}

// sortedList lists an informer's objects sorted by namespace and name as
// listAs does, from the previous list: objects it held keep their order
// (one map lookup each), only new ones are sorted and merged in. At
// 10,000 pods the full sort was 15% of the agent's CPU under churn
// (bench/scale).
type sortedList[T interface {
	metav1.Object
	comparable
}] struct {
	prev []T
	pos  map[T]int
}

func (l *sortedList[T]) list(inf cache.SharedIndexInformer) []T {
	return l.from(inf.GetStore().List())
}

// from is list for a store's items.
func (l *sortedList[T]) from(items []any) []T {
	kept := make([]bool, len(l.prev))
	type keyed struct {
		ns, name string
		obj      T
	}
	var fresh []keyed
	for _, it := range items {
		o, ok := it.(T)
		if !ok {
			continue
		}
		if i, ok := l.pos[o]; ok {
			kept[i] = true
			continue
		}
		fresh = append(fresh, keyed{o.GetNamespace(), o.GetName(), o})
	}
	slices.SortFunc(fresh, func(a, b keyed) int {
		return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.name, b.name))
	})
	kept2 := make([]T, 0, len(items))
	for i, o := range l.prev {
		if kept[i] {
			kept2 = append(kept2, o)
		}
	}
	// Each fresh object goes where a binary search of the kept ones puts
	// it (a store holds one object per key, so keys never tie): only
	// log n kept objects are read per fresh one.
	out := make([]T, 0, len(items))
	at := 0
	for _, f := range fresh {
		i, _ := slices.BinarySearchFunc(kept2[at:], f, func(o T, f keyed) int {
			return cmp.Or(strings.Compare(o.GetNamespace(), f.ns), strings.Compare(o.GetName(), f.name))
		})
		out = append(out, kept2[at:at+i]...)
		out = append(out, f.obj)
		at += i
	}
	out = append(out, kept2[at:]...)
	if l.pos == nil {
		l.pos = make(map[T]int, len(out))
	}
	clear(l.pos)
	for i, o := range out {
		l.pos[o] = i
	}
	l.prev = out
	return out
}

// Current returns the last published cluster.Cluster; ok is false until every
// informer has completed its first list.
func (s *InformerSource) Current() (*cluster.Cluster, bool) {
	c := s.cur.Load()
	return c, c != nil
}

// Changed receives a value after each publication; sends never block, so
// several publications may be reported once.
func (s *InformerSource) Changed() <-chan struct{} { return s.changed }

// Rebuilds counts published Clusters (the first sync included).
func (s *InformerSource) Rebuilds() uint64 { return s.rebuilds.Load() }

// Events counts the watch events the informers delivered (the items of
// every list included), and of those the relevant ones: events that
// changed something the compiler reads. Relevant minus Rebuilds is what
// coalescing saved.
func (s *InformerSource) Events() (all, relevant uint64) {
	return s.events.Load(), s.relevant.Load()
}

// Connected reports whether the last request to the API server got an
// answer. It is false before the first answer.
func (s *InformerSource) Connected() bool { return s.connected.Load() }

// LastError is the last error seen talking to the API server (nil if none);
// it is kept after reconnecting so that metrics and logs can show it.
func (s *InformerSource) LastError() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.lastErr
}

// InformerStatus is the source's health, for /debug/counters and metrics.
type InformerStatus struct {
	Synced    bool   `json:"synced"`
	Connected bool   `json:"connected"`
	LastError string `json:"last_error,omitempty"`
	Rebuilds  uint64 `json:"rebuilds"`
	Events    uint64 `json:"events"`
	Relevant  uint64 `json:"relevant_events"`
	// ClusterPolicies is ClusterPolicyVersion: the ClusterNetworkPolicy
	// version enforced, "" when the CRD is not served.
	ClusterPolicies string `json:"cluster_network_policies"`
}

// Status returns the source's health in one value.
func (s *InformerSource) Status() InformerStatus {
	st := InformerStatus{Connected: s.Connected(), Rebuilds: s.Rebuilds(), ClusterPolicies: s.ClusterPolicyVersion()}
	st.Events, st.Relevant = s.Events()
	_, st.Synced = s.Current()
	if err := s.LastError(); err != nil {
		st.LastError = err.Error()
	}
	return st
}

func (s *InformerSource) setConnected() {
	if s.connected.CompareAndSwap(false, true) && s.LastError() != nil {
		s.log.Info().Msg("API server reachable again")
	}
}

func (s *InformerSource) setDisconnected(err error) {
	s.errMu.Lock()
	s.lastErr = err
	s.errMu.Unlock()
	if s.connected.CompareAndSwap(true, false) {
		s.log.Warn().Err(err).Msg("lost the API server; keeping the last state while client-go retries")
	}
}

// watchError replaces client-go's default handler, which logs through klog
// in its own format; ours keeps every line JSON.
func (s *InformerSource) watchError(_ context.Context, r *cache.Reflector, err error) {
	switch {
	case err == nil, errors.Is(err, io.EOF), apierrors.IsResourceExpired(err), apierrors.IsGone(err):
		return // normal watch turnover: the reflector relists or rewatches
	}
	s.errMu.Lock()
	s.lastErr = err
	s.errMu.Unlock()
	ev := s.log.Warn()
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		// RBAC is wrong: this will not heal by itself, say so loudly.
		ev = s.log.Error()
	}
	ev.Str("reflector", r.TypeDescription()).Err(err).Msg("watch failed; client-go retries with backoff")
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
