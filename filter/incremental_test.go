package filter

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// world is a cluster the equivalence test changes at random, the way an
// informer's snapshots change: every changed object is a new one, lists
// sorted by namespace and name.
type world struct {
	rnd      *rand.Rand
	nss      []*corev1.Namespace
	nodes    []*corev1.Node
	pods     map[string]*corev1.Pod
	pols     map[string]*networkingv1.NetworkPolicy
	cnps     map[string]*cnpv1beta1.ClusterNetworkPolicy
	free     []netip.Addr // addresses of deleted pods: unknown pods now
	seq, rv  int
	forceful bool // the last changes included one the incremental path does not cover
}

var (
	wApps  = []string{"a-0", "a-1", "a-2", "a-3"}
	wTiers = []string{"fe", "be", "db"}
	wTeams = []string{"t-0", "t-1", "t-2"}
	wEnvs  = []string{"prod", "dev"}
)

func (w *world) pick(s []string) string { return s[w.rnd.IntN(len(s))] }

func (w *world) nextRV() string { w.rv++; return strconv.Itoa(w.rv) }

func newWorld(seed uint64) *world {
	w := &world{rnd: rand.New(rand.NewPCG(seed, seed^0x5eed)), pods: map[string]*corev1.Pod{},
		pols: map[string]*networkingv1.NetworkPolicy{}, cnps: map[string]*cnpv1beta1.ClusterNetworkPolicy{}}
	for i := range 6 {
		w.nss = append(w.nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%d", i),
			Labels: map[string]string{"env": wEnvs[i%2], "team": wTeams[i%3]}}})
	}
	for k := range 3 {
		w.nodes = append(w.nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", k), Labels: map[string]string{"zone": fmt.Sprint(k % 2)}},
			Spec:   corev1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.0.%d.0/24", k)}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.30.0.%d", k)}}}})
	}
	for k := range 3 {
		for h := 2; h < 60; h++ {
			w.free = append(w.free, netip.AddrFrom4([4]byte{10, 0, byte(k), byte(h)}))
		}
	}
	for range 90 {
		w.addPod()
	}
	for range 30 {
		w.addPolicy()
	}
	for range 8 {
		w.addCNP()
	}
	return w
}

func (w *world) cluster() *cluster.Cluster {
	c := &cluster.Cluster{Namespaces: w.nss, Nodes: w.nodes}
	for _, k := range sortedKeys(w.pods) {
		c.Pods = append(c.Pods, w.pods[k])
	}
	for _, k := range sortedKeys(w.pols) {
		c.Policies = append(c.Policies, w.pols[k])
	}
	for _, k := range sortedKeys(w.cnps) {
		c.ClusterPolicies = append(c.ClusterPolicies, w.cnps[k])
	}
	return c
}

func sortedKeys[T any](m map[string]T) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (w *world) randomKey(m []string) string {
	if len(m) == 0 {
		return ""
	}
	return m[w.rnd.IntN(len(m))]
}

func (w *world) podLabels() map[string]string {
	l := map[string]string{"app": w.pick(wApps), "tier": w.pick(wTiers)}
	if w.rnd.IntN(3) == 0 {
		l["version"] = fmt.Sprint("v", w.rnd.IntN(2))
	}
	return l
}

func (w *world) addPod() {
	if len(w.free) == 0 {
		return
	}
	i := w.rnd.IntN(len(w.free))
	addr := w.free[i]
	w.free = slices.Delete(w.free, i, i+1)
	w.seq++
	ns := w.nss[w.rnd.IntN(len(w.nss))].Name
	var ports []corev1.ContainerPort
	if w.rnd.IntN(2) == 0 {
		ports = append(ports, corev1.ContainerPort{Name: "http", ContainerPort: int32(8080 + w.rnd.IntN(2)), Protocol: corev1.ProtocolTCP})
	}
	if w.rnd.IntN(3) == 0 {
		ports = append(ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP})
	}
	if w.rnd.IntN(8) == 0 {
		ports = append(ports, corev1.ContainerPort{Name: fmt.Sprint("p", w.seq), ContainerPort: 7000, Protocol: corev1.ProtocolUDP})
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("p-", w.seq), Labels: w.podLabels(), ResourceVersion: w.nextRV()},
		Spec:   corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", addr.As4()[2]), Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: addr.String(), PodIPs: []corev1.PodIP{{IP: addr.String()}}}}
	if w.rnd.IntN(10) == 0 {
		p.Status.PodIP, p.Status.PodIPs = "", nil // not started yet: no address, not compiled
		w.free = append(w.free, addr)
	}
	w.pods[ns+"/"+p.Name] = p
}

