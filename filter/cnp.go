package filter

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ClusterNetworkPolicies (sigs.k8s.io/network-policy-api v1beta1) compile
// into the same policies, rules and peers as NetworkPolicies. What differs
// is how a pod reaches them: every pod carries, per direction, the index
// of a cnpSet, the Admin and Baseline rules of the policies whose subject
// selects it, in evaluation order. Pods whose namespace and pod labels are
// alike share one set, so 200 policies over 50,000 pods cost a few sets,
// not ten million rule references.
//
// Evaluation order within a tier is priority (lower first), then the
// policy's name, then rule order. The API leaves two policies of the same
// tier and priority that match a flow with different actions undefined;
// ordering them by name makes the outcome deterministic (the policy whose
// name sorts first decides), the same tie-break kube-network-policies
// uses, and docs/clusternetworkpolicy.md states it.

// cnpSet is the ClusterNetworkPolicy rules one pod is subject to in one
// direction, in evaluation order.
type cnpSet struct {
	admin, baseline cnpTier
}

// cnpTier is one tier's rules of a cnpSet, with bitmaps that pick, for a
// flow, the few rules that can match it: instead of testing every rule,
// the walk visits only the set bits of its peer class's row (rules with a
// namespaces or pods peer holding the class) or'ed with any (rules
// matching every peer) and other (rules matching by address), and'ed with
// its port class's row of portOK (rules whose numeric ports, or lack of
// ports, admit the flow) or'ed with named (rules naming a port, which
// only the destination pod resolves). Rule i is bit i%64 of word i/64.
type cnpTier struct {
	rules []cnpRule
	other []uint64 // len nw
	any   []uint64 // len nw
	named []uint64 // len nw
	// live marks the rules the walk can reach: a rule matching exactly
	// what an earlier rule of the tier matches never decides (the earlier
	// one decides first) and is left out of the bitmaps.
	live []uint64
	// byClass holds nw words per peer class (Ruleset.peerClass), portOK
	// nw words per port class (Ruleset.portBounds); both nil when classes
	// are off, and then every rule is tested.
	byClass []uint64
	portOK  []uint64
}

// cnpRule is a rule as the tier walk reads it: copied into each set that
// holds it, contiguous. A pod peer is answered by the class bitmaps (or,
// without them, one bit test on the union of the rule's pod peers); only
// a rule that matches goes back to its peers to tell which one did.
type cnpRule struct {
	pods    podSet      // union of the rule's namespaces and pods peers
	ports   []portRange // nil: every protocol and port
	nets4   []net4      // its IPv4 networks, as masks
	nets6   []netip.Prefix
	rule    int32 // rules index
	other   bool  // has networks or nodes peers (matched by address)
	nodes   bool  // has nodes peers
	anyPeer bool
	action  uint8
	passID  uint16
	// key is what the rule matches (peers and ports), for finding the
	// rules a set can never reach: a rule matching exactly what an
	// earlier rule of its tier matches is shadowed by it.
	key string
}

// net4 is an IPv4 network as a masked address and mask.
type net4 struct{ addr, mask uint32 }

// maxClassWords bounds the class bitmaps of all sets (64 MiB): beyond it,
// sets walk every rule instead, slower but exact.
const maxClassWords = 8 << 20

