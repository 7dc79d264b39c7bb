package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/rs/zerolog"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ClusterNetworkPolicies are a custom resource: their CRD may be absent,
// installed or removed while the agent runs, and serve v1beta1 or (older
// installs) only v1alpha2, with the same schema. cnpWatch asks discovery
// which version is served, runs a dynamic informer for it, and restarts it
// when the answer changes; the objects are converted to v1beta1 by the
// informer's transform, so the cache holds what the compiler reads.
//
// Discovery is asked when the CRD object changes (a watch on that one
// CustomResourceDefinition, so installing it is followed within about a
// second) and every CRDCheck besides, which is all there is when RBAC
// does not allow watching CRDs.

const cnpResource = "clusternetworkpolicies"

// cnpCRDName is the ClusterNetworkPolicy CRD's object name.
const cnpCRDName = cnpResource + "." + cluster.CNPGroup

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// After the CRD changes, discovery may lag behind it (the API server
// publishes a new group version asynchronously): it is asked again every
// crdSettle, crdSettleChecks times, until its answer changes.
const (
	crdSettle       = 500 * time.Millisecond
	crdSettleChecks = 20
)

// cnpEntry is what the ClusterNetworkPolicy cache holds: the policy as
// v1beta1, and what the conversion from the served object could not read
// (unknown fields of a newer CRD, or an object it could not convert at all).
type cnpEntry struct {
	*cnpv1beta1.ClusterNetworkPolicy
	problem    string
	unreadable bool
}

type cnpWatch struct {
	dyn      dynamic.Interface
	disco    discovery.DiscoveryInterface
	every    time.Duration
	resync   time.Duration
	log      zerolog.Logger
	onChange func()
	// setup registers the source's event handlers and watch error
	// handler on a new informer.
	setup func(cache.SharedIndexInformer) error

	// poke wakes run to ask discovery now: the CRD object changed.
	poke chan struct{}

	mu         sync.Mutex
	asked      bool   // discovery has answered once
	version    string // the version watched; "" when the CRD is not served
	inf        cache.SharedIndexInformer
	stop       context.CancelFunc
	stopped    chan struct{}
	saidAbsent bool
}

// ready reports whether the first publication may go ahead: discovery has
// answered, and the informer, if the CRD is served, has synced. Publishing
// before would enforce without the Admin tier for a moment.
func (w *cnpWatch) ready() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.asked && (w.inf == nil || w.inf.HasSynced())
}

// current returns the running informer and its version, nil when none.
func (w *cnpWatch) current() (cache.SharedIndexInformer, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inf, w.version
}

// run checks discovery now, whenever the CRD object changes, and every
// w.every (every second until it has answered once) until ctx ends, then
// stops the informer.
func (w *cnpWatch) run(ctx context.Context) {
	crdDone := make(chan struct{})
	go func() {
		defer close(crdDone)
		w.watchCRD(ctx)
	}()
	defer func() { <-crdDone }()
	defer w.switchTo(ctx, "")
	settle := 0 // discovery checks left at crdSettle after a CRD change
	for {
		_, before := w.current()
		v, err := w.served(ctx)
		if err != nil {
			// Unreachable API server or a discovery error: keep what
			// runs; the watch error handler reports the connection.
			w.log.Debug().Err(err).Msg("ClusterNetworkPolicy discovery failed; retrying")
		} else {
			w.switchTo(ctx, v)
			if v != before {
				settle = 0
			}
		}
		next := w.every
		switch {
		case err != nil && !w.hasAsked():
			next = time.Second
		case settle > 0:
			settle--
			next = crdSettle
		}
		select {
		case <-ctx.Done():
			return
		case <-w.poke:
			settle = crdSettleChecks
		case <-time.After(next):
		}
	}
}

// watchCRD pokes run whenever the ClusterNetworkPolicy CRD object is
// created, changed (its Established condition included) or deleted. It
// watches that one object by name and keeps only its metadata. Without
// RBAC to watch CRDs it says so once and stops: the periodic check is left.
func (w *cnpWatch) watchCRD(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	inf := dynamicinformer.NewFilteredDynamicInformer(w.dyn, crdGVR, "", 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + cnpCRDName
	}).Informer()
	poke := func(any) {
		select {
		case w.poke <- struct{}{}:
		default:
		}
	}
	err := inf.SetTransform(func(obj any) (any, error) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return obj, nil // a tombstone
		}
		// The CRD holds the whole OpenAPI schema (about 100 KiB); only
		// the fact that it changed matters here.
		return &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: u.GetAPIVersion(), Kind: u.GetKind()},
			ObjectMeta: metav1.ObjectMeta{Name: u.GetName(), UID: u.GetUID(), ResourceVersion: u.GetResourceVersion()}}, nil
	})
	if err == nil {
		_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: poke, UpdateFunc: func(_, n any) { poke(n) }, DeleteFunc: poke,
		})
	}
	if err == nil {
		err = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			switch {
			case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
				w.log.Warn().Err(err).Dur("every", w.every).Msg("cannot watch the ClusterNetworkPolicy CRD (RBAC: get/list/watch customresourcedefinitions, deploy/clusterrole.yaml): its installation is noticed by the periodic discovery check only")
				cancel()
			case err == nil, errors.Is(err, io.EOF), apierrors.IsResourceExpired(err), apierrors.IsGone(err):
			default:
				w.log.Debug().Err(err).Msg("ClusterNetworkPolicy CRD watch failed; client-go retries with backoff")
			}
		})
	}
	if err != nil {
		w.log.Error().Err(err).Msg("ClusterNetworkPolicy CRD watch")
		return
	}
	inf.RunWithContext(ctx)
}

