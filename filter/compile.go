package filter

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// Directions index per-direction arrays.
const (
	ingress = 0
	egress  = 1
)

var dirNames = [2]string{"ingress", "egress"}

// Annotation and label that put a policy, or every policy of a namespace,
// in audit mode: decided and reported, never enforced.
const (
	ModeAnnotation = "nfqpolicy.io/mode"
	ModeLabel      = "nfqpolicy.io/mode"
	ModeAudit      = "audit"
)

// Ruleset is a compiled, immutable view of a cluster's policies. It is safe
// for concurrent use; a change in the cluster produces a new Ruleset.
type Ruleset struct {
	pods     []pod
	hot      []podHot // what Decide reads of each pod, packed apart from the rest
	nodes    []node
	policies []policy
	rules    []rule

	addr4 map[[4]byte]endpoint
	addr6 map[[16]byte]endpoint

	// podCIDRs are every node's spec.podCIDRs; an address inside one that
	// is in neither address map is a pod the snapshot does not know yet.
	podCIDRs []podCIDR
	cidr4    cidrIndex
	cidr6    cidrIndex

	podByName  map[string]int32 // "ns/name"
	nodeByName map[string]int32
	portNames  []string // named ports, interned; index is portRange.name

	// cnpSets are the distinct ClusterNetworkPolicy rule lists pods get
	// per direction (pods with the same labels in namespaces with the same
	// labels share one); index 0 is the empty set.
	cnpSets []cnpSet
	// peerClass numbers each pod by the ClusterNetworkPolicy pod peers
	// that hold it (see peerClasses); nil when the class bitmaps are off.
	peerClass []uint16
	// portBounds splits protocol<<16 | port into the port classes the
	// ClusterNetworkPolicy walk picks rules by (builder.portBounds); set
	// with peerClass.
	portBounds []uint32
	// passRules lists every Pass rule (rules index); Side.Pass is 1 + an
	// index here.
	passRules []int32
	// domainRules lists the ClusterNetworkPolicy egress rules with
	// domainNames peers, which are not enforced (Ruleset.DomainNameRules).
	domainRules []int32
	// nodeOther maps node addresses other than InternalIP (ExternalIP,
	// ...) to their node: they are external addresses for everything but
	// ClusterNetworkPolicy nodes peers, which match any listed address.
	nodeOther map[netip.Addr]int32

	hasStaged bool

	// Warnings lists what Compile skipped (an unparsable selector or CIDR
	// that validation should have rejected), so that nothing is dropped
	// silently.
	Warnings []string
}

// endpoint is what an address stands for.
type endpoint struct {
	pod  int32 // -1: not a (policed) pod
	node int32 // the node this address is, or the pod runs on; -1: none
	host int32 // a hostNetwork pod on this node address, for naming; -1
}

// external is an address in neither map: every mapped address has a pod,
// a node or a hostNetwork pod, so this value means "not mapped". Whether
// it is an unknown pod (in a node's pod CIDR) is asked only when needed,
// which keeps map values small.
var external = endpoint{pod: -1, node: -1, host: -1}

// podCIDR is one range a node hands out pod addresses from.
type podCIDR struct {
	node   int32
	prefix netip.Prefix
}

// cidrIndex finds the pod CIDR containing an address with one map probe
// per distinct prefix length (usually one), whatever the node count.
type cidrIndex struct {
	bits  []int // distinct prefix lengths, longest first
	byNet map[netip.Prefix]int32
}

// find returns the podCIDRs index of the range containing a, or -1. It
// does not allocate.
func (ci *cidrIndex) find(a netip.Addr) int32 {
	for _, b := range ci.bits {
		p, err := a.Prefix(b)
		if err != nil {
			continue
		}
		if i, ok := ci.byNet[p]; ok {
			return i
		}
	}
	return -1
}

func (ci *cidrIndex) add(p netip.Prefix, idx int32) {
	if ci.byNet == nil {
		ci.byNet = make(map[netip.Prefix]int32)
	}
	ci.byNet[p] = idx
	if !slices.Contains(ci.bits, p.Bits()) {
		ci.bits = append(ci.bits, p.Bits())
		slices.SortFunc(ci.bits, func(x, y int) int { return y - x })
	}
}