// newCNPRule builds rule ri's walk form.
func (b *builder) newCNPRule(ri int32) cnpRule {
	r := &b.rs.rules[ri]
	c := cnpRule{rule: ri, anyPeer: r.anyPeer, action: r.action, passID: r.passID}
	if !r.anyPort {
		c.ports = r.ports
	}
	var members []int32
	var key strings.Builder
	fmt.Fprintf(&key, "%t %v|", r.anyPeer, c.ports)
	podPeers := 0
	for i := range r.peers {
		switch pe := &r.peers[i]; pe.kind {
		case peerPods:
			if podPeers++; podPeers == 1 {
				c.pods = pe.pods // the common case: no union to build
			} else {
				if podPeers == 2 {
					members = c.pods.appendMembers(members)
				}
				members = pe.pods.appendMembers(members)
			}
		case peerNetworks:
			c.other = true
			for _, n := range pe.nets {
				if n.Addr().Is4() {
					a := n.Addr().As4()
					mask := ^uint32(0)
					if n.Bits() < 32 {
						mask = ^(^uint32(0) >> n.Bits())
					}
					c.nets4 = append(c.nets4, net4{addr: binary.BigEndian.Uint32(a[:]) & mask, mask: mask})
				} else {
					c.nets6 = append(c.nets6, n)
				}
				key.WriteString(n.String() + ",")
			}
		case peerNodes:
			c.other, c.nodes = true, true
			key.WriteString("nodes" + pe.nodes.key() + ",")
		}
	}
	if podPeers > 1 {
		c.pods = *newPodSet(members)
	}
	c.key = key.String() + "|pods" + c.pods.key()
	return c
}

// CNPName is how a ClusterNetworkPolicy is named wherever a policy name is
// printed or used as a key (reasons, flow log, metrics, audit reports):
// "ClusterNetworkPolicy/NAME". Namespaces cannot contain capitals, so it
// never collides with a NetworkPolicy's "namespace/name".
func CNPName(name string) string { return "ClusterNetworkPolicy/" + name }

// tierName names a policy kind's tier.
func tierName(kind uint8) string {
	switch kind {
	case tierAdmin:
		return "Admin"
	case tierBaseline:
		return "Baseline"
	}
	return "NetworkPolicy"
}

func actionName(a uint8) string {
	switch a {
	case actAccept:
		return "Accept"
	case actDeny:
		return "Deny"
	case actPass:
		return "Pass"
	}
	return "Allow"
}

func (b *builder) clusterPolicies(cnps []*cnpv1beta1.ClusterNetworkPolicy) {
	sorted := make([]*cnpv1beta1.ClusterNetworkPolicy, 0, len(cnps))
	for _, p := range cnps {
		if p == nil {
			continue
		}
		if p.Spec.Tier != cnpv1beta1.AdminTier && p.Spec.Tier != cnpv1beta1.BaselineTier {
			b.warn("ClusterNetworkPolicy %s: spec.tier: %q is not Admin or Baseline; policy skipped", p.Name, p.Spec.Tier)
			continue
		}
		sorted = append(sorted, p)
	}
	// Evaluation order: tier, priority, then name (see the file comment).
	slices.SortStableFunc(sorted, func(x, y *cnpv1beta1.ClusterNetworkPolicy) int {
		if c := cmp.Compare(cnpKind(x), cnpKind(y)); c != 0 {
			return c
		}
		if c := cmp.Compare(x.Spec.Priority, y.Spec.Priority); c != 0 {
			return c
		}
		return cmp.Compare(x.Name, y.Name)
	})
	var seen map[string]bool
	for _, p := range sorted {
		if seen[p.Name] {
			b.warn("ClusterNetworkPolicy %s: listed twice; the first is used", p.Name)
			continue
		}
		if seen == nil {
			seen = make(map[string]bool)
		}
		seen[p.Name] = true
		b.clusterPolicy(p)
	}
	if len(seen) > 0 {
		b.cnpSets()
	}
}

func cnpKind(p *cnpv1beta1.ClusterNetworkPolicy) uint8 {
	if p.Spec.Tier == cnpv1beta1.AdminTier {
		return tierAdmin
	}
	return tierBaseline
}