func (w *cnpWatch) hasAsked() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.asked
}

// served returns the version of the ClusterNetworkPolicy resource the
// API server serves, preferring v1beta1; "" when neither is.
func (w *cnpWatch) served(ctx context.Context) (string, error) {
	for _, v := range []string{cluster.CNPVersion, cluster.CNPVersionV1alpha2} {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		list, err := w.disco.ServerResourcesForGroupVersion(cluster.CNPGroup + "/" + v)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("discovery of %s/%s: %w", cluster.CNPGroup, v, err)
		}
		for _, r := range list.APIResources {
			if r.Name == cnpResource {
				return v, nil
			}
		}
	}
	return "", nil
}

// switchTo makes the informer follow version v of the resource ("": the
// CRD is not served, stop). It runs on run's goroutine only.
func (w *cnpWatch) switchTo(ctx context.Context, v string) {
	w.mu.Lock()
	w.asked = w.asked || ctx.Err() == nil
	unchanged := v == w.version && (v == "" || w.inf != nil)
	old, oldStopped, oldVersion := w.stop, w.stopped, w.version
	if !unchanged {
		w.inf, w.stop, w.stopped, w.version = nil, nil, nil, v
	}
	w.mu.Unlock()
	if unchanged {
		if v == "" && !w.saidAbsent && ctx.Err() == nil {
			w.saidAbsent = true
			w.log.Warn().Msg("ClusterNetworkPolicy CRD (" + cnpResource + "." + cluster.CNPGroup + ") is not installed: running without ClusterNetworkPolicies; they are watched as soon as it is (see docs/kubernetes.md)")
		}
		return
	}
	if old != nil {
		old()
		<-oldStopped
	}
	if ctx.Err() != nil {
		return
	}
	if v == "" {
		w.saidAbsent = true
		w.log.Warn().Str("version", cluster.CNPGroup+"/"+oldVersion).Msg("ClusterNetworkPolicy CRD removed: ClusterNetworkPolicies are no longer enforced; watching for it to come back")
		w.onChange()
		return
	}
	gvr := schema.GroupVersionResource{Group: cluster.CNPGroup, Version: v, Resource: cnpResource}
	inf := dynamicinformer.NewFilteredDynamicInformer(w.dyn, gvr, "", w.resync, cache.Indexers{}, nil).Informer()
	if err := inf.SetTransform(stripClusterPolicy); err != nil {
		w.log.Error().Err(err).Msg("ClusterNetworkPolicy informer")
		return
	}
	if err := w.setup(inf); err != nil {
		w.log.Error().Err(err).Msg("ClusterNetworkPolicy informer")
		return
	}
	ictx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	w.mu.Lock()
	w.inf, w.stop, w.stopped = inf, cancel, stopped
	w.mu.Unlock()
	w.log.Info().Str("version", cluster.CNPGroup+"/"+v).Msg("watching ClusterNetworkPolicies")
	go func() {
		defer close(stopped)
		inf.RunWithContext(ictx)
	}()
	go func() {
		// Events of the first list may be handled before HasSynced turns
		// true; one more rebuild after it publishes the complete set.
		if cache.WaitForCacheSync(ictx.Done(), inf.HasSynced) {
			w.onChange()
		}
	}()
}

// stripClusterPolicy is the ClusterNetworkPolicy informer's transform: the
// served object (v1beta1 or v1alpha2, unstructured) becomes a v1beta1
// cnpEntry holding only metadata the compiler reads and the spec; status
// (conditions other implementations write) is dropped so that it does not
// trigger rebuilds.
func stripClusterPolicy(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil // already an entry, or a tombstone
	}
	e := &cnpEntry{}
	p := &cnpv1beta1.ClusterNetworkPolicy{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, p, true); err != nil {
		// Unknown fields (a CRD newer than the types nfqpolicy is built
		// with) or a wrong type: read what can be read, and say what not.
		e.problem = err.Error()
		p = &cnpv1beta1.ClusterNetworkPolicy{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p); err != nil {
			e.problem, e.unreadable = err.Error(), true
			p = &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{
				Name: u.GetName(), UID: u.GetUID(), ResourceVersion: u.GetResourceVersion(),
			}}
		}
	}
	e.ClusterNetworkPolicy = &cnpv1beta1.ClusterNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: cluster.CNPGroup + "/" + cluster.CNPVersion, Kind: "ClusterNetworkPolicy"},
		ObjectMeta: stripMeta(&p.ObjectMeta),
		Spec:       p.Spec,
	}
	cluster.DefaultClusterPolicy(e.ClusterNetworkPolicy)
	return e, nil
}

