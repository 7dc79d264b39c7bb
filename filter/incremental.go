package filter

import (
	"cmp"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// Compiler compiles the successive states of one cluster, each from the
// previous: a pod added, deleted or relabelled recompiles only what
// depends on it (its address entries, its policies' selected pods and
// its rule lists, the membership bits of the pod peer sets that hold it),
// a NetworkPolicy only its own rules and the pods it selects. The new
// Ruleset shares every unchanged structure with the previous one, which
// stays immutable: what changes is copied first (the top-level arrays,
// one memory copy each, and the few rule, peer and set slices touched).
//
// Pods, policies and rules keep their indexes from one state to the next;
// a deleted one leaves a free slot the next one reuses. Changes the
// incremental path does not cover (nodes, namespaces, hostNetwork pods,
// audit-mode policies, an address two objects claim, a pod in a namespace
// never seen) fall back to a whole Compile, which also starts over the
// slot numbering. ClusterNetworkPolicies are recompiled as a block on
// every change when there are any: their per-pod sets and peer classes
// depend on every pod (a few ms at 10,000 pods and 40 policies).
//
// A Compiler is not safe for concurrent use; the Rulesets it returns are.
type Compiler struct {
	rs   *Ruleset
	prev *cluster.Cluster
	b    *builder
	// The previous state's pods and NetworkPolicies, sorted by namespace
	// and name (its lists, unless they were not).
	pods []*corev1.Pod
	pols []*networkingv1.NetworkPolicy

	// Pod slots.
	podPols  [][]int32 // NetworkPolicies selecting the pod, by name
	podGroup []int32   // index in b.nsGroups[ns]; -1: none (hostNetwork, free)
	// Free pod slots by the namespace of the pod that left them: a new
	// pod takes one of its own namespace's first, which keeps a
	// namespace's pods near each other and so the pod peer sets' windows
	// (and what decisions read of them) small.
	freePods map[string][]int32
	nFree    int
	groupIdx map[string]int32 // ns + "\x00" + labels -> b.nsGroups[ns] index

	// NetworkPolicies by "ns/name".
	npByKey map[string]*npEntry
	nsPols  map[string][]int32 // policy slots per namespace
	npEnd   int32              // policies [0, npEnd) are NetworkPolicy slots
	ruleEnd int32              // and rules [0, ruleEnd)
	staged  int                // staged NetworkPolicies

	slotSel []labels.Selector // NetworkPolicy slot -> its pod selector

	sets      map[string]*trackedSet
	nsSelSets []*trackedSet
	nsSets    map[string][]*trackedSet
	useSet    map[peerUse]*trackedSet

	// contested are the addresses several objects claimed at the last
	// whole compile (which one wins is Compile's to settle again).
	contested map[netip.Addr]bool

	baseWarn []string // nodes' and pods' warnings of the last whole compile
	cnpWarn  []string // the ClusterNetworkPolicies' of the last compile

	full, incremental uint64
}

type npEntry struct {
	obj  *networkingv1.NetworkPolicy
	slot int32 // -1: skipped (warn says why)
	sel  labels.Selector
	warn []string
}

// trackedSet is a NetworkPolicy pod peer set kept current: its selectors,
// its members as a bitmap over all pod slots, and the rule peers holding
// it.
type trackedSet struct {
	key    string
	ns     string          // a set of one namespace's pods
	nsSel  labels.Selector // or of the namespaces this selects
	podSel labels.Selector
	bits   []uint64
	users  map[peerUse]struct{}
	set    *podSet
	dirty  bool
}

type peerUse struct {
	rule int32
	peer int32
}

// NewCompiler returns a Compiler with no previous state.
func NewCompiler() *Compiler { return &Compiler{} }

// Counts returns how many compiles were whole and how many incremental.
func (c *Compiler) Counts() (full, incremental uint64) { return c.full, c.incremental }

// Compile returns the Ruleset of cl, deciding every flow exactly as
// Compile(cl) would.
func (c *Compiler) Compile(cl *cluster.Cluster) (*Ruleset, error) {
	if cl == nil {
		return nil, errors.New("compile: no cluster state")
	}
	if c.rs != nil {
		if rs, ok := c.step(cl); ok {
			c.incremental++
			c.rs, c.prev = rs, cl
			return rs, nil
		}
	}
	c.whole(cl)
	c.full++
	return c.rs, nil
}

// whole compiles cl from scratch and records what the next steps need.
func (c *Compiler) whole(cl *cluster.Cluster) {
	b := newBuilder()
	*c = Compiler{b: b, full: c.full, incremental: c.incremental,
		npByKey: map[string]*npEntry{}, nsPols: map[string][]int32{},
		sets: map[string]*trackedSet{}, nsSets: map[string][]*trackedSet{}, groupIdx: map[string]int32{},
		useSet: map[peerUse]*trackedSet{}}
	b.newSet = c.newSet
	b.usePeer = c.usePeer
	b.nodes(cl.Nodes)
	b.namespaces(cl.Namespaces)
	b.pods(cl.Pods)
	c.baseWarn = slices.Clone(b.rs.Warnings)
	c.growPods(len(b.rs.pods))
	c.contested = contested(b.rs, cl.Pods)
	for ns, gs := range b.nsGroups {
		for gi := range gs {
			c.groupIdx[ns+"\x00"+gs[gi].labels.String()] = int32(gi)
			for _, p := range gs[gi].pods {
				c.podGroup[p] = int32(gi)
			}
		}
	}
	for _, np := range sortedPolicies(cl.Policies) {
		c.addPolicy(np)
	}
	c.npEnd, c.ruleEnd = int32(len(b.rs.policies)), int32(len(b.rs.rules))
	w0 := len(b.rs.Warnings)
	b.clusterPolicies(cl.ClusterPolicies)
	c.cnpWarn = slices.Clone(b.rs.Warnings[w0:])
	b.perPod()
	for pi := range b.rs.policies[:c.npEnd] {
		for _, p := range b.rs.policies[pi].selected {
			c.podPols[p] = append(c.podPols[p], int32(pi)) // policy order is name order within a namespace
		}
	}
	c.rs, c.prev = b.rs, cl
	c.pods, _ = sortedByKey(cl.Pods)
	c.pols, _ = sortedByKey(cl.Policies)
}

func (c *Compiler) growPods(n int) {
	for len(c.podPols) < n {
		c.podPols = append(c.podPols, nil)
		c.podGroup = append(c.podGroup, -1)
	}
}

func (c *Compiler) newSet(key, ns string, nsSel, podSel labels.Selector, members []int32, set *podSet) {
	t := &trackedSet{key: key, ns: ns, nsSel: nsSel, podSel: podSel, set: set, users: map[peerUse]struct{}{}}
	for _, m := range members {
		t.setBit(m, true)
	}
	c.sets[key] = t
	if nsSel == nil {
		c.nsSets[ns] = append(c.nsSets[ns], t)
	} else {
		c.nsSelSets = append(c.nsSelSets, t)
	}
}

func (c *Compiler) usePeer(key string, rule int32, peer int) {
	if t := c.sets[key]; t != nil {
		u := peerUse{rule, int32(peer)}
		t.users[u] = struct{}{}
		c.useSet[u] = t
	}
}

func (t *trackedSet) setBit(i int32, on bool) {
	w := int(i >> 6)
	for len(t.bits) <= w {
		t.bits = append(t.bits, 0)
	}
	old := t.bits[w]
	if on {
		t.bits[w] |= 1 << (uint(i) & 63)
	} else {
		t.bits[w] &^= 1 << (uint(i) & 63)
	}
	if t.bits[w] != old {
		t.dirty = true
	}
}

func (t *trackedSet) has(i int32) bool {
	w := int(i >> 6)
	return w < len(t.bits) && t.bits[w]&(1<<(uint(i)&63)) != 0
}

// podSet returns the set's members as the window podSet that newPodSet
// builds from them.
func (t *trackedSet) podSet() *podSet {
	lo, hi := -1, -1
	for w, x := range t.bits {
		if x != 0 {
			if lo < 0 {
				lo = w
			}
			hi = w
		}
	}
	if lo < 0 {
		return &podSet{}
	}
	return &podSet{base: int32(lo * 64), words: slices.Clone(t.bits[lo : hi+1])}
}

func (t *trackedSet) matches(b *builder, ns string, l labels.Set) bool {
	if t.nsSel == nil {
		return t.ns == ns && t.podSel.Matches(l)
	}
	return t.nsSel.Matches(b.namespaceLabels(ns)) && t.podSel.Matches(l)
}

func sortedPolicies(pols []*networkingv1.NetworkPolicy) []*networkingv1.NetworkPolicy {
	out := make([]*networkingv1.NetworkPolicy, 0, len(pols))
	for _, p := range pols {
		if p != nil {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(x, y *networkingv1.NetworkPolicy) int {
		return cmp.Or(strings.Compare(x.Namespace, y.Namespace), strings.Compare(x.Name, y.Name))
	})
	return out
}

// addPolicy compiles a NetworkPolicy into a slot (a free one first) and
// records its selector, warnings and pods.
func (c *Compiler) addPolicy(np *networkingv1.NetworkPolicy) *npEntry {
	b := c.b
	w0 := len(b.rs.Warnings)
	slot, sel := b.policy(np)
	e := &npEntry{obj: np, slot: slot, sel: sel}
	e.warn = slices.Clone(b.rs.Warnings[w0:])
	c.npByKey[np.Namespace+"/"+np.Name] = e
	if slot >= 0 {
		for len(c.slotSel) <= int(slot) {
			c.slotSel = append(c.slotSel, nil)
		}
		c.slotSel[slot] = sel
		c.nsPols[np.Namespace] = append(c.nsPols[np.Namespace], slot)
		if b.rs.policies[slot].staged {
			c.staged++
		}
	}
	return e
}

// step compiles cl from the previous state; ok is false when a change
// needs a whole compile. It may leave the Compiler's own state half
// changed then: the whole compile that follows starts over.
func (c *Compiler) step(cl *cluster.Cluster) (*Ruleset, bool) {
	prev := c.prev
	if !sameNodes(prev.Nodes, cl.Nodes) || !sameNamespaces(prev.Namespaces, cl.Namespaces) {
		return nil, false
	}
	podsGone, podsNew, pods, ok := diffPods(c.pods, cl.Pods)
	if !ok {
		return nil, false
	}
	polsGone, polsNew, pols, ok := diffPolicies(c.pols, cl.Policies)
	if !ok {
		return nil, false
	}
	c.pods, c.pols = pods, pols
	cnpSame := sameCNPs(prev.ClusterPolicies, cl.ClusterPolicies)
	hadCNP := len(c.rs.cnpSets) > 1 || len(c.rs.policies) > int(c.npEnd)
	if len(podsGone)+len(podsNew)+len(polsGone)+len(polsNew) == 0 && cnpSame {
		return c.rs, true
	}
	old := c.rs
	b := c.b
	rs := *old
	rs.pods = slices.Clone(old.pods)
	rs.hot = slices.Clone(old.hot)
	rs.policies = slices.Clone(old.policies[:c.npEnd])
	rs.rules = slices.Clone(old.rules[:c.ruleEnd])
	rs.addr4 = maps.Clone(old.addr4)
	rs.addr6 = maps.Clone(old.addr6)
	rs.podByName = maps.Clone(old.podByName)
	rs.portNames = slices.Clip(old.portNames)
	rs.Warnings = nil
	b.rs = &rs

	dirty := map[int32]bool{}
	copied := map[int32]bool{} // rules whose peers are this Ruleset's own

	for _, np := range polsGone {
		if !c.removePolicy(np, dirty) {
			return nil, false
		}
	}
	for _, p := range podsGone {
		if !c.removePod(p, dirty) {
			return nil, false
		}
	}
	for _, p := range podsNew {
		if !c.addPod(p, dirty) {
			return nil, false
		}
	}
	// The sets the pod changes touched, before new policies reuse them.
	c.refreshSets(copied)
	b.peerSets = make(map[string]*podSet, len(c.sets))
	for k, t := range c.sets {
		b.peerSets[k] = t.set
	}
	for _, np := range polsNew {
		if npStaged(b, np) {
			return nil, false
		}
		e := c.addPolicy(np)
		c.npEnd, c.ruleEnd = max(c.npEnd, int32(len(rs.policies))), max(c.ruleEnd, int32(len(rs.rules)))
		if e.slot < 0 {
			continue
		}
		for _, p := range rs.policies[e.slot].selected {
			c.podPols[p] = c.insertPolicy(c.podPols[p], e.slot)
			dirty[p] = true
		}
	}
	for p := range dirty {
		c.relist(p)
	}
	if hadCNP || len(cl.ClusterPolicies) > 0 {
		if !c.clusterBlock(cl.ClusterPolicies) {
			return nil, false
		}
	}
	rs.Warnings = slices.Clone(c.baseWarn)
	var warned []string // policies with warnings, in Compile's order
	for k, e := range c.npByKey {
		if len(e.warn) > 0 {
			warned = append(warned, k)
		}
	}
	slices.SortFunc(warned, func(x, y string) int {
		return cmp.Compare(c.npByKey[x].obj.Namespace+"\x00"+c.npByKey[x].obj.Name, c.npByKey[y].obj.Namespace+"\x00"+c.npByKey[y].obj.Name)
	})
	for _, k := range warned {
		rs.Warnings = append(rs.Warnings, c.npByKey[k].warn...)
	}
	rs.Warnings = append(rs.Warnings, c.cnpWarn...)
	return &rs, true
}

// removePolicy takes a NetworkPolicy out: its pods lose it, its rules and
// slot become free.
func (c *Compiler) removePolicy(np *networkingv1.NetworkPolicy, dirty map[int32]bool) bool {
	b, rs := c.b, c.b.rs
	key := np.Namespace + "/" + np.Name
	e := c.npByKey[key]
	if e == nil {
		return false
	}
	delete(c.npByKey, key)
	if e.slot < 0 {
		return true
	}
	pol := rs.policies[e.slot]
	if pol.staged {
		return false
	}
	for _, p := range pol.selected {
		c.podPols[p] = slices.DeleteFunc(c.podPols[p], func(x int32) bool { return x == e.slot })
		dirty[p] = true
	}
	for dir := range pol.rules {
		for _, ri := range pol.rules[dir] {
			for k := range rs.rules[ri].peers {
				u := peerUse{ri, int32(k)}
				t := c.useSet[u]
				if t == nil {
					continue
				}
				delete(c.useSet, u)
				delete(t.users, u)
				if len(t.users) == 0 {
					c.dropSet(t)
				}
			}
			rs.rules[ri] = rule{policy: -1}
			b.freeRules = append(b.freeRules, ri)
		}
	}
	c.nsPols[np.Namespace] = slices.DeleteFunc(c.nsPols[np.Namespace], func(x int32) bool { return x == e.slot })
	c.slotSel[e.slot] = nil
	rs.policies[e.slot] = policy{}
	b.freePols = append(b.freePols, e.slot)
	return true
}

func (c *Compiler) dropSet(t *trackedSet) {
	delete(c.sets, t.key)
	if t.nsSel == nil {
		c.nsSets[t.ns] = slices.DeleteFunc(c.nsSets[t.ns], func(x *trackedSet) bool { return x == t })
	} else {
		c.nsSelSets = slices.DeleteFunc(c.nsSelSets, func(x *trackedSet) bool { return x == t })
	}
}

// removePod takes a pod out: its addresses, its group, the sets and
// policies that held it; its slot becomes free.
func (c *Compiler) removePod(p *corev1.Pod, dirty map[int32]bool) bool {
	b, rs := c.b, c.b.rs
	key := p.Namespace + "/" + p.Name
	s, ok := rs.podByName[key]
	if !ok || rs.pods[s].hostNet || c.podGroup[s] < 0 {
		return false
	}
	pd := &rs.pods[s]
	for _, a := range pd.addrs {
		// Another object claiming the address is Compile's to settle.
		if ep, ok := rs.lookup(a); !ok || ep.pod != s || c.contested[a] {
			return false
		}
		if a.Is4() {
			delete(rs.addr4, a.As4())
		} else {
			delete(rs.addr6, a.As16())
		}
	}
	delete(rs.podByName, key)
	g := &b.nsGroups[pd.ns][c.podGroup[s]]
	g.pods = slices.DeleteFunc(g.pods, func(x int32) bool { return x == s })
	for _, t := range c.sets {
		if t.has(s) {
			t.setBit(s, false)
		}
	}
	for _, pi := range c.podPols[s] {
		pol := &rs.policies[pi]
		pol.selected = slices.DeleteFunc(slices.Clone(pol.selected), func(x int32) bool { return x == s })
	}
	c.podPols[s] = nil
	c.podGroup[s] = -1
	rs.pods[s] = pod{node: -1}
	rs.hot[s] = podHot{node: -1}
	if c.freePods == nil {
		c.freePods = map[string][]int32{}
	}
	c.freePods[p.Namespace] = append(c.freePods[p.Namespace], s)
	c.nFree++
	delete(dirty, s)
	return true
}

// addPod compiles a pod into a slot (a free one first), as builder.pods
// does, and adds it to the groups, sets and policies that select it.
func (c *Compiler) addPod(p *corev1.Pod, dirty map[int32]bool) bool {
	b, rs := c.b, c.b.rs
	ns := p.Namespace
	if _, known := b.nsGroups[ns]; !known || p.Spec.HostNetwork {
		return false
	}
	key := ns + "/" + p.Name
	if _, dup := rs.podByName[key]; dup {
		return false
	}
	s, ok := c.freeSlot(ns)
	if !ok {
		s = int32(len(rs.pods))
		rs.pods = append(rs.pods, pod{})
		rs.hot = append(rs.hot, podHot{})
		c.growPods(len(rs.pods))
	}
	pd := pod{ns: ns, name: p.Name, nodeName: p.Spec.NodeName, node: -1, labels: p.Labels}
	if n, ok := rs.nodeByName[p.Spec.NodeName]; ok {
		pd.node = n
	}
	for _, ctr := range p.Spec.Containers {
		for _, cp := range ctr.Ports {
			if cp.Name == "" || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			pd.named = append(pd.named, namedPort{name: b.portID(cp.Name), proto: protoNumber(cp.Protocol), port: uint16(cp.ContainerPort)})
		}
	}
	for _, a := range cluster.PodAddrs(p) {
		a = a.Unmap()
		if _, taken := rs.lookup(a); taken {
			return false
		}
		pd.addrs = append(pd.addrs, a)
		rs.setAddr(a, endpoint{pod: s, node: pd.node, host: -1})
	}
	rs.podByName[key] = s
	set := labels.Set(p.Labels)
	lk := ns + "\x00" + set.String()
	gi, ok := c.groupIdx[lk]
	if !ok {
		gi = int32(len(b.nsGroups[ns]))
		b.nsGroups[ns] = append(b.nsGroups[ns], labelGroup{labels: set})
		c.groupIdx[lk] = gi
	}
	b.nsGroups[ns][gi].pods = append(b.nsGroups[ns][gi].pods, s)
	c.podGroup[s] = gi
	for _, pi := range c.nsPols[ns] {
		if c.slotSel[pi].Matches(set) {
			pol := &rs.policies[pi]
			i, _ := slices.BinarySearch(pol.selected, s)
			pol.selected = slices.Insert(slices.Clip(pol.selected), i, s)
			c.podPols[s] = c.insertPolicy(c.podPols[s], pi)
		}
	}
	for _, t := range c.nsSets[ns] {
		if t.matches(b, ns, set) {
			t.setBit(s, true)
		}
	}
	for _, t := range c.nsSelSets {
		if t.matches(b, ns, set) {
			t.setBit(s, true)
		}
	}
	rs.pods[s] = pd
	dirty[s] = true
	return true
}

// freeSlot takes a free pod slot, one namespace ns left if there is one.
func (c *Compiler) freeSlot(ns string) (int32, bool) {
	if c.nFree == 0 {
		return 0, false
	}
	from := ns
	if len(c.freePods[ns]) == 0 {
		for k, l := range c.freePods {
			if len(l) > 0 {
				from = k
				break
			}
		}
	}
	l := c.freePods[from]
	s := l[len(l)-1]
	if len(l) == 1 {
		delete(c.freePods, from)
	} else {
		c.freePods[from] = l[:len(l)-1]
	}
	c.nFree--
	return s, true
}

// insertPolicy adds policy slot pi to a pod's list, kept in name order
// (the policies of one namespace), which is Compile's rule order.
func (c *Compiler) insertPolicy(list []int32, pi int32) []int32 {
	pols := c.b.rs.policies
	i, _ := slices.BinarySearchFunc(list, pi, func(x, y int32) int {
		return strings.Compare(pols[x].name, pols[y].name)
	})
	return slices.Insert(list, i, pi)
}

// refreshSets rebuilds the sets whose members changed and gives them to
// every rule peer holding them (copying the rule's peers first).
func (c *Compiler) refreshSets(copied map[int32]bool) {
	rs := c.b.rs
	for _, t := range c.sets {
		if !t.dirty {
			continue
		}
		t.dirty = false
		t.set = t.podSet()
		for u := range t.users {
			r := &rs.rules[u.rule]
			if !copied[u.rule] {
				r.peers = slices.Clone(r.peers)
				copied[u.rule] = true
			}
			r.peers[u.peer].pods = *t.set
		}
	}
}

// relist recomputes pod p's policies and rules per direction, as perPod
// does.
func (c *Compiler) relist(p int32) {
	rs := c.b.rs
	pd := &rs.pods[p]
	var enf, aud [2]podDir
	for dir := 0; dir < 2; dir++ {
		enf[dir].cnp, aud[dir].cnp = pd.enforced[dir].cnp, pd.audit[dir].cnp
		for _, pi := range c.podPols[p] {
			pol := &rs.policies[pi]
			if !pol.types[dir] {
				continue
			}
			aud[dir].isolators = append(aud[dir].isolators, pi)
			aud[dir].rules = append(aud[dir].rules, pol.rules[dir]...)
			if pol.staged {
				continue
			}
			enf[dir].isolators = append(enf[dir].isolators, pi)
			enf[dir].rules = append(enf[dir].rules, pol.rules[dir]...)
		}
	}
	pd.enforced, pd.audit = enf, aud
	if !rs.hasStaged {
		pd.audit = pd.enforced
	}
	h := &rs.hot[p]
	h.node = pd.node
	for dir := 0; dir < 2; dir++ {
		h.isolated[dir] = len(pd.enforced[dir].isolators) > 0
		h.rules[dir] = pd.enforced[dir].rules
		h.cnp[dir] = pd.enforced[dir].cnp
	}
}

// clusterBlock recompiles the ClusterNetworkPolicies after the
// NetworkPolicies' slots, with the pods as they are now.
func (c *Compiler) clusterBlock(cnps []*cnpv1beta1.ClusterNetworkPolicy) bool {
	b, rs := c.b, c.b.rs
	staged := c.staged > 0
	for _, p := range cnps {
		if p != nil && p.Annotations[ModeAnnotation] == ModeAudit {
			staged = true
		}
	}
	if staged != rs.hasStaged {
		return false
	}
	rs.passRules, rs.domainRules, rs.peerClass = nil, nil, nil
	rs.cnpSets = []cnpSet{{}}
	for i := range rs.pods {
		for dir := 0; dir < 2; dir++ {
			rs.pods[i].enforced[dir].cnp, rs.pods[i].audit[dir].cnp = 0, 0
		}
	}
	for _, gs := range b.nsGroups {
		for gi := range gs {
			gs[gi].cnp = [2][2][]int32{}
		}
	}
	b.cnpFast = nil
	w0 := len(rs.Warnings)
	b.clusterPolicies(cnps)
	c.cnpWarn = slices.Clone(rs.Warnings[w0:])
	rs.Warnings = rs.Warnings[:w0]
	for i := range rs.hot {
		for dir := 0; dir < 2; dir++ {
			rs.hot[i].cnp[dir] = rs.pods[i].enforced[dir].cnp
		}
	}
	return true
}

// contested returns the addresses more than one node or pod claims.
func contested(rs *Ruleset, pods []*corev1.Pod) map[netip.Addr]bool {
	claims := map[netip.Addr]int{}
	for i := range rs.nodes {
		for _, a := range rs.nodes[i].addrs {
			claims[a]++
		}
	}
	for _, p := range pods {
		if p == nil || !cluster.PodActive(p) {
			continue
		}
		for _, a := range cluster.PodAddrs(p) {
			claims[a.Unmap()]++
		}
		if ip, err := netip.ParseAddr(p.Status.HostIP); err == nil && p.Spec.HostNetwork {
			claims[ip.Unmap()]++
		}
	}
	var out map[netip.Addr]bool
	for a, n := range claims {
		if n > 1 {
			if out == nil {
				out = map[netip.Addr]bool{}
			}
			out[a] = true
		}
	}
	return out
}

func npStaged(b *builder, np *networkingv1.NetworkPolicy) bool {
	return np.Annotations[ModeAnnotation] == ModeAudit || b.nsAudit[np.Namespace]
}

// object is what diff needs of a listed object.
type object interface {
	comparable
	GetNamespace() string
	GetName() string
}

// diff merges two states' objects by namespace and name: what went away
// (or changed: its old version) and what came (or its new version).
// Objects keep is false for are left out of both states. prev must be
// sorted by namespace and name without repeats (a list diff returned as
// sorted). cur usually is too (an informer's lists are): then an object
// that did not change costs one pointer comparison, and only the keys
// around changes are read to prove cur sorted; otherwise cur is sorted
// first. sorted is cur as sorted; ok is false when a key repeats in it.
func diff[T object](prev, cur []T, keep func(T) bool, same func(a, b T) bool) (gone, added, sorted []T, ok bool) {
	if gone, added, ok := merge(prev, cur, keep, same); ok {
		return gone, added, cur, true
	}
	b, ok := sortedByKey(cur)
	if !ok {
		return nil, nil, nil, false
	}
	gone, added, ok = merge(prev, b, keep, same)
	return gone, added, b, ok
}

// merge is diff for a cur that is sorted; ok is false when it is not.
func merge[T object](a, b []T, keep func(T) bool, same func(a, b T) bool) (gone, added []T, ok bool) {
	var zero T
	i, j := 0, 0
	lastEqual := false // b[j-1] was a[i-1]
	for i < len(a) || j < len(b) {
		equal := i < len(a) && j < len(b) && a[i] == b[j]
		if j < len(b) && (b[j] == zero || (j > 0 && !(equal && lastEqual) && compareKeys(b[j-1], b[j]) >= 0)) {
			return nil, nil, false
		}
		lastEqual = equal
		if equal {
			i++
			j++
			continue
		}
		c := 0
		switch {
		case j == len(b):
			c = -1
		case i == len(a):
			c = 1
		default:
			c = compareKeys(a[i], b[j])
		}
		switch {
		case c < 0:
			if keep(a[i]) {
				gone = append(gone, a[i])
			}
			i++
			lastEqual = false
			continue // b[j] is still to be checked against b[j-1]
		case c > 0:
			if keep(b[j]) {
				added = append(added, b[j])
			}
			j++
		default:
			ka, kb := keep(a[i]), keep(b[j])
			if !ka || !kb || !same(a[i], b[j]) {
				if ka {
					gone = append(gone, a[i])
				}
				if kb {
					added = append(added, b[j])
				}
			}
			i++
			j++
		}
	}
	return gone, added, true
}

func compareKeys[T object](x, y T) int {
	return cmp.Or(strings.Compare(x.GetNamespace(), y.GetNamespace()), strings.Compare(x.GetName(), y.GetName()))
}

// sortedByKey returns objs sorted by namespace and name without nil
// entries (objs itself when it already is); ok is false when a key
// repeats.
func sortedByKey[T object](objs []T) ([]T, bool) {
	var zero T
	sorted := true
	for i := range objs {
		if objs[i] == zero {
			sorted = false
			break
		}
		if i > 0 {
			if c := compareKeys(objs[i-1], objs[i]); c >= 0 {
				if c == 0 {
					return nil, false
				}
				sorted = false
				break
			}
		}
	}
	if sorted {
		return objs, true
	}
	out := slices.DeleteFunc(slices.Clone(objs), func(o T) bool { return o == zero })
	slices.SortFunc(out, compareKeys[T])
	for i := 1; i < len(out); i++ {
		if compareKeys(out[i-1], out[i]) == 0 {
			return nil, false
		}
	}
	return out, true
}

// diffPods compares the pods Compile keeps (active ones); an update that
// changes nothing the compiler reads is no change.
func diffPods(prev, cur []*corev1.Pod) (gone, added, sorted []*corev1.Pod, ok bool) {
	return diff(prev, cur, cluster.PodActive, samePod)
}

func samePod(a, b *corev1.Pod) bool {
	if a.Spec.HostNetwork || b.Spec.HostNetwork {
		return false // its addresses depend on more; Compile decides
	}
	if a.Spec.NodeName != b.Spec.NodeName || !maps.Equal(a.Labels, b.Labels) ||
		!slices.Equal(cluster.PodAddrs(a), cluster.PodAddrs(b)) || len(a.Spec.Containers) != len(b.Spec.Containers) {
		return false
	}
	for i := range a.Spec.Containers {
		if !slices.Equal(a.Spec.Containers[i].Ports, b.Spec.Containers[i].Ports) {
			return false
		}
	}
	return true
}

func diffPolicies(prev, cur []*networkingv1.NetworkPolicy) (gone, added, sorted []*networkingv1.NetworkPolicy, ok bool) {
	return diff(prev, cur, func(*networkingv1.NetworkPolicy) bool { return true }, func(a, b *networkingv1.NetworkPolicy) bool {
		// The API server gives every change a new resourceVersion.
		return a.ResourceVersion != "" && a.ResourceVersion == b.ResourceVersion
	})
}

func sameNodes(a, b []*corev1.Node) bool {
	return slices.EqualFunc(a, b, func(x, y *corev1.Node) bool {
		if x == y {
			return true
		}
		if x == nil || y == nil {
			return false
		}
		return x.Name == y.Name && maps.Equal(x.Labels, y.Labels) && x.Spec.PodCIDR == y.Spec.PodCIDR &&
			slices.Equal(x.Spec.PodCIDRs, y.Spec.PodCIDRs) && slices.Equal(x.Status.Addresses, y.Status.Addresses)
	})
}

func sameNamespaces(a, b []*corev1.Namespace) bool {
	return slices.EqualFunc(a, b, func(x, y *corev1.Namespace) bool {
		if x == y {
			return true
		}
		return x != nil && y != nil && x.Name == y.Name && maps.Equal(x.Labels, y.Labels)
	})
}

func sameCNPs(a, b []*cnpv1beta1.ClusterNetworkPolicy) bool {
	return slices.EqualFunc(a, b, func(x, y *cnpv1beta1.ClusterNetworkPolicy) bool {
		return x == y || (x != nil && y != nil && x.ResourceVersion != "" && x.ResourceVersion == y.ResourceVersion && x.Name == y.Name)
	})
}

// liveCount counts the slots in use (Compiler's free slots are zero).
func liveCount[T any](s []T, free func(*T) bool) int {
	n := 0
	for i := range s {
		if !free(&s[i]) {
			n++
		}
	}
	return n
}
