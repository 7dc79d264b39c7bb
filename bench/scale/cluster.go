package scale

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/nfqpolicy/nfqpolicy/bench"
)

// Addressing: node k hands out pods from 10.(64+k/256).(k%256).0/24; its
// InternalIP is 172.30.(k/256).(k%256). Generated and churned pods take
// host numbers firstPodHost..lastPodHost; node-0's hosts above that are
// the probe pods', which exist as real network namespaces.
const (
	firstPodHost = 2
	lastPodHost  = 239
	podsPerNS    = 100
	probeNS      = "scale-probe"
)

func nodeName(k int) string { return fmt.Sprintf("node-%d", k) }

func podAddr(node, host int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(64 + node/256), byte(node % 256), byte(host)})
}

func nodeCIDR(k int) string { return netip.PrefixFrom(podAddr(k, 0), 24).String() }

func nodeIP(k int) string {
	return netip.AddrFrom4([4]byte{172, 30, byte(k / 256), byte(k % 256)}).String()
}

// world is the harness's view of what it created, so that churn picks
// existing objects without listing them.
type world struct {
	client kubernetes.Interface
	dyn    dynamic.Interface // ClusterNetworkPolicies; nil: none
	nodes  int

	mu       sync.Mutex
	rnd      *rand.Rand
	free     [][]int           // per node, free pod host numbers
	pods     map[string]podRef // "ns/name" -> where it lives
	podKeys  []string          // churnable pods, for random picks
	policies map[string]bool   // "ns/name"
	polKeys  []string
	nss      []string
	cnpNames []string
	seq      int

	apiErrors atomic.Int64
	lastErr   atomic.Pointer[error]
}

type podRef struct{ node, host int }

func newWorld(client kubernetes.Interface, nodes int, seed uint64) *world {
	w := &world{client: client, nodes: nodes, rnd: rand.New(rand.NewPCG(seed, seed+1)),
		pods: map[string]podRef{}, policies: map[string]bool{}}
	w.free = make([][]int, nodes)
	for k := range nodes {
		for h := lastPodHost; h >= firstPodHost; h-- {
			w.free[k] = append(w.free[k], h)
		}
	}
	return w
}

func (w *world) noteErr(err error) {
	if err == nil {
		return
	}
	w.apiErrors.Add(1)
	w.lastErr.Store(&err)
}

// createNodes creates the Node objects with their pod CIDRs and addresses.
func (w *world) createNodes(ctx context.Context) error {
	return parallel(ctx, w.nodes, 16, func(k int) error {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(k)},
			Spec: corev1.NodeSpec{PodCIDR: nodeCIDR(k), PodCIDRs: []string{nodeCIDR(k)}}}
		n, err := w.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node %d: %w", k, err)
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP(k)}}
		if _, err := w.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("node %d status: %w", k, err)
		}
		return nil
	})
}

