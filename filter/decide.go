package filter

import (
	"math/bits"
	"net/netip"
)

// lookup returns what an address stands for.
func (rs *Ruleset) lookup(a netip.Addr) (endpoint, bool) {
	if a.Is4() {
		ep, ok := rs.addr4[a.As4()]
		return ep, ok
	}
	if a.Is4In6() {
		ep, ok := rs.addr4[a.Unmap().As4()]
		return ep, ok
	}
	ep, ok := rs.addr6[a.As16()]
	return ep, ok
}

func (rs *Ruleset) endpointOf(a netip.Addr) endpoint {
	if ep, ok := rs.lookup(a); ok {
		return ep
	}
	return external
}

// unknownPod returns the pod CIDR index of an address whose endpoint ep is
// unmapped but lies in a node's pod CIDR, or -1. The pod CIDRs are only
// searched on a map miss, so known pods, nodes and hostNetwork pods (all
// mapped) are never unknown pods, and external addresses pay one short
// search.
func (rs *Ruleset) unknownPod(ep endpoint, a netip.Addr) int32 {
	if ep != external {
		return -1
	}
	return rs.podCIDRIndex(a)
}

// podCIDRIndex returns the podCIDRs index of the node pod CIDR holding a,
// or -1. The range's first two addresses are the node's, not pods': the
// network address is where flannel-style overlays put the node's tunnel
// interface (the source of a remote node's traffic to pods) and the first
// host is the CNI bridge's gateway (host-local IPAM starts pods after
// it). Treating them as unknown pods would deny that node traffic for
// good, not just until a sync.
func (rs *Ruleset) podCIDRIndex(a netip.Addr) int32 {
	a = a.Unmap()
	ci := &rs.cidr6
	if a.Is4() {
		ci = &rs.cidr4
	}
	i := ci.find(a)
	if i < 0 {
		return -1
	}
	if base := rs.podCIDRs[i].prefix.Addr(); a == base || a == base.Next() {
		return -1
	}
	return i
}

// Decide returns the verdict for a flow: Allow from enforced policies,
// Audit with staged policies enforced too (computed a second time only
// when some policy is staged). It does not allocate.
//
// The verdict is built in place (named result, decide through a pointer):
// it is 80 bytes, and copying it between frames was a tenth of a decision.
func (rs *Ruleset) Decide(f Flow) (v Verdict) {
	rs.decide(&v, f, false)
	if !rs.hasStaged {
		v.Audit.Allow, v.Audit.Egress, v.Audit.Ingress = v.Allow, v.Egress, v.Ingress
		return v
	}
	var a Verdict
	rs.decide(&a, f, true)
	v.Audit.Allow, v.Audit.Egress, v.Audit.Ingress = a.Allow, a.Egress, a.Ingress
	return v
}

// DecideAudit returns the verdict as it would be if every staged (audit
// mode) policy were enforced: the audit verdict in the enforced fields.
func (rs *Ruleset) DecideAudit(f Flow) (v Verdict) {
	rs.decide(&v, f, true)
	v.Audit.Allow, v.Audit.Egress, v.Audit.Ingress = v.Allow, v.Egress, v.Ingress
	return v
}

// HasStaged reports whether any policy is in audit mode, that is whether
// DecideAudit can differ from Decide.
func (rs *Ruleset) HasStaged() bool { return rs.hasStaged }

// query is what both sides of one decision match ports with: the flow's
// protocol, destination port and pod (named ports always name the
// destination's container ports), and, once a tier walk needs it, its
// port class.
type query struct {
	dstPod    int32
	portClass int32 // -1 until walk computes it
	port      uint16
	proto     uint8
}

// decide fills v's enforced fields (or, with audit, the verdict with staged
// policies enforced too).
func (rs *Ruleset) decide(v *Verdict, f Flow, audit bool) {
	src := rs.endpointOf(f.Src)
	dst := rs.endpointOf(f.Dst)
	q := query{dstPod: dst.pod, portClass: -1, port: f.DstPort, proto: f.Proto}
	v.Ruleset = rs
	v.Egress = rs.side(egress, src, dst, f.Src, f.Dst, &q, audit)
	v.Ingress = rs.side(ingress, dst, src, f.Dst, f.Src, &q, audit)
	v.Allow = v.Egress.Decision.Allowed() && v.Ingress.Decision.Allowed()
}