type pod struct {
	ns, name string
	node     int32
	nodeName string
	labels   map[string]string
	addrs    []netip.Addr
	named    []namedPort
	hostNet  bool
	// enforced holds the policies and rules that police the pod per
	// direction; audit the same with staged policies added. When no policy
	// is staged both are the same.
	enforced [2]podDir
	audit    [2]podDir
}

// podHot is the part of a pod that deciding a flow reads, kept in its own
// array so that a decision touches few cache lines on large clusters.
type podHot struct {
	node     int32
	isolated [2]bool
	cnp      [2]int32   // enforced ClusterNetworkPolicy rules per direction: a cnpSets index
	rules    [2][]int32 // enforced NetworkPolicy rules per direction
}

type podDir struct {
	isolators []int32 // NetworkPolicies selecting the pod for this direction
	rules     []int32 // their rules, in policy then rule order
	cnp       int32   // the ClusterNetworkPolicy rules: a cnpSets index
}

type namedPort struct {
	name  int32
	proto uint8
	port  uint16
}

type node struct {
	name     string
	addrs    []netip.Addr
	podCIDRs []netip.Prefix
}

// policy is a NetworkPolicy (kind tierNP) or a ClusterNetworkPolicy
// (tierAdmin, tierBaseline; ns is empty).
type policy struct {
	ns, name string
	id       string // CNPName of a ClusterNetworkPolicy, built once: metrics key on it per flow
	kind     uint8
	priority int32
	types    [2]bool
	staged   bool
	rules    [2][]int32
	selected []int32
	// ruleNames are a ClusterNetworkPolicy's rule names per direction.
	ruleNames [2][]string
}

// Policy kinds, which for ClusterNetworkPolicies are their tiers.
const (
	tierNP uint8 = iota
	tierAdmin
	tierBaseline
)

// Rule actions: NetworkPolicy rules only allow; ClusterNetworkPolicy rules
// accept, deny or pass.
const (
	actAllow uint8 = iota
	actAccept
	actDeny
	actPass
)

type rule struct {
	policy  int32
	dir     uint8
	index   int16
	action  uint8
	anyPeer bool
	anyPort bool
	passID  uint16 // Side.Pass of a Pass rule (0: beyond the table)
	peers   []peer
	ports   []portRange
	// A rule stays 64 bytes, one cache line: a ClusterNetworkPolicy
	// rule's name is in its policy's ruleNames.
}

// Peer kinds.
const (
	peerBlock    uint8 = iota // NetworkPolicy ipBlock: cidr minus except
	peerPods                  // pod selectors: pods
	peerNetworks              // ClusterNetworkPolicy networks: any of nets
	peerNodes                 // ClusterNetworkPolicy nodes: node addresses of nodes
	peerNever                 // matches nothing (domainNames, an unusable peer)
)

// peer is one element of from/to.
type peer struct {
	kind   uint8
	pods   podSet // by value: one pointer hop fewer per check
	nodes  podSet // node indexes (peerNodes)
	cidr   netip.Prefix
	except []netip.Prefix
	nets   []netip.Prefix
	// what the peer was written as, for explanations
	text string
}

// portRange matches one protocol and a port range, or a named port
// (name >= 0) resolved against the destination pod.
type portRange struct {
	proto  uint8
	lo, hi uint16
	name   int32
}

// Compile builds a Ruleset from a cluster. The objects are expected to be
// defaulted and validated (package cluster does both); whatever still cannot be
// compiled is skipped and listed in Ruleset.Warnings rather than failing
// the whole cluster, because one bad object must not stop enforcement of
// the rest. An error is returned only for a nil cluster.
func Compile(c *cluster.Cluster) (*Ruleset, error) {
	if c == nil {
		return nil, errors.New("compile: no cluster state")
	}
	b := newBuilder()
	b.nodes(c.Nodes)
	b.namespaces(c.Namespaces)
	b.pods(c.Pods)
	b.policies(c.Policies)
	b.clusterPolicies(c.ClusterPolicies)
	b.perPod()
	return b.rs, nil
}