// grow creates what the knp-shaped workload of pods/policies has that the
// API server does not yet: namespaces, pods (with status, spread over the
// nodes) and policies. Existing objects are kept, so the ladder grows.
func (w *world) grow(ctx context.Context, pods, policies int) error {
	nss := max(pods/podsPerNS, 1)
	gen := bench.Generate(nss, nss*podsPerNS, policies, 0, 1)
	var newNS []*corev1.Namespace
	have := map[string]bool{}
	w.mu.Lock()
	for _, ns := range w.nss {
		have[ns] = true
	}
	w.mu.Unlock()
	for _, ns := range gen.Cluster.Namespaces {
		if !have[ns.Name] {
			newNS = append(newNS, ns)
		}
	}
	if err := parallel(ctx, len(newNS), 16, func(i int) error {
		_, err := w.client.CoreV1().Namespaces().Create(ctx, newNS[i], metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("namespaces: %w", err)
	}
	w.mu.Lock()
	for _, ns := range newNS {
		w.nss = append(w.nss, ns.Name)
	}
	// Only as many as the step needs: churn deleted some generated
	// objects and created others, and the cluster keeps the churn's.
	var newPods []*corev1.Pod
	for _, p := range gen.Cluster.Pods {
		if len(w.pods)+len(newPods) >= pods {
			break
		}
		if _, ok := w.pods[p.Namespace+"/"+p.Name]; !ok {
			newPods = append(newPods, p)
		}
	}
	var newPols []*networkingv1.NetworkPolicy
	for _, p := range gen.Cluster.Policies {
		if len(w.policies)+len(newPols) >= policies {
			break
		}
		if !w.policies[p.Namespace+"/"+p.Name] {
			newPols = append(newPols, p)
		}
	}
	w.mu.Unlock()
	if err := parallel(ctx, len(newPods), 48, func(i int) error {
		return w.createPod(ctx, newPods[i], -1)
	}); err != nil {
		return fmt.Errorf("pods: %w", err)
	}
	if err := parallel(ctx, len(newPols), 48, func(i int) error {
		return w.createPolicy(ctx, newPols[i])
	}); err != nil {
		return fmt.Errorf("policies: %w", err)
	}
	return nil
}

// place takes a free address on node (or on a random node with room when
// node < 0).
func (w *world) place(node int) (podRef, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if node < 0 {
		start := w.rnd.IntN(w.nodes)
		for i := range w.nodes {
			if k := (start + i) % w.nodes; len(w.free[k]) > 0 {
				node = k
				break
			}
		}
		if node < 0 {
			return podRef{}, errors.New("every node's pod CIDR is full: raise -nodes")
		}
	}
	f := w.free[node]
	if len(f) == 0 {
		return podRef{}, fmt.Errorf("node %d's pod CIDR is full", node)
	}
	h := f[len(f)-1]
	w.free[node] = f[:len(f)-1]
	return podRef{node: node, host: h}, nil
}

func (w *world) release(r podRef) {
	w.mu.Lock()
	w.free[r.node] = append(w.free[r.node], r.host)
	w.mu.Unlock()
}

// createPod creates p on a node (random when node < 0) and writes the
// status a kubelet would: Running, its IP, its host IP.
func (w *world) createPod(ctx context.Context, p *corev1.Pod, node int) error {
	ref, err := w.place(node)
	if err != nil {
		return err
	}
	p = p.DeepCopy()
	p.Spec.NodeName = nodeName(ref.node)
	_, err = writePod(ctx, w.client, p, podAddr(ref.node, ref.host).String(), nodeIP(ref.node))
	if err != nil {
		w.release(ref)
		return err
	}
	w.mu.Lock()
	key := p.Namespace + "/" + p.Name
	w.pods[key] = ref
	w.podKeys = append(w.podKeys, key)
	w.mu.Unlock()
	return nil
}

// writePod creates p and sets its status; the status write's return is
// when the pod's address is known to the API server.
func writePod(ctx context.Context, c kubernetes.Interface, p *corev1.Pod, ip, hostIP string) (time.Time, error) {
	p = p.DeepCopy()
	p.Status = corev1.PodStatus{}
	if len(p.Spec.Containers) == 0 {
		p.Spec.Containers = []corev1.Container{{Name: "c"}}
	}
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Image == "" {
			p.Spec.Containers[i].Image = "registry.invalid/none:1"
		}
	}
	created, err := c.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		HostIP: hostIP, HostIPs: []corev1.HostIP{{IP: hostIP}}}
	if _, err := c.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return time.Time{}, fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return time.Now(), nil
}

// deletePod deletes at once (grace 0): no kubelet would ever finish a
// graceful deletion here.
func deletePod(ctx context.Context, c kubernetes.Interface, ns, name string) (time.Time, error) {
	zero := int64(0)
	err := c.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return time.Time{}, fmt.Errorf("delete pod %s/%s: %w", ns, name, err)
	}
	return time.Now(), nil
}

func (w *world) createPolicy(ctx context.Context, p *networkingv1.NetworkPolicy) error {
	if _, err := w.client.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create policy %s/%s: %w", p.Namespace, p.Name, err)
	}
	w.mu.Lock()
	key := p.Namespace + "/" + p.Name
	w.policies[key] = true
	w.polKeys = append(w.polKeys, key)
	w.mu.Unlock()
	return nil
}

func (w *world) counts() (pods, policies int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pods), len(w.policies)
}

// takeRandom removes and returns a random key of keys (and its set entry
// through drop), "" when empty.
func (w *world) takeRandom(keys *[]string) string {
	k := *keys
	if len(k) == 0 {
		return ""
	}
	i := w.rnd.IntN(len(k))
	key := k[i]
	k[i] = k[len(k)-1]
	*keys = k[:len(k)-1]
	return key
}