// side decides one direction for the pod at self: its egress towards peer
// or its ingress from peer.
//
// The tiers go in the API's order: Admin ClusterNetworkPolicy rules (Accept
// and Deny final, Pass skips the rest of the tier), then NetworkPolicy
// (final for a pod it isolates in this direction), then Baseline rules,
// then the default, allow.
func (rs *Ruleset) side(dir uint8, self, peer endpoint, selfAddr, peerAddr netip.Addr, q *query, audit bool) Side {
	s := Side{Decision: NotPoliced, Pod: self.pod, Policy: -1, Rule: -1, Peer: -1}
	if self.pod < 0 {
		if ci := rs.unknownPod(self, selfAddr); ci >= 0 {
			// Fail closed: the pod exists (its node handed out the
			// address) but its labels, and so its policies, are unknown.
			// Its node stays -1 in the peer role, so it never earns
			// NodeLocal on the other side.
			s.Decision, s.Policy = UnknownPod, ci
		}
		return s
	}
	h := &rs.hot[self.pod]
	isolated, rules, cs := h.isolated[dir], h.rules[dir], h.cnp[dir]
	if audit {
		d := &rs.pods[self.pod].audit[dir]
		isolated, rules, cs = len(d.isolators) > 0, d.rules, d.cnp
	}
	if !isolated && cs == 0 {
		s.Decision = NotIsolated
		return s
	}
	if dir == ingress && peer.pod < 0 && peer.node >= 0 && peer.node == h.node {
		s.Decision = NodeLocal
		return s
	}
	// cs == 0: no ClusterNetworkPolicy selects the pod; skipping the
	// walks keeps NetworkPolicy-only decisions as cheap as they were.
	var set *cnpSet
	if cs != 0 {
		set = &rs.cnpSets[cs]
		if i := rs.walk(&set.admin, q, peer, peerAddr); i >= 0 {
			c := &set.admin.rules[i]
			if c.action != actPass {
				r := &rs.rules[c.rule]
				s.Decision, s.Policy, s.Rule, s.Peer = AdminDenied, r.policy, r.index, rs.peerIndex(r, peer, peerAddr)
				if c.action == actAccept {
					s.Decision = AdminAccepted
				}
				return s
			}
			s.Pass = c.passID
		}
	}
	if isolated {
		for _, ri := range rules {
			r := &rs.rules[ri]
			if !r.anyPort && !rs.portsMatch(r.ports, q.proto, q.port, q.dstPod) {
				continue
			}
			if r.anyPeer {
				s.Decision, s.Policy, s.Rule = AllowedByRule, r.policy, r.index
				return s
			}
			if pi := rs.peerMatch(r.peers, peer, peerAddr); pi >= 0 {
				s.Decision, s.Policy, s.Rule, s.Peer = AllowedByRule, r.policy, r.index, int16(pi)
				return s
			}
		}
		s.Decision = DeniedIsolated
		return s
	}
	if set != nil {
		if i := rs.walk(&set.baseline, q, peer, peerAddr); i >= 0 {
			c := &set.baseline.rules[i]
			r := &rs.rules[c.rule]
			s.Decision, s.Policy, s.Rule, s.Peer = BaselineDenied, r.policy, r.index, rs.peerIndex(r, peer, peerAddr)
			switch c.action {
			case actAccept:
				s.Decision = BaselineAccepted
			case actPass:
				s.Decision = BaselinePassed
			}
			return s
		}
	}
	s.Decision = NotIsolated
	return s
}

// walk returns the index of the first rule of tier t that matches the
// flow, or -1. With class bitmaps it visits only the rules that can
// match: of those whose ports admit the flow's port class (or name a
// port, resolved per pod), the rules holding the peer's class, matching
// every peer, or matching by address.
func (rs *Ruleset) walk(t *cnpTier, q *query, peer endpoint, peerAddr netip.Addr) int {
	if t.byClass == nil {
		for i := range t.rules {
			if t.live[i/64]&(1<<(i%64)) != 0 && rs.cnpMatch(&t.rules[i], q, peer, peerAddr) {
				return i
			}
		}
		return -1
	}
	nw := len(t.other)
	if nw == 0 {
		return -1
	}
	if q.portClass < 0 {
		q.portClass = rs.portClassOf(q.proto, q.port)
	}
	ok := t.portOK[int(q.portClass)*nw : int(q.portClass)*nw+nw]
	if nw == 1 {
		// Up to 64 rules, the usual case: one word, no row slices.
		pm := t.any[0]
		if peer.pod >= 0 {
			pm |= t.byClass[rs.peerClass[peer.pod]] // class 0's row is empty
		}
		okw := ok[0]
		for m := (pm | t.other[0]) & (okw | t.named[0]); m != 0; m &= m - 1 {
			i := bits.TrailingZeros64(m)
			bit := uint64(1) << i
			if okw&bit == 0 && !rs.portsMatch(t.rules[i].ports, q.proto, q.port, q.dstPod) {
				continue
			}
			if pm&bit != 0 || rs.addrPeerMatch(&t.rules[i], peer, peerAddr) {
				return i
			}
		}
		return -1
	}
	var row []uint64
	if peer.pod >= 0 {
		if c := int(rs.peerClass[peer.pod]); c != 0 {
			row = t.byClass[c*nw : c*nw+nw]
		}
	}
	for w, om := range t.other {
		pm := t.any[w]
		if row != nil {
			pm |= row[w]
		}
		okw := ok[w]
		for m := (pm | om) & (okw | t.named[w]); m != 0; m &= m - 1 {
			b := bits.TrailingZeros64(m)
			i := w*64 + b
			bit := uint64(1) << b
			if okw&bit == 0 && !rs.portsMatch(t.rules[i].ports, q.proto, q.port, q.dstPod) {
				continue
			}
			if pm&bit != 0 || rs.addrPeerMatch(&t.rules[i], peer, peerAddr) {
				return i
			}
		}
	}
	return -1
}