func (w *world) deletePod() {
	k := w.randomKey(sortedKeys(w.pods))
	if k == "" {
		return
	}
	p := w.pods[k]
	delete(w.pods, k)
	if p.Spec.HostNetwork || w.shared(p) {
		w.forceful = true
		return
	}
	w.free = append(w.free, cluster.PodAddrs(p)...)
}

// shared reports whether another pod has one of p's addresses.
func (w *world) shared(p *corev1.Pod) bool {
	for _, a := range cluster.PodAddrs(p) {
		for _, o := range w.pods {
			if o != p && slices.Contains(cluster.PodAddrs(o), a) {
				return true
			}
		}
	}
	return false
}

// changePod gives a pod new labels, an address (it started), or nothing
// the compiler reads (a status heartbeat).
func (w *world) changePod() {
	k := w.randomKey(sortedKeys(w.pods))
	if k == "" {
		return
	}
	p := w.pods[k].DeepCopy()
	p.ResourceVersion = w.nextRV()
	switch w.rnd.IntN(4) {
	case 0, 1:
		p.Labels = w.podLabels()
	case 2:
		if p.Status.PodIP == "" && len(w.free) > 0 {
			addr := w.free[0]
			w.free = w.free[1:]
			p.Status.PodIP, p.Status.PodIPs = addr.String(), []corev1.PodIP{{IP: addr.String()}}
			p.Spec.NodeName = fmt.Sprintf("node-%d", addr.As4()[2])
		}
	default:
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady})
	}
	if p.Spec.HostNetwork || w.shared(w.pods[k]) {
		w.forceful = true
	}
	w.pods[k] = p
}

func (w *world) selector() *metav1.LabelSelector {
	switch w.rnd.IntN(4) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": w.pick(wTiers)}}
	case 2:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{w.pick(wApps), w.pick(wApps)}}}}
	default:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": w.pick(wApps)}}
	}
}

func (w *world) npPeer() networkingv1.NetworkPolicyPeer {
	switch w.rnd.IntN(5) {
	case 0:
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}
	case 1:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": w.pick(wTeams)}}, PodSelector: w.selector()}
	case 2:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}}
	case 3:
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16", Except: []string{"10.0.1.0/24"}}}
	default:
		return networkingv1.NetworkPolicyPeer{PodSelector: w.selector()}
	}
}

func (w *world) npPorts() []networkingv1.NetworkPolicyPort {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	switch w.rnd.IntN(6) {
	case 0:
		return nil
	case 5: // not compilable: a warning, and the port matches nothing
		named, end := intstr.FromString("http"), int32(9000)
		return []networkingv1.NetworkPolicyPort{{Port: &named, EndPort: &end, Protocol: &tcp}}
	case 1:
		named := intstr.FromString(w.pick([]string{"http", "metrics"}))
		return []networkingv1.NetworkPolicyPort{{Port: &named, Protocol: &tcp}}
	case 2:
		p, end := intstr.FromInt32(8000), int32(9000)
		return []networkingv1.NetworkPolicyPort{{Port: &p, EndPort: &end, Protocol: &tcp}}
	case 3:
		p := intstr.FromInt32(53)
		return []networkingv1.NetworkPolicyPort{{Port: &p, Protocol: &udp}}
	default:
		p := intstr.FromInt32(8080)
		return []networkingv1.NetworkPolicyPort{{Port: &p, Protocol: &tcp}}
	}
}

func (w *world) policy(ns, name string) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: w.nextRV()},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *w.selector()}}
	switch w.rnd.IntN(3) {
	case 0:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 1:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	default:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	for range w.rnd.IntN(3) {
		r := networkingv1.NetworkPolicyIngressRule{Ports: w.npPorts()}
		for range w.rnd.IntN(3) {
			r.From = append(r.From, w.npPeer())
		}
		np.Spec.Ingress = append(np.Spec.Ingress, r)
	}
	for range w.rnd.IntN(3) {
		r := networkingv1.NetworkPolicyEgressRule{Ports: w.npPorts()}
		for range w.rnd.IntN(3) {
			r.To = append(r.To, w.npPeer())
		}
		np.Spec.Egress = append(np.Spec.Egress, r)
	}
	return np
}

func (w *world) addPolicy() {
	w.seq++
	ns := w.nss[w.rnd.IntN(len(w.nss))].Name
	// Names in random order, so that a new policy lands between others.
	np := w.policy(ns, fmt.Sprintf("np-%d", w.rnd.IntN(1000)))
	w.pols[ns+"/"+np.Name] = np
}