// churnOp is one change of the background churn, as the knp workload's
// clusters see them: pods come and go and get relabelled, policies are
// created, edited and deleted. Creates and deletes balance, so the cluster
// keeps its size.
func (w *world) churnOp(ctx context.Context) string {
	w.mu.Lock()
	r := w.rnd.IntN(100)
	w.seq++
	seq := w.seq
	ns := w.nss[w.rnd.IntN(len(w.nss))]
	app := fmt.Sprintf("app-%d", w.rnd.IntN(podsPerNS/10))
	tier := []string{"frontend", "backend", "db"}[w.rnd.IntN(3)]
	w.mu.Unlock()
	switch {
	case r < 25: // a pod is scheduled and starts
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("churn-%d", seq),
			Labels: map[string]string{"app": app, "tier": tier, "version": "v0"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}}}
		w.noteErr(w.createPod(ctx, p, -1))
		return "pod-create"
	case r < 50: // a pod goes away
		w.mu.Lock()
		key := w.takeRandom(&w.podKeys)
		ref, ok := w.pods[key]
		delete(w.pods, key)
		w.mu.Unlock()
		if !ok {
			return "none"
		}
		ns, name := splitKey(key)
		_, err := deletePod(ctx, w.client, ns, name)
		w.noteErr(err)
		if err == nil {
			w.release(ref)
		}
		return "pod-delete"
	case r < 68 || (r < 70 && w.dyn == nil): // a pod is relabelled (a rollout's version label)
		w.mu.Lock()
		var key string
		if len(w.podKeys) > 0 {
			key = w.podKeys[w.rnd.IntN(len(w.podKeys))]
		}
		v := fmt.Sprintf("v%d", w.rnd.IntN(5))
		w.mu.Unlock()
		if key == "" {
			return "none"
		}
		ns, name := splitKey(key)
		patch := fmt.Sprintf(`{"metadata":{"labels":{"version":%q,"tier":%q}}}`, v, tier)
		_, err := w.client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		w.noteErr(err)
		return "pod-label"
	case r < 70: // a ClusterNetworkPolicy is edited
		return w.churnCNP(ctx)
	case r < 80: // a policy is created
		w.noteErr(w.createPolicy(ctx, churnPolicy(ns, fmt.Sprintf("churn-np-%d", seq), app, tier)))
		return "policy-create"
	case r < 90: // a policy is edited
		w.mu.Lock()
		var key string
		if len(w.polKeys) > 0 {
			key = w.polKeys[w.rnd.IntN(len(w.polKeys))]
		}
		port := 8000 + w.rnd.IntN(1000)
		w.mu.Unlock()
		if key == "" {
			return "none"
		}
		ns, name := splitKey(key)
		patch := fmt.Sprintf(`{"spec":{"ingress":[{"from":[{"podSelector":{"matchLabels":{"tier":%q}}}],"ports":[{"protocol":"TCP","port":%d}]}]}}`, tier, port)
		_, err := w.client.NetworkingV1().NetworkPolicies(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		w.noteErr(err)
		return "policy-update"
	default: // a policy is deleted
		w.mu.Lock()
		key := w.takeRandom(&w.polKeys)
		delete(w.policies, key)
		w.mu.Unlock()
		if key == "" {
			return "none"
		}
		ns, name := splitKey(key)
		err := w.client.NetworkingV1().NetworkPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			err = nil
		}
		w.noteErr(err)
		return "policy-delete"
	}
}

// churnPolicy is a policy of the generated workload's shape.
func churnPolicy(ns, name, app, tier string) *networkingv1.NetworkPolicy {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p8080, p53, named := intstr.FromInt32(8080), intstr.FromInt32(53), intstr.FromString("http")
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tier}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &p8080, Protocol: &tcp}}},
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "t-1"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &named, Protocol: &tcp}}},
			},
			Egress: []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}, Ports: []networkingv1.NetworkPolicyPort{{Port: &p53, Protocol: &udp}}},
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8"}}}}},
			},
		},
	}
}

func splitKey(key string) (ns, name string) {
	for i := range len(key) {
		if key[i] == '/' {
			return key[:i], key[i+1:]
		}
	}
	return "", key
}

// parallel runs fn(0..n-1) on at most workers goroutines and returns the
// first error (the rest still run to completion).
func parallel(ctx context.Context, n, workers int, fn func(int) error) error {
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		first atomic.Pointer[error]
	)
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					first.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return *e
	}
	return ctx.Err()
}

// churn makes rate changes per second until ctx ends and returns how
// many it made and how many of each kind. Each change runs on its own
// goroutine (at most 64 at once) so that a slow request does not slow the
// rate; when 64 are outstanding the change is skipped and counted. The
// schedule is by elapsed time, not by ticks, which a loaded machine drops.
func (w *world) churn(ctx context.Context, rate int) (done int64, skipped int64, kinds map[string]int64) {
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		sem    = make(chan struct{}, 64)
		issued int64
	)
	kinds = map[string]int64{}
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return done, skipped, kinds
		case <-tick.C:
		}
		due := int64(time.Since(start).Seconds() * float64(rate))
		for ; issued < due; issued++ {
			w.launch(ctx, &wg, sem, &mu, kinds, &done, &skipped)
		}
	}
}

// launch starts one change of the churn, or counts it skipped when 64
// are outstanding.
func (w *world) launch(ctx context.Context, wg *sync.WaitGroup, sem chan struct{}, mu *sync.Mutex, kinds map[string]int64, done, skipped *int64) {
	select {
	case sem <- struct{}{}:
	default:
		mu.Lock()
		*skipped++
		mu.Unlock()
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { <-sem }()
		// The churn's own requests outlive the window by a little;
		// a background context lets them finish instead of erroring.
		k := w.churnOp(context.WithoutCancel(ctx))
		mu.Lock()
		kinds[k]++
		if k != "none" {
			*done++
		}
		mu.Unlock()
	}()
}