func newBuilder() *builder {
	return &builder{
		rs: &Ruleset{
			addr4:      make(map[[4]byte]endpoint),
			addr6:      make(map[[16]byte]endpoint),
			podByName:  make(map[string]int32),
			nodeByName: make(map[string]int32),
			cnpSets:    []cnpSet{{}},
		},
		portIDs:  make(map[string]int32),
		nsLabels: make(map[string]labels.Set),
		peerSets: make(map[string]*podSet),
	}
}

type builder struct {
	rs       *Ruleset
	portIDs  map[string]int32
	nsLabels map[string]labels.Set
	nsAudit  map[string]bool
	// pods of each namespace grouped by identical label sets, so a selector
	// is evaluated once per distinct set rather than once per pod.
	nsGroups map[string][]labelGroup
	nsOrder  []string
	peerSets map[string]*podSet
	// nodeLabels are the nodes' labels by node index (nodes peers).
	nodeLabels []labels.Set
	// cnpFast holds each ClusterNetworkPolicy rule's walk form, built once.
	cnpFast map[int32]cnpRule

	// The incremental Compiler's hooks and free slots (nil for Compile):
	// newSet learns every pod peer set a NetworkPolicy peer makes, usePeer
	// every rule peer that holds one; free slots are reused before the
	// slices grow.
	newSet    func(key, ns string, nsSel, podSel labels.Selector, members []int32, set *podSet)
	usePeer   func(key string, rule int32, peer int)
	freePols  []int32
	freeRules []int32
}

type labelGroup struct {
	labels labels.Set
	pods   []int32
	// cnp lists the ClusterNetworkPolicies whose subject selects the
	// group, per direction, in evaluation order: [0] enforced, [1] with
	// staged ones too.
	cnp [2][2][]int32
}

func (b *builder) warn(format string, args ...any) {
	b.rs.Warnings = append(b.rs.Warnings, fmt.Sprintf(format, args...))
}

func (b *builder) portID(name string) int32 {
	if id, ok := b.portIDs[name]; ok {
		return id
	}
	id := int32(len(b.rs.portNames))
	b.portIDs[name] = id
	b.rs.portNames = append(b.rs.portNames, name)
	return id
}

func (b *builder) nodes(nodes []*corev1.Node) {
	for _, n := range nodes {
		if n == nil {
			continue
		}
		if _, dup := b.rs.nodeByName[n.Name]; dup {
			b.warn("node %s: listed twice; the first is used", n.Name)
			continue
		}
		idx := int32(len(b.rs.nodes))
		nd := node{name: n.Name}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP {
				// ClusterNetworkPolicy nodes peers match every address
				// status lists; everything else sees only InternalIP.
				if ip, err := netip.ParseAddr(a.Address); err == nil {
					if b.rs.nodeOther == nil {
						b.rs.nodeOther = make(map[netip.Addr]int32)
					}
					if _, dup := b.rs.nodeOther[ip.Unmap()]; !dup {
						b.rs.nodeOther[ip.Unmap()] = idx
					}
				}
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				b.warn("node %s: status.addresses: %q is not an IP address", n.Name, a.Address)
				continue
			}
			ip = ip.Unmap()
			nd.addrs = append(nd.addrs, ip)
			b.rs.setAddr(ip, endpoint{pod: -1, node: idx, host: -1})
		}
		nd.podCIDRs = b.podCIDRs(n, idx)
		b.rs.nodeByName[n.Name] = idx
		b.rs.nodes = append(b.rs.nodes, nd)
		b.nodeLabels = append(b.nodeLabels, labels.Set(n.Labels))
	}
}