func (w *world) deletePolicy() {
	if k := w.randomKey(sortedKeys(w.pols)); k != "" {
		if w.pols[k].Annotations[ModeAnnotation] == ModeAudit {
			w.forceful = true
		}
		delete(w.pols, k)
	}
}

func (w *world) updatePolicy() {
	if k := w.randomKey(sortedKeys(w.pols)); k != "" {
		if w.pols[k].Annotations[ModeAnnotation] == ModeAudit {
			w.forceful = true
		}
		old := w.pols[k]
		w.pols[k] = w.policy(old.Namespace, old.Name)
	}
}

func (w *world) cnp(name string) *cnpv1beta1.ClusterNetworkPolicy {
	nsSel := func(k, v string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	tcp := func(p int32) cnpv1beta1.ClusterNetworkPolicyProtocol {
		return cnpv1beta1.ClusterNetworkPolicyProtocol{TCP: &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1beta1.Port{Number: p}}}
	}
	c := &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: w.nextRV()},
		Spec: cnpv1beta1.ClusterNetworkPolicySpec{Priority: int32(w.rnd.IntN(5))}}
	if w.rnd.IntN(2) == 0 {
		c.Spec.Tier = cnpv1beta1.AdminTier
		c.Spec.Subject = cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: nsSel("team", w.pick(wTeams))}
		if w.rnd.IntN(2) == 0 {
			c.Spec.Subject = cnpv1beta1.ClusterNetworkPolicySubject{Pods: &cnpv1beta1.NamespacedPod{
				NamespaceSelector: *nsSel("env", w.pick(wEnvs)), PodSelector: *nsSel("tier", w.pick(wTiers))}}
		}
		c.Spec.Ingress = []cnpv1beta1.ClusterNetworkPolicyIngressRule{
			{Name: "scrape", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionAccept,
				From:      []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSel(corev1.LabelMetadataName, w.nss[w.rnd.IntN(len(w.nss))].Name)}},
				Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "metrics"}}},
			{Name: "no-db", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				From:      []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1beta1.NamespacedPod{NamespaceSelector: *nsSel("env", "dev"), PodSelector: *nsSel("tier", w.pick(wTiers))}}},
				Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{tcp(8080)}},
			{Name: "team", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionPass,
				From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSel("team", w.pick(wTeams))}}},
		}
		c.Spec.Egress = []cnpv1beta1.ClusterNetworkPolicyEgressRule{
			{Name: "no-meta", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"169.254.169.254/32"}}}},
			{Name: "nodes", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionAccept,
				To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Nodes: nsSel("zone", "1")}}},
			{Name: "in-cluster", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionPass,
				To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Pods: &cnpv1beta1.NamespacedPod{PodSelector: *nsSel("app", w.pick(wApps))}}}},
		}
	} else {
		env := w.pick(wEnvs)
		c.Spec.Tier = cnpv1beta1.BaselineTier
		c.Spec.Subject = cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: nsSel("env", env)}
		c.Spec.Ingress = []cnpv1beta1.ClusterNetworkPolicyIngressRule{
			{Name: "same-env", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionAccept,
				From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSel("env", env)}}},
			{Name: "rest", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}},
		}
	}
	return c
}

func (w *world) addCNP() {
	w.seq++
	c := w.cnp(fmt.Sprint("cnp-", w.rnd.IntN(100)))
	w.cnps[c.Name] = c
}

func (w *world) changeCNP() {
	k := w.randomKey(sortedKeys(w.cnps))
	if k == "" {
		return
	}
	switch w.rnd.IntN(3) {
	case 0:
		delete(w.cnps, k)
	case 1:
		c := w.cnps[k].DeepCopy()
		c.Spec.Priority = int32(w.rnd.IntN(5))
		c.ResourceVersion = w.nextRV()
		w.cnps[k] = c
	default:
		w.cnps[k] = w.cnp(k)
	}
}