func (b *builder) clusterPolicy(cp *cnpv1beta1.ClusterNetworkPolicy) {
	id := CNPName(cp.Name)
	groups, err := b.subjectGroups(cp.Spec.Subject)
	if err != nil {
		b.warn("%s: spec.subject: %v; policy skipped", id, err)
		return
	}
	pidx := int32(len(b.rs.policies))
	pol := policy{name: cp.Name, id: id, kind: cnpKind(cp), priority: cp.Spec.Priority}
	pol.staged = cp.Annotations[ModeAnnotation] == ModeAudit
	if pol.staged {
		b.rs.hasStaged = true
	}
	// A policy without rules in a direction does not affect it.
	pol.types[ingress] = len(cp.Spec.Ingress) > 0
	pol.types[egress] = len(cp.Spec.Egress) > 0
	for i, r := range cp.Spec.Ingress {
		peers := make([]cnpv1beta1.ClusterNetworkPolicyEgressPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = cnpv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
		}
		pol.rules[ingress] = append(pol.rules[ingress], b.cnpRule(pidx, ingress, i, id, r.Action, peers, r.Protocols))
		pol.ruleNames[ingress] = append(pol.ruleNames[ingress], r.Name)
	}
	for i, r := range cp.Spec.Egress {
		pol.rules[egress] = append(pol.rules[egress], b.cnpRule(pidx, egress, i, id, r.Action, r.To, r.Protocols))
		pol.ruleNames[egress] = append(pol.ruleNames[egress], r.Name)
	}
	for _, g := range groups {
		for dir := 0; dir < 2; dir++ {
			if !pol.types[dir] {
				continue
			}
			g.cnp[1][dir] = append(g.cnp[1][dir], pidx)
			if !pol.staged {
				g.cnp[0][dir] = append(g.cnp[0][dir], pidx)
			}
		}
	}
	b.rs.policies = append(b.rs.policies, pol)
}

// subjectGroups returns the label groups (pods alike) a subject selects.
// hostNetwork pods are in no group, so they are never subjects.
func (b *builder) subjectGroups(s cnpv1beta1.ClusterNetworkPolicySubject) ([]*labelGroup, error) {
	var nsSel, podSel labels.Selector
	var err error
	switch {
	case s.Namespaces != nil && s.Pods != nil:
		return nil, errors.New("both namespaces and pods are set; exactly one must be")
	case s.Namespaces != nil:
		if nsSel, err = metav1.LabelSelectorAsSelector(s.Namespaces); err != nil {
			return nil, fmt.Errorf("namespaces: %w", err)
		}
		podSel = labels.Everything()
	case s.Pods != nil:
		if nsSel, err = metav1.LabelSelectorAsSelector(&s.Pods.NamespaceSelector); err != nil {
			return nil, fmt.Errorf("pods.namespaceSelector: %w", err)
		}
		if podSel, err = metav1.LabelSelectorAsSelector(&s.Pods.PodSelector); err != nil {
			return nil, fmt.Errorf("pods.podSelector: %w", err)
		}
	default:
		return nil, errors.New("neither namespaces nor pods is set; exactly one must be")
	}
	var out []*labelGroup
	for _, ns := range b.nsOrder {
		if !nsSel.Matches(b.namespaceLabels(ns)) {
			continue
		}
		gs := b.nsGroups[ns]
		for i := range gs {
			if podSel.Matches(gs[i].labels) {
				out = append(out, &gs[i])
			}
		}
	}
	return out, nil
}