// portClassOf returns the class of a protocol and destination port among
// the ClusterNetworkPolicy numeric port ranges (Ruleset.portBounds): the
// number of bounds at or below it.
func (rs *Ruleset) portClassOf(proto uint8, port uint16) int32 {
	k := uint32(proto)<<16 | uint32(port)
	lo, hi := 0, len(rs.portBounds)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rs.portBounds[m] <= k {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return int32(lo)
}

// cnpMatch reports whether ClusterNetworkPolicy rule c matches the flow.
func (rs *Ruleset) cnpMatch(c *cnpRule, q *query, peer endpoint, peerAddr netip.Addr) bool {
	if c.ports != nil && !rs.portsMatch(c.ports, q.proto, q.port, q.dstPod) {
		return false
	}
	return c.anyPeer || peer.pod >= 0 && c.pods.has(peer.pod) || rs.addrPeerMatch(c, peer, peerAddr)
}

// addrPeerMatch reports whether one of c's networks or nodes peers
// matches the peer address.
func (rs *Ruleset) addrPeerMatch(c *cnpRule, peer endpoint, peerAddr netip.Addr) bool {
	if !c.other {
		return false
	}
	if peerAddr.Is4() || peerAddr.Is4In6() {
		a4 := peerAddr.Unmap().As4()
		a := uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3])
		for _, n := range c.nets4 {
			if a&n.mask == n.addr {
				return true
			}
		}
	} else {
		for _, n := range c.nets6 {
			if n.Contains(peerAddr) {
				return true
			}
		}
	}
	return c.nodes && rs.peerMatch(rs.rules[c.rule].peers, peer, peerAddr) >= 0
}

// peerIndex returns the index of the first of r's peers that matches, -1
// when r has none (it matches every peer).
func (rs *Ruleset) peerIndex(r *rule, peer endpoint, peerAddr netip.Addr) int16 {
	if r.anyPeer {
		return -1
	}
	return int16(rs.peerMatch(r.peers, peer, peerAddr))
}

// portsMatch reports whether any of a rule's ports admits the flow.
func (rs *Ruleset) portsMatch(ports []portRange, proto uint8, port uint16, dstPod int32) bool {
	for i := range ports {
		pr := &ports[i]
		if pr.proto != proto {
			continue
		}
		if pr.name < 0 {
			if port >= pr.lo && port <= pr.hi {
				return true
			}
			continue
		}
		if dstPod < 0 {
			continue // a named port never matches a destination that is not a pod
		}
		for _, np := range rs.pods[dstPod].named {
			if np.name == pr.name && np.proto == proto && np.port == port {
				return true
			}
		}
	}
	return false
}

// peerMatch returns the index of the first peer that matches the
// endpoint ep at addr, or -1. Pod selectors match pods only (never nodes,
// hostNetwork pods or external addresses); ipBlocks and networks match any
// address; nodes peers match the addresses of the selected nodes, which
// their hostNetwork pods share.
func (rs *Ruleset) peerMatch(peers []peer, ep endpoint, addr netip.Addr) int {
	for i := range peers {
		pe := &peers[i]
		switch pe.kind {
		case peerPods:
			if ep.pod >= 0 && pe.pods.has(ep.pod) {
				return i
			}
		case peerBlock:
			if blockMatch(pe, addr) {
				return i
			}
		case peerNetworks:
			for _, n := range pe.nets {
				if n.Contains(addr) {
					return i
				}
			}
		case peerNodes:
			if rs.nodeMatch(&pe.nodes, ep, addr) {
				return i
			}
		}
	}
	return -1
}

// nodeMatch reports whether addr (endpoint ep) is an address of a node in
// nodes. InternalIPs and hostNetwork pods' addresses are in the address
// maps; a node's other addresses (ExternalIP) only in nodeOther.
func (rs *Ruleset) nodeMatch(nodes *podSet, ep endpoint, addr netip.Addr) bool {
	if ep.pod >= 0 {
		return false
	}
	if ep.node >= 0 {
		return nodes.has(ep.node)
	}
	if rs.nodeOther == nil {
		return false
	}
	n, ok := rs.nodeOther[addr.Unmap()]
	return ok && nodes.has(n)
}

func blockMatch(pe *peer, addr netip.Addr) bool {
	if !pe.cidr.Contains(addr) {
		return false
	}
	for _, ex := range pe.except {
		if ex.Contains(addr) {
			return false
		}
	}
	return true
}