// podCIDRs indexes node n's spec.podCIDRs (spec.podCIDR when the list is
// empty). A range another node already claims keeps its first owner.
func (b *builder) podCIDRs(n *corev1.Node, idx int32) []netip.Prefix {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			b.warn("node %s: spec.podCIDRs: %q is not a CIDR", n.Name, c)
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		p = p.Masked()
		ci := &b.rs.cidr6
		if p.Addr().Is4() {
			ci = &b.rs.cidr4
		}
		if prev, dup := ci.byNet[p]; dup {
			b.warn("node %s: pod CIDR %s already belongs to node %s, which keeps it", n.Name, p, b.rs.nodes[b.rs.podCIDRs[prev].node].name)
			continue
		}
		ci.add(p, int32(len(b.rs.podCIDRs)))
		b.rs.podCIDRs = append(b.rs.podCIDRs, podCIDR{node: idx, prefix: p})
		out = append(out, p)
	}
	return out
}

func (b *builder) namespaces(nss []*corev1.Namespace) {
	b.nsAudit = make(map[string]bool)
	for _, ns := range nss {
		if ns == nil {
			continue
		}
		set := labels.Set{}
		for k, v := range ns.Labels {
			set[k] = v
		}
		// The API server sets this label; a snapshot may lack it.
		set[corev1.LabelMetadataName] = ns.Name
		b.nsLabels[ns.Name] = set
		if ns.Labels[ModeLabel] == ModeAudit {
			b.nsAudit[ns.Name] = true
		}
	}
}

func (b *builder) namespaceLabels(ns string) labels.Set {
	if set, ok := b.nsLabels[ns]; ok {
		return set
	}
	set := labels.Set{corev1.LabelMetadataName: ns}
	b.nsLabels[ns] = set
	return set
}

func (b *builder) pods(pods []*corev1.Pod) {
	sorted := make([]*corev1.Pod, 0, len(pods))
	for _, p := range pods {
		if p != nil && cluster.PodActive(p) {
			sorted = append(sorted, p)
		}
	}
	// Namespace order keeps one namespace's pods contiguous, which keeps
	// podSet windows small.
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Namespace != sorted[j].Namespace {
			return sorted[i].Namespace < sorted[j].Namespace
		}
		return sorted[i].Name < sorted[j].Name
	})
	b.nsGroups = make(map[string][]labelGroup)
	groupIdx := make(map[string]int)
	for _, p := range sorted {
		key := p.Namespace + "/" + p.Name
		if _, dup := b.rs.podByName[key]; dup {
			b.warn("pod %s: listed twice; the first is used", key)
			continue
		}
		idx := int32(len(b.rs.pods))
		pd := pod{ns: p.Namespace, name: p.Name, nodeName: p.Spec.NodeName, node: -1, labels: p.Labels, hostNet: p.Spec.HostNetwork}
		if n, ok := b.rs.nodeByName[p.Spec.NodeName]; ok {
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
		b.rs.podByName[key] = idx
		if p.Spec.HostNetwork {
			// A hostNetwork pod is its node: never selected, never matched
			// by pod selectors, its traffic is node traffic.
			b.rs.pods = append(b.rs.pods, pd)
			b.hostNetworkAddrs(p, idx)
			continue
		}
		for _, a := range cluster.PodAddrs(p) {
			a = a.Unmap()
			pd.addrs = append(pd.addrs, a)
			b.rs.setAddr(a, endpoint{pod: idx, node: pd.node, host: -1})
		}
		b.rs.pods = append(b.rs.pods, pd)
		if _, seen := b.nsGroups[p.Namespace]; !seen {
			b.nsOrder = append(b.nsOrder, p.Namespace)
		}
		lk := p.Namespace + "\x00" + labels.Set(p.Labels).String()
		if gi, ok := groupIdx[lk]; ok {
			g := b.nsGroups[p.Namespace]
			g[gi].pods = append(g[gi].pods, idx)
			continue
		}
		groupIdx[lk] = len(b.nsGroups[p.Namespace])
		b.nsGroups[p.Namespace] = append(b.nsGroups[p.Namespace], labelGroup{labels: labels.Set(p.Labels), pods: []int32{idx}})
	}
	// Namespaces that exist but have no pods still need to be known to
	// namespace selectors (they select nothing, but explain lists them).
	for ns := range b.nsLabels {
		if _, ok := b.nsGroups[ns]; !ok {
			b.nsGroups[ns] = nil
			b.nsOrder = append(b.nsOrder, ns)
		}
	}
	sort.Strings(b.nsOrder)
}