// cnpCheck is the verdict on one version of a ClusterNetworkPolicy.
type cnpCheck struct {
	resourceVersion string
	keep            bool
	domains         string // its domainNames rules, as last logged
}

// clusterPolicies lists the ClusterNetworkPolicies to publish: those of
// the informer once it has synced, else prev's (a version switch keeps
// enforcing the old list until the new one is complete), or none when the
// CRD is not served. Each version is checked and reported once. Unlike a
// NetworkPolicy, a ClusterNetworkPolicy that fails validation is kept
// (unless unreadable): the API server validated it against the CRD it
// has, so a failure means a newer CRD, and the API asks implementations to
// fail closed on what they cannot read, which the compiler does rule by
// rule; dropping the policy would instead drop its Deny rules.
func (s *InformerSource) clusterPolicies(prev *cluster.Cluster) []*cnpv1beta1.ClusterNetworkPolicy {
	inf, version := s.cnp.current()
	if inf == nil {
		clear(s.cnpChecked)
		s.cnpPublished.Store("")
		return nil
	}
	if !inf.HasSynced() {
		if prev != nil {
			return prev.ClusterPolicies
		}
		return nil
	}
	if s.cnpPublished.Swap(version) != version {
		// What a user (or a test) waits for before relying on them.
		s.log.Info().Str("version", cluster.CNPGroup+"/"+version).Int("clusterPolicies", len(inf.GetStore().ListKeys())).
			Msg("ClusterNetworkPolicies synced: enforced from now on")
	}
	all := listAs[*cnpEntry](inf)
	out := make([]*cnpv1beta1.ClusterNetworkPolicy, 0, len(all))
	seen := make(map[string]bool, len(all))
	for _, e := range all {
		seen[e.Name] = true
		v, ok := s.cnpChecked[e.Name]
		if !ok || v.resourceVersion != e.ResourceVersion {
			v = s.checkClusterPolicy(e, version, v.domains)
			s.cnpChecked[e.Name] = v
		}
		if v.keep {
			out = append(out, e.ClusterNetworkPolicy)
		}
	}
	for name := range s.cnpChecked {
		if !seen[name] {
			delete(s.cnpChecked, name)
		}
	}
	return out
}

func (s *InformerSource) checkClusterPolicy(e *cnpEntry, version, loggedDomains string) cnpCheck {
	v := cnpCheck{resourceVersion: e.ResourceVersion, keep: !e.unreadable, domains: loggedDomains}
	ev := func(l *zerolog.Event) *zerolog.Event {
		return l.Str("policy", e.Name).Str("version", cluster.CNPGroup+"/"+version).Str("resourceVersion", e.ResourceVersion)
	}
	if e.unreadable {
		ev(s.log.Error()).Str("problem", e.problem).Msg("ignoring a ClusterNetworkPolicy that cannot be read as " + cluster.CNPGroup + "/" + cluster.CNPVersion)
		return v
	}
	var problems []string
	if e.problem != "" {
		problems = append(problems, e.problem)
	}
	for _, fe := range cluster.ValidateClusterPolicy(e.ClusterNetworkPolicy) {
		fe.Object = ""
		problems = append(problems, fe.Error())
	}
	if len(problems) > 0 {
		ev(s.log.Warn()).Strs("problems", problems).
			Msg("ClusterNetworkPolicy does not validate against the v0.3.0 CRD nfqpolicy knows (a newer CRD?); enforced as read: rules with peers it cannot read fail closed")
	}
	if d := domainNameRules(e.ClusterNetworkPolicy); d != v.domains {
		v.domains = d
		if d != "" {
			ev(s.log.Warn()).Str("rules", d).
				Msg("ClusterNetworkPolicy has domainNames peers, which nfqpolicy does not enforce: they match no traffic, so flows to those names fall to the rules and tiers after them (typically a Deny)")
		}
	}
	return v
}

// domainNameRules describes p's egress rules with domainNames peers,
// "" when it has none.
func domainNameRules(p *cnpv1beta1.ClusterNetworkPolicy) string {
	var rules []string
	for i, r := range p.Spec.Egress {
		var names []string
		for _, pe := range r.To {
			for _, d := range pe.DomainNames {
				names = append(names, string(d))
			}
		}
		if len(names) == 0 {
			continue
		}
		id := fmt.Sprintf("egress[%d]", i)
		if r.Name != "" {
			id += " " + r.Name
		}
		rules = append(rules, fmt.Sprintf("%s (%s): %s", id, r.Action, strings.Join(names, ",")))
	}
	return strings.Join(rules, "; ")
}

// ClusterPolicyVersion is the version (e.g. "policy.networking.k8s.io/v1beta1")
// of the ClusterNetworkPolicies in the last published state: their
// informer had synced, so the state holds all of them. It is "" while the
// CRD is not served (or not yet synced after it was installed), when the
// state holds none, and without a dynamic client.
func (s *InformerSource) ClusterPolicyVersion() string {
	if v, _ := s.cnpPublished.Load().(string); v != "" {
		return cluster.CNPGroup + "/" + v
	}
	return ""
}