// forceFull makes a change the incremental path leaves to Compile.
func (w *world) forceFull() {
	w.forceful = true
	switch w.rnd.IntN(5) {
	case 0: // a namespace relabelled
		i := w.rnd.IntN(len(w.nss))
		ns := w.nss[i].DeepCopy()
		ns.Labels["team"] = w.pick(wTeams)
		w.nss = slices.Clone(w.nss)
		w.nss[i] = ns
	case 1: // a hostNetwork pod
		w.seq++
		k := w.rnd.IntN(len(w.nodes))
		ip := w.nodes[k].Status.Addresses[0].Address
		w.pods[fmt.Sprint("ns-0/host-", w.seq)] = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-0", Name: fmt.Sprint("host-", w.seq), Labels: w.podLabels()},
			Spec:   corev1.PodSpec{NodeName: w.nodes[k].Name, HostNetwork: true},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: ip}}
	case 2: // an audit-mode policy
		w.seq++
		ns := w.nss[w.rnd.IntN(len(w.nss))].Name
		np := w.policy(ns, fmt.Sprint("staged-", w.seq))
		np.Annotations = map[string]string{ModeAnnotation: ModeAudit}
		w.pols[ns+"/"+np.Name] = np
	case 3: // a node relabelled
		i := w.rnd.IntN(len(w.nodes))
		n := w.nodes[i].DeepCopy()
		n.Labels["zone"] = fmt.Sprint(w.rnd.IntN(2))
		w.nodes = slices.Clone(w.nodes)
		w.nodes[i] = n
	default: // two pods claim one address
		keys := sortedKeys(w.pods)
		if k := w.randomKey(keys); k != "" && len(cluster.PodAddrs(w.pods[k])) > 0 {
			w.seq++
			p := w.pods[k].DeepCopy()
			p.Name = fmt.Sprint("dup-", w.seq)
			w.pods[p.Namespace+"/"+p.Name] = p
		}
	}
}

// change makes one random change.
func (w *world) change() {
	switch r := w.rnd.IntN(100); {
	case r < 22:
		w.addPod()
	case r < 42:
		w.deletePod()
	case r < 62:
		w.changePod()
	case r < 72:
		w.addPolicy()
	case r < 80:
		w.deletePolicy()
	case r < 88:
		w.updatePolicy()
	case r < 97:
		w.changeCNP()
		if w.rnd.IntN(2) == 0 {
			w.addCNP()
		}
	default:
		w.forceFull()
	}
}

// probes are flows between every kind of address the world has: its
// pods, deleted pods' (unknown pods), nodes, external addresses.
func (w *world) probes(n int) []Flow {
	var addrs []netip.Addr
	for _, k := range sortedKeys(w.pods) {
		addrs = append(addrs, cluster.PodAddrs(w.pods[k])...)
	}
	addrs = append(addrs, w.free[:min(len(w.free), 10)]...)
	for _, nd := range w.nodes {
		addrs = append(addrs, netip.MustParseAddr(nd.Status.Addresses[0].Address))
	}
	for _, s := range []string{"192.168.0.9", "192.168.1.9", "169.254.169.254", "8.8.8.8", "10.0.1.7"} {
		addrs = append(addrs, netip.MustParseAddr(s))
	}
	ports := []struct {
		port  uint16
		proto uint8
	}{{8080, ProtoTCP}, {8081, ProtoTCP}, {9090, ProtoTCP}, {53, ProtoUDP}, {7000, ProtoUDP}, {8500, ProtoTCP}, {443, ProtoTCP}}
	out := make([]Flow, 0, n)
	for range n {
		pp := ports[w.rnd.IntN(len(ports))]
		out = append(out, Flow{Src: addrs[w.rnd.IntN(len(addrs))], Dst: addrs[w.rnd.IntN(len(addrs))],
			SrcPort: 40000, DstPort: pp.port, Proto: pp.proto})
	}
	return out
}

// TestCompilerEquivalence applies random sequences of changes (fixed
// seeds) and checks, after every step, that the incrementally maintained
// Ruleset decides every probe as a whole Compile of the same state does:
// verdicts, decisions, their descriptions (pods, policies, rules by name),
// and the per-pod policy lists, warnings and counts.
func TestCompilerEquivalence(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) {
			w := newWorld(seed)
			comp := NewCompiler()
			forced := 0
			const steps = 150
			for step := range steps {
				w.forceful = false
				for range 1 + w.rnd.IntN(6) {
					w.change()
				}
				if w.forceful {
					forced++
				}
				c := w.cluster()
				if step%7 == 3 {
					// Not an informer's order: the lists are sorted first.
					w.rnd.Shuffle(len(c.Pods), func(i, j int) { c.Pods[i], c.Pods[j] = c.Pods[j], c.Pods[i] })
					w.rnd.Shuffle(len(c.Policies), func(i, j int) { c.Policies[i], c.Policies[j] = c.Policies[j], c.Policies[i] })
				}
				inc, err := comp.Compile(c)
				if err != nil {
					t.Fatal(err)
				}
				full, err := Compile(c)
				if err != nil {
					t.Fatal(err)
				}
				if !equivalent(t, fmt.Sprintf("step %d", step), inc, full, w.probes(300)) {
					t.FailNow()
				}
			}
			nfull, nincr := comp.Counts()
			t.Logf("%d steps: %d whole compiles (%d steps with a change that needs one), %d incremental", steps, nfull, forced, nincr)
			// The first compile is whole, and so is each step with a
			// change only Compile covers; every other step must have been
			// incremental, or this test proves nothing.
			if nfull > uint64(forced)+1 {
				t.Errorf("%d whole compiles, want at most %d", nfull, forced+1)
			}
		})
	}
}