func (b *builder) cnpRule(pidx int32, dir uint8, index int, id string, action cnpv1beta1.ClusterNetworkPolicyRuleAction, peers []cnpv1beta1.ClusterNetworkPolicyEgressPeer, protocols []cnpv1beta1.ClusterNetworkPolicyProtocol) int32 {
	field := fmt.Sprintf("spec.%s[%d]", dirNames[dir], index)
	peerField := "from"
	if dir == egress {
		peerField = "to"
	}
	r := rule{policy: pidx, dir: dir, index: int16(index), anyPort: len(protocols) == 0}
	switch action {
	case cnpv1beta1.ClusterNetworkPolicyRuleActionAccept:
		r.action = actAccept
	case cnpv1beta1.ClusterNetworkPolicyRuleActionDeny:
		r.action = actDeny
	case cnpv1beta1.ClusterNetworkPolicyRuleActionPass:
		r.action = actPass
	default:
		// The API's own advice for a field it does not understand: fail
		// closed, deny.
		b.warn("%s: %s.action: %q is not Accept, Deny or Pass; the rule denies what it matches", id, field, action)
		r.action = actDeny
	}
	failClosed := false
	hasDomains := false
	for i, pe := range peers {
		p, err := b.cnpPeer(dir, pe)
		if err != nil {
			b.warn("%s: %s.%s[%d]: %v", id, field, peerField, i, err)
			p = peer{kind: peerNever, text: "invalid peer"}
			failClosed = true
		}
		if len(pe.DomainNames) > 0 {
			hasDomains = true
		}
		r.peers = append(r.peers, p)
	}
	if len(peers) == 0 {
		b.warn("%s: %s.%s: no peers; the rule matches nothing", id, field, peerField)
	}
	for i, pp := range protocols {
		prs, err := b.cnpProtocol(pp)
		if err != nil {
			b.warn("%s: %s.protocols[%d]: %v; it matches nothing", id, field, i, err)
			continue
		}
		r.ports = append(r.ports, prs...)
	}
	if !r.anyPort && len(r.ports) == 0 {
		r.ports = append(r.ports, portRange{proto: 0, lo: 1, hi: 0, name: -1})
	}
	if failClosed && r.action != actAccept {
		// The API: a peer this implementation cannot read makes an
		// Accept rule match nothing (done: the peer matches nothing) and
		// a Deny or Pass rule a deny-all rule.
		b.warn("%s: %s: fails closed: the rule denies all traffic", id, field)
		r.action, r.anyPeer, r.anyPort, r.ports = actDeny, true, true, nil
	}
	idx := int32(len(b.rs.rules))
	if r.action == actPass {
		if len(b.rs.passRules) < 0xffff {
			b.rs.passRules = append(b.rs.passRules, idx)
			r.passID = uint16(len(b.rs.passRules))
		} else {
			b.warn("%s: %s: more than 65535 Pass rules; reasons cannot name this one", id, field)
		}
	}
	if hasDomains {
		b.rs.domainRules = append(b.rs.domainRules, idx)
	}
	b.rs.rules = append(b.rs.rules, r)
	return idx
}

// cnpPeer compiles one peer. Ingress peers come as egress peers with only
// namespaces and pods set.
func (b *builder) cnpPeer(dir uint8, pe cnpv1beta1.ClusterNetworkPolicyEgressPeer) (peer, error) {
	set := 0
	for _, isSet := range []bool{pe.Namespaces != nil, pe.Pods != nil, pe.Nodes != nil, len(pe.Networks) > 0, len(pe.DomainNames) > 0} {
		if isSet {
			set++
		}
	}
	if set != 1 {
		return peer{}, fmt.Errorf("%d fields set; exactly one of namespaces, pods, nodes, networks, domainNames must be", set)
	}
	switch {
	case pe.Namespaces != nil:
		nsSel, err := metav1.LabelSelectorAsSelector(pe.Namespaces)
		if err != nil {
			return peer{}, fmt.Errorf("namespaces: %w", err)
		}
		return peer{kind: peerPods, pods: *b.podsIn(nsSel, labels.Everything()), text: "namespaces{" + nsSel.String() + "}"}, nil
	case pe.Pods != nil:
		nsSel, err := metav1.LabelSelectorAsSelector(&pe.Pods.NamespaceSelector)
		if err != nil {
			return peer{}, fmt.Errorf("pods.namespaceSelector: %w", err)
		}
		podSel, err := metav1.LabelSelectorAsSelector(&pe.Pods.PodSelector)
		if err != nil {
			return peer{}, fmt.Errorf("pods.podSelector: %w", err)
		}
		return peer{kind: peerPods, pods: *b.podsIn(nsSel, podSel), text: "pods{namespaces{" + nsSel.String() + "} pods{" + podSel.String() + "}}"}, nil
	case dir == ingress:
		return peer{}, errors.New("ingress peers are namespaces or pods only")
	case pe.Nodes != nil:
		sel, err := metav1.LabelSelectorAsSelector(pe.Nodes)
		if err != nil {
			return peer{}, fmt.Errorf("nodes: %w", err)
		}
		var members []int32
		for i, l := range b.nodeLabels {
			if sel.Matches(l) {
				members = append(members, int32(i))
			}
		}
		return peer{kind: peerNodes, nodes: *newPodSet(members), text: "nodes{" + sel.String() + "}"}, nil
	case len(pe.Networks) > 0:
		p := peer{kind: peerNetworks}
		texts := make([]string, 0, len(pe.Networks))
		for _, n := range pe.Networks {
			pfx, err := netip.ParsePrefix(string(n))
			if err != nil {
				return peer{}, fmt.Errorf("networks: %w", err)
			}
			p.nets = append(p.nets, pfx.Masked())
			texts = append(texts, string(n))
		}
		p.text = "networks " + strings.Join(texts, ",")
		return p, nil
	default:
		names := make([]string, 0, len(pe.DomainNames))
		for _, d := range pe.DomainNames {
			names = append(names, string(d))
		}
		return peer{kind: peerNever, text: "domainNames " + strings.Join(names, ",") + " (not enforced: matches no traffic)"}, nil
	}
}