// hostNetworkAddrs maps a hostNetwork pod's addresses to its node, adding
// them when the node object is missing from the snapshot.
func (b *builder) hostNetworkAddrs(p *corev1.Pod, idx int32) {
	var addrs []netip.Addr
	for _, a := range cluster.PodAddrs(p) {
		addrs = append(addrs, a.Unmap())
	}
	if ip, err := netip.ParseAddr(p.Status.HostIP); err == nil {
		addrs = append(addrs, ip.Unmap())
	}
	n := b.rs.pods[idx].node
	for _, a := range addrs {
		if ep, ok := b.rs.lookup(a); ok && ep.node >= 0 {
			continue // the Node object already names this address
		}
		b.rs.setAddr(a, endpoint{pod: -1, node: n, host: idx})
	}
}

func (rs *Ruleset) setAddr(a netip.Addr, ep endpoint) {
	if a.Is4() {
		rs.addr4[a.As4()] = ep
	} else {
		rs.addr6[a.As16()] = ep
	}
}

func protoNumber(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolUDP:
		return ProtoUDP
	case corev1.ProtocolSCTP:
		return ProtoSCTP
	default:
		return ProtoTCP
	}
}

func (b *builder) policies(pols []*networkingv1.NetworkPolicy) {
	sorted := make([]*networkingv1.NetworkPolicy, 0, len(pols))
	for _, p := range pols {
		if p != nil {
			sorted = append(sorted, p)
		}
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Namespace != sorted[j].Namespace {
			return sorted[i].Namespace < sorted[j].Namespace
		}
		return sorted[i].Name < sorted[j].Name
	})
	for _, np := range sorted {
		b.policy(np)
	}
}

// policy compiles a NetworkPolicy into a policy slot and returns the slot
// and its pod selector; -1 when it is skipped (and says why in Warnings).
func (b *builder) policy(np *networkingv1.NetworkPolicy) (int32, labels.Selector) {
	id := np.Namespace + "/" + np.Name
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		b.warn("NetworkPolicy %s: spec.podSelector: %v; policy skipped", id, err)
		return -1, nil
	}
	pidx := b.policySlot()
	pol := policy{ns: np.Namespace, name: np.Name}
	pol.staged = np.Annotations[ModeAnnotation] == ModeAudit || b.nsAudit[np.Namespace]
	if pol.staged {
		b.rs.hasStaged = true
	}
	types := np.Spec.PolicyTypes
	if len(types) == 0 {
		types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			types = append(types, networkingv1.PolicyTypeEgress)
		}
	}
	for _, t := range types {
		switch t {
		case networkingv1.PolicyTypeIngress:
			pol.types[ingress] = true
		case networkingv1.PolicyTypeEgress:
			pol.types[egress] = true
		}
	}
	pol.selected = b.selectPods(np.Namespace, sel)
	if pol.types[ingress] {
		for i, r := range np.Spec.Ingress {
			pol.rules[ingress] = append(pol.rules[ingress], b.rule(pidx, ingress, i, np, r.From, r.Ports))
		}
	}
	if pol.types[egress] {
		for i, r := range np.Spec.Egress {
			pol.rules[egress] = append(pol.rules[egress], b.rule(pidx, egress, i, np, r.To, r.Ports))
		}
	}
	b.rs.policies[pidx] = pol
	return pidx, sel
}

// policySlot reserves a policy index: a free one, or a new one at the end.
func (b *builder) policySlot() int32 {
	if n := len(b.freePols); n > 0 {
		i := b.freePols[n-1]
		b.freePols = b.freePols[:n-1]
		return i
	}
	b.rs.policies = append(b.rs.policies, policy{})
	return int32(len(b.rs.policies) - 1)
}