func equivalent(t *testing.T, at string, inc, full *Ruleset, probes []Flow) bool {
	t.Helper()
	ok := true
	fail := func(format string, args ...any) {
		t.Errorf(at+": "+format, args...)
		ok = false
	}
	a1, a2, a3, a4 := inc.Counts()
	b1, b2, b3, b4 := full.Counts()
	if [4]int{a1, a2, a3, a4} != [4]int{b1, b2, b3, b4} {
		fail("counts %v, whole compile %v", [4]int{a1, a2, a3, a4}, [4]int{b1, b2, b3, b4})
	}
	if inc.HasStaged() != full.HasStaged() {
		fail("HasStaged %v, whole compile %v", inc.HasStaged(), full.HasStaged())
	}
	if !slices.Equal(inc.Warnings, full.Warnings) {
		fail("warnings %q, whole compile %q", inc.Warnings, full.Warnings)
	}
	if di, df := fmt.Sprint(inc.DomainNameRules()), fmt.Sprint(full.DomainNameRules()); di != df {
		fail("domain rules %s, whole compile %s", di, df)
	}
	for _, n := range []string{"node-0", "node-1"} {
		li := slices.SortedFunc(slices.Values(inc.LocalPodAddrs(n)), netip.Addr.Compare)
		lf := slices.SortedFunc(slices.Values(full.LocalPodAddrs(n)), netip.Addr.Compare)
		if !slices.Equal(li, lf) {
			fail("local addresses of %s %v, whole compile %v", n, li, lf)
		}
	}
	if len(inc.podByName) != len(full.podByName) {
		fail("%d pods by name, whole compile %d", len(inc.podByName), len(full.podByName))
	}
	for name, fi := range full.podByName {
		ii, found := inc.podByName[name]
		if !found {
			fail("pod %s missing", name)
			continue
		}
		for _, dir := range []string{"ingress", "egress"} {
			for _, audit := range []bool{false, true} {
				if x, y := inc.Isolators(ii, dir, audit), full.Isolators(fi, dir, audit); !slices.Equal(x, y) {
					fail("pod %s %s isolators (audit %v) %v, whole compile %v", name, dir, audit, x, y)
				}
				if x, y := inc.ClusterPolicies(ii, dir, audit), full.ClusterPolicies(fi, dir, audit); !slices.Equal(x, y) {
					fail("pod %s %s cluster policies (audit %v) %v, whole compile %v", name, dir, audit, x, y)
				}
			}
		}
	}
	for _, f := range probes {
		vi, vf := inc.Decide(f), full.Decide(f)
		di, df := inc.DescribeFlow(f, vi), full.DescribeFlow(f, vf)
		if vi.Allow != vf.Allow || vi.Audit.Allow != vf.Audit.Allow || vi.Egress.Decision != vf.Egress.Decision ||
			vi.Ingress.Decision != vf.Ingress.Decision || di != df || inc.DescribeAudit(vi) != full.DescribeAudit(vf) {
			fail("%v: %s\nwhole compile: %s", f, di, df)
		}
		if !ok {
			return false
		}
	}
	return ok
}

// TestCompilerDecideAllocs: a Ruleset compiled incrementally decides
// without allocating, as a whole one does.
func TestCompilerDecideAllocs(t *testing.T) {
	w := newWorld(9)
	comp := NewCompiler()
	if _, err := comp.Compile(w.cluster()); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		w.addPod()
		w.changePod()
		w.updatePolicy()
	}
	rs, err := comp.Compile(w.cluster())
	if err != nil {
		t.Fatal(err)
	}
	if _, n := comp.Counts(); n != 1 {
		t.Fatalf("%d incremental compiles, want 1", n)
	}
	probes := w.probes(200)
	if n := testing.AllocsPerRun(20, func() {
		for _, f := range probes {
			rs.Decide(f)
		}
	}); n != 0 {
		t.Errorf("Decide allocates %.1f times per %d flows", n, len(probes))
	}
}

// TestCompilerWarnings: the worlds above do make warnings (so the
// equivalence test's check of them is not vacuous).
func TestCompilerWarnings(t *testing.T) {
	rs, err := NewCompiler().Compile(newWorld(1).cluster())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Warnings) == 0 {
		t.Error("no warnings")
	}
}