// podsIn returns the pods of the namespaces nsSel selects that podSel
// selects, sharing the set with every peer that selects the same.
func (b *builder) podsIn(nsSel, podSel labels.Selector) *podSet {
	key := "nsSel=" + nsSel.String() + "\x00" + podSel.String()
	if set, ok := b.peerSets[key]; ok {
		return set
	}
	var members []int32
	for _, ns := range b.nsOrder {
		if nsSel.Matches(b.namespaceLabels(ns)) {
			members = append(members, b.selectPods(ns, podSel)...)
		}
	}
	set := newPodSet(members)
	b.peerSets[key] = set
	if b.newSet != nil {
		b.newSet(key, "", nsSel, podSel, members, set) // the Compiler keeps it current
	}
	return set
}

// cnpProtocol compiles one protocols entry. A named port, which the API
// ties to no protocol, matches the destination's container port of that
// name in whichever protocol it declares: one range per protocol.
func (b *builder) cnpProtocol(pp cnpv1beta1.ClusterNetworkPolicyProtocol) ([]portRange, error) {
	var proto uint8
	var port *cnpv1beta1.Port
	set := 0
	if pp.TCP != nil {
		proto, port = ProtoTCP, pp.TCP.DestinationPort
		set++
	}
	if pp.UDP != nil {
		proto, port = ProtoUDP, pp.UDP.DestinationPort
		set++
	}
	if pp.SCTP != nil {
		proto, port = ProtoSCTP, pp.SCTP.DestinationPort
		set++
	}
	if pp.DestinationNamedPort != "" {
		set++
	}
	if set != 1 {
		return nil, fmt.Errorf("%d fields set; exactly one of tcp, udp, sctp, destinationNamedPort must be", set)
	}
	if pp.DestinationNamedPort != "" {
		id := b.portID(pp.DestinationNamedPort)
		return []portRange{
			{proto: ProtoTCP, name: id},
			{proto: ProtoUDP, name: id},
			{proto: ProtoSCTP, name: id},
		}, nil
	}
	pr := portRange{proto: proto, lo: 0, hi: 65535, name: -1}
	switch {
	case port == nil:
	case port.Range != nil:
		lo, hi := port.Range.Start, port.Range.End
		if lo < 1 || hi > 65535 || lo > hi {
			return nil, fmt.Errorf("destinationPort.range %d-%d is not within 1-65535 in order", lo, hi)
		}
		pr.lo, pr.hi = uint16(lo), uint16(hi)
	default:
		if port.Number < 1 || port.Number > 65535 {
			return nil, fmt.Errorf("destinationPort.number %d is outside 1-65535", port.Number)
		}
		pr.lo, pr.hi = uint16(port.Number), uint16(port.Number)
	}
	return []portRange{pr}, nil
}