// ruleSlot reserves a rule index the same way.
func (b *builder) ruleSlot() int32 {
	if n := len(b.freeRules); n > 0 {
		i := b.freeRules[n-1]
		b.freeRules = b.freeRules[:n-1]
		return i
	}
	b.rs.rules = append(b.rs.rules, rule{})
	return int32(len(b.rs.rules) - 1)
}

// selectPods returns the pods of namespace ns whose labels match sel.
func (b *builder) selectPods(ns string, sel labels.Selector) []int32 {
	var out []int32
	for _, g := range b.nsGroups[ns] {
		if sel.Matches(g.labels) {
			out = append(out, g.pods...)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func (b *builder) rule(pidx int32, dir uint8, index int, np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) int32 {
	field := fmt.Sprintf("spec.%s[%d]", dirNames[dir], index)
	peerField := "from"
	if dir == egress {
		peerField = "to"
	}
	r := rule{policy: pidx, dir: dir, index: int16(index), action: actAllow, anyPeer: len(peers) == 0, anyPort: len(ports) == 0}
	type use struct {
		key  string
		peer int
	}
	var uses []use // the pod peers' sets, for usePeer
	for i, pe := range peers {
		p, key, err := b.peer(np.Namespace, pe)
		if key != "" && b.usePeer != nil {
			uses = append(uses, use{key, i})
		}
		if err != nil {
			// An unusable peer matches nothing: failing closed for this
			// peer is safer than dropping the rule's other peers.
			b.warn("NetworkPolicy %s/%s: %s.%s[%d]: %v; peer matches nothing", np.Namespace, np.Name, field, peerField, i, err)
			p = peer{kind: peerNever, text: "invalid peer"}
		}
		r.peers = append(r.peers, p)
	}
	for i, pp := range ports {
		pr, err := b.port(pp)
		if err != nil {
			b.warn("NetworkPolicy %s/%s: %s.ports[%d]: %v; port matches nothing", np.Namespace, np.Name, field, i, err)
			continue
		}
		r.ports = append(r.ports, pr)
	}
	if !r.anyPort && len(r.ports) == 0 {
		// Every port entry was unusable: the rule must match nothing, not
		// everything.
		r.ports = append(r.ports, portRange{proto: 0, lo: 1, hi: 0, name: -1})
	}
	idx := b.ruleSlot()
	b.rs.rules[idx] = r
	for _, u := range uses {
		b.usePeer(u.key, idx, u.peer)
	}
	return idx
}

// peer compiles one from/to element. key names a pod peer's set (shared
// by every peer selecting the same), "" for other peers.
func (b *builder) peer(policyNS string, pe networkingv1.NetworkPolicyPeer) (peer, string, error) {
	if pe.IPBlock != nil {
		cidr, err := netip.ParsePrefix(pe.IPBlock.CIDR)
		if err != nil {
			return peer{}, "", fmt.Errorf("ipBlock.cidr: %w", err)
		}
		p := peer{kind: peerBlock, cidr: cidr.Masked(), text: "ipBlock " + pe.IPBlock.CIDR}
		for _, e := range pe.IPBlock.Except {
			ex, err := netip.ParsePrefix(e)
			if err != nil {
				return peer{}, "", fmt.Errorf("ipBlock.except: %w", err)
			}
			p.except = append(p.except, ex.Masked())
		}
		if len(p.except) > 0 {
			p.text += " except " + strings.Join(pe.IPBlock.Except, ",")
		}
		return p, "", nil
	}
	if pe.PodSelector == nil && pe.NamespaceSelector == nil {
		return peer{}, "", errors.New("peer selects nothing: set podSelector, namespaceSelector or ipBlock")
	}
	podSel := labels.Everything()
	podText := ""
	if pe.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(pe.PodSelector)
		if err != nil {
			return peer{}, "", fmt.Errorf("podSelector: %w", err)
		}
		podSel = s
		podText = "podSelector{" + s.String() + "}"
	}
	var key, text string
	var members []int32
	var nsSel labels.Selector
	if pe.NamespaceSelector == nil {
		key = "ns=" + policyNS + "\x00" + podSel.String()
		text = podText + " in namespace " + policyNS
		if set, ok := b.peerSets[key]; ok {
			return peer{kind: peerPods, pods: *set, text: text}, key, nil
		}
		members = b.selectPods(policyNS, podSel)
	} else {
		var err error
		nsSel, err = metav1.LabelSelectorAsSelector(pe.NamespaceSelector)
		if err != nil {
			return peer{}, "", fmt.Errorf("namespaceSelector: %w", err)
		}
		key = "nsSel=" + nsSel.String() + "\x00" + podSel.String()
		text = "namespaceSelector{" + nsSel.String() + "}"
		if podText != "" {
			text += " and " + podText
		}
		if set, ok := b.peerSets[key]; ok {
			return peer{kind: peerPods, pods: *set, text: text}, key, nil
		}
		for _, ns := range b.nsOrder {
			if nsSel.Matches(b.namespaceLabels(ns)) {
				members = append(members, b.selectPods(ns, podSel)...)
			}
		}
	}
	set := newPodSet(members)
	b.peerSets[key] = set
	if b.newSet != nil {
		ns := ""
		if nsSel == nil {
			ns = policyNS
		}
		b.newSet(key, ns, nsSel, podSel, members, set)
	}
	return peer{kind: peerPods, pods: *set, text: text}, key, nil
}

func (b *builder) port(pp networkingv1.NetworkPolicyPort) (portRange, error) {
	proto := ProtoTCP
	if pp.Protocol != nil {
		switch *pp.Protocol {
		case corev1.ProtocolTCP:
		case corev1.ProtocolUDP:
			proto = ProtoUDP
		case corev1.ProtocolSCTP:
			proto = ProtoSCTP
		default:
			return portRange{}, fmt.Errorf("protocol %q is not TCP, UDP or SCTP", *pp.Protocol)
		}
	}
	pr := portRange{proto: proto, lo: 0, hi: 65535, name: -1}
	if pp.Port == nil {
		return pr, nil
	}
	if pp.Port.Type == 1 { // intstr.String
		if pp.EndPort != nil {
			return portRange{}, errors.New("endPort cannot be used with a named port")
		}
		pr.name = b.portID(pp.Port.StrVal)
		return pr, nil
	}
	port := pp.Port.IntVal
	if port < 1 || port > 65535 {
		return portRange{}, fmt.Errorf("port %d is outside 1-65535", port)
	}
	pr.lo, pr.hi = uint16(port), uint16(port)
	if pp.EndPort != nil {
		if *pp.EndPort < port || *pp.EndPort > 65535 {
			return portRange{}, fmt.Errorf("endPort %d must be between port %d and 65535", *pp.EndPort, port)
		}
		pr.hi = uint16(*pp.EndPort)
	}
	return pr, nil
}

// perPod records, for every pod, which policies isolate it and which rules
// may allow its traffic, with and without staged policies.
func (b *builder) perPod() {
	rs := b.rs
	for pi := range rs.policies {
		pol := &rs.policies[pi]
		if pol.kind != tierNP {
			continue // ClusterNetworkPolicies reach pods through cnpSets
		}
		for _, podIdx := range pol.selected {
			p := &rs.pods[podIdx]
			for dir := 0; dir < 2; dir++ {
				if !pol.types[dir] {
					continue
				}
				a := &p.audit[dir]
				a.isolators = append(a.isolators, int32(pi))
				a.rules = append(a.rules, pol.rules[dir]...)
				if pol.staged {
					continue
				}
				e := &p.enforced[dir]
				e.isolators = append(e.isolators, int32(pi))
				e.rules = append(e.rules, pol.rules[dir]...)
			}
		}
	}
	rs.hot = make([]podHot, len(rs.pods))
	for i := range rs.pods {
		p := &rs.pods[i]
		if !rs.hasStaged {
			p.audit = p.enforced
		}
		h := &rs.hot[i]
		h.node = p.node
		for dir := 0; dir < 2; dir++ {
			h.isolated[dir] = len(p.enforced[dir].isolators) > 0
			h.rules[dir] = p.enforced[dir].rules
			h.cnp[dir] = p.enforced[dir].cnp
		}
	}
}