// cnpSets gives every pod its per-direction rule sets, interning equal
// ones, from the policy lists clusterPolicy left on each label group.
func (b *builder) cnpSets() {
	rs := b.rs
	b.cnpFast = make(map[int32]cnpRule)
	for pi := range rs.policies {
		pol := &rs.policies[pi]
		if pol.kind == tierNP {
			continue
		}
		for dir := 0; dir < 2; dir++ {
			for _, ri := range pol.rules[dir] {
				b.cnpFast[ri] = b.newCNPRule(ri)
			}
		}
	}
	reps := b.peerClasses()
	intern := map[string]int32{}
	var key []byte
	for _, ns := range b.nsOrder {
		gs := b.nsGroups[ns]
		for gi := range gs {
			g := &gs[gi]
			for dir := 0; dir < 2; dir++ {
				enf := b.cnpSetOf(intern, &key, g.cnp[0][dir], uint8(dir))
				aud := enf
				if b.rs.hasStaged {
					aud = b.cnpSetOf(intern, &key, g.cnp[1][dir], uint8(dir))
				}
				for _, p := range g.pods {
					rs.pods[p].enforced[dir].cnp = enf
					rs.pods[p].audit[dir].cnp = aud
				}
			}
		}
	}
	// Class bitmaps, within a memory budget.
	bounds := b.portBounds()
	words := 0
	for i := range rs.cnpSets {
		for _, t := range [2]*cnpTier{&rs.cnpSets[i].admin, &rs.cnpSets[i].baseline} {
			words += len(t.other) * (len(reps) + len(bounds) + 1)
		}
	}
	if reps == nil || words > maxClassWords {
		if reps != nil {
			b.warn("ClusterNetworkPolicies: %d peer classes and %d port classes over %d rule sets exceed the bitmap budget; decisions test every rule", len(reps), len(bounds)+1, len(rs.cnpSets))
		}
		rs.peerClass = nil
		return
	}
	rs.portBounds = bounds
	for i := range rs.cnpSets {
		for _, t := range [2]*cnpTier{&rs.cnpSets[i].admin, &rs.cnpSets[i].baseline} {
			nw := len(t.other)
			t.byClass = make([]uint64, nw*len(reps))
			for c, rep := range reps {
				if rep < 0 {
					continue // class 0: in no pod peer
				}
				for ri := range t.rules {
					if t.live[ri/64]&(1<<(ri%64)) != 0 && t.rules[ri].pods.has(rep) {
						t.byClass[c*nw+ri/64] |= 1 << (ri % 64)
					}
				}
			}
			t.portOK = make([]uint64, nw*(len(bounds)+1))
			for c := 0; c <= len(bounds); c++ {
				var k uint32 // class 0 starts at key 0
				if c > 0 {
					k = bounds[c-1]
				}
				for ri := range t.rules {
					if t.live[ri/64]&(1<<(ri%64)) != 0 && numericPortsAdmit(t.rules[ri].ports, k) {
						t.portOK[c*nw+ri/64] |= 1 << (ri % 64)
					}
				}
			}
		}
	}
}

// portBounds returns the sorted keys (protocol<<16 | port) where a
// ClusterNetworkPolicy rule's numeric port range starts or ends (one past
// its last port): between two bounds every rule's numeric ranges admit
// all ports or none, so a port class stands for its ports.
func (b *builder) portBounds() []uint32 {
	var bounds []uint32
	for _, c := range b.cnpFast {
		for _, pr := range c.ports {
			if pr.name >= 0 || pr.lo > pr.hi {
				continue
			}
			k := uint32(pr.proto)<<16 | uint32(pr.lo)
			bounds = append(bounds, k, k+uint32(pr.hi-pr.lo)+1)
		}
	}
	slices.Sort(bounds)
	return slices.Compact(bounds)
}

// numericPortsAdmit reports whether ports (nil: every port) admit the key
// protocol<<16 | port by a numeric range.
func numericPortsAdmit(ports []portRange, k uint32) bool {
	if ports == nil {
		return true
	}
	proto, port := uint8(k>>16), uint16(k)
	for _, pr := range ports {
		if pr.name < 0 && pr.proto == proto && port >= pr.lo && port <= pr.hi {
			return true
		}
	}
	return false
}

// peerClasses numbers pods by which ClusterNetworkPolicy pod peers hold
// them: two pods of one class are matched by exactly the same rules, so a
// set's rules can be picked by class. Class 0 is no peer's. It sets
// Ruleset.peerClass and returns a representative pod of each class (-1 for
// class 0), or nil when there are more classes than a uint16 numbers.
func (b *builder) peerClasses() []int32 {
	rs := b.rs
	// Distinct unions, keyed by their bits.
	seen := map[string]bool{}
	sigs := make([][]byte, len(rs.pods))
	var members []int32
	var key []byte
	id := 0
	for _, ri := range slices.Sorted(maps.Keys(b.cnpFast)) {
		c := b.cnpFast[ri]
		key = append(key[:0], c.pods.key()...)
		if seen[string(key)] {
			continue
		}
		seen[string(key)] = true
		members = c.pods.appendMembers(members[:0])
		for _, m := range members {
			sigs[m] = strconv.AppendInt(sigs[m], int64(id), 36)
			sigs[m] = append(sigs[m], ',')
		}
		id++
	}
	classOf := map[string]uint16{"": 0}
	reps := []int32{-1}
	rs.peerClass = make([]uint16, len(rs.pods))
	for p, sig := range sigs {
		c, ok := classOf[string(sig)]
		if !ok {
			if len(reps) > 0xffff {
				rs.peerClass = nil
				return nil
			}
			c = uint16(len(reps))
			classOf[string(sig)] = c
			reps = append(reps, int32(p))
		}
		rs.peerClass[p] = c
	}
	return reps
}

// cnpSetOf returns the cnpSets index of the rules of policies pols in
// direction dir, adding the set when it is new. The key carries the
// direction: the same policies give different rules per direction.
func (b *builder) cnpSetOf(intern map[string]int32, key *[]byte, pols []int32, dir uint8) int32 {
	if len(pols) == 0 {
		return 0
	}
	k := append((*key)[:0], '0'+dir, ':')
	for _, p := range pols {
		k = strconv.AppendInt(k, int64(p), 36)
		k = append(k, ',')
	}
	*key = k
	if i, ok := intern[string(k)]; ok {
		return i
	}
	rs := b.rs
	var s cnpSet
	for _, pi := range pols {
		pol := &rs.policies[pi]
		t := &s.baseline
		if pol.kind == tierAdmin {
			t = &s.admin
		}
		for _, ri := range pol.rules[dir] {
			t.rules = append(t.rules, b.cnpFast[ri])
		}
	}
	for _, t := range [2]*cnpTier{&s.admin, &s.baseline} {
		nw := (len(t.rules) + 63) / 64
		t.other = make([]uint64, nw)
		t.any = make([]uint64, nw)
		t.named = make([]uint64, nw)
		t.live = make([]uint64, nw)
		seen := map[string]bool{}
		for i, c := range t.rules {
			if seen[c.key] {
				continue // shadowed: an earlier rule matches all it matches
			}
			seen[c.key] = true
			bit := uint64(1) << (i % 64)
			t.live[i/64] |= bit
			if c.anyPeer {
				t.any[i/64] |= bit
			} else if c.other {
				t.other[i/64] |= bit
			}
			if slices.ContainsFunc(c.ports, func(pr portRange) bool { return pr.name >= 0 }) {
				t.named[i/64] |= bit
			}
		}
	}
	i := int32(len(rs.cnpSets))
	rs.cnpSets = append(rs.cnpSets, s)
	intern[string(k)] = i
	return i
}
