package filter

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// PodName returns "namespace/name" of pod index i, or "" for -1.
func (rs *Ruleset) PodName(i int32) string {
	if i < 0 || int(i) >= len(rs.pods) {
		return ""
	}
	return rs.pods[i].ns + "/" + rs.pods[i].name
}

// PodLabels returns the labels of pod index i (nil for -1). The map is
// shared: do not modify it.
func (rs *Ruleset) PodLabels(i int32) map[string]string {
	if i < 0 || int(i) >= len(rs.pods) {
		return nil
	}
	return rs.pods[i].labels
}

// PodNode returns the name of the node pod index i is scheduled on ("" for
// -1 or an unscheduled pod).
func (rs *Ruleset) PodNode(i int32) string {
	if i < 0 || int(i) >= len(rs.pods) {
		return ""
	}
	return rs.pods[i].nodeName
}

// PolicyName returns "namespace/name" of policy index i, or "" for -1.
func (rs *Ruleset) PolicyName(i int32) string {
	if i < 0 || int(i) >= len(rs.policies) {
		return ""
	}
	return rs.policies[i].ns + "/" + rs.policies[i].name
}

// PolicyStaged reports whether policy index i is in audit mode.
func (rs *Ruleset) PolicyStaged(i int32) bool {
	return i >= 0 && int(i) < len(rs.policies) && rs.policies[i].staged
}

// Counts returns the number of pods, nodes, policies and rules compiled.
func (rs *Ruleset) Counts() (pods, nodes, policies, rules int) {
	return len(rs.pods), len(rs.nodes), len(rs.policies), len(rs.rules)
}

// LocalPodAddrs returns the addresses of the pods scheduled on node that
// policies can select (hostNetwork pods use the node's address and are not
// among them).
func (rs *Ruleset) LocalPodAddrs(node string) []netip.Addr {
	var out []netip.Addr
	for i := range rs.pods {
		p := &rs.pods[i]
		if p.nodeName == node && !p.hostNet {
			out = append(out, p.addrs...)
		}
	}
	return out
}

// LocalPodCIDRs returns node's pod CIDRs (spec.podCIDRs, or spec.podCIDR),
// those a new pod on it gets its address from; nil when the node is
// unknown or has none.
func (rs *Ruleset) LocalPodCIDRs(node string) []netip.Prefix {
	i, ok := rs.nodeByName[node]
	if !ok {
		return nil
	}
	return slices.Clone(rs.nodes[i].podCIDRs)
}

// PodCIDR returns the node and range of pod CIDR index i (an UnknownPod
// side's Policy); ok is false for an index out of range.
func (rs *Ruleset) PodCIDR(i int32) (node string, prefix netip.Prefix, ok bool) {
	if i < 0 || int(i) >= len(rs.podCIDRs) {
		return "", netip.Prefix{}, false
	}
	c := rs.podCIDRs[i]
	return rs.nodes[c.node].name, c.prefix, true
}

// Isolators returns the names of the policies that isolate pod index i in
// the given direction ("ingress" or "egress"), with staged ones when audit.
func (rs *Ruleset) Isolators(i int32, direction string, audit bool) []string {
	if i < 0 || int(i) >= len(rs.pods) {
		return nil
	}
	dir := ingress
	if direction == "egress" {
		dir = egress
	}
	d := rs.pods[i].enforced[dir]
	if audit {
		d = rs.pods[i].audit[dir]
	}
	out := make([]string, 0, len(d.isolators))
	for _, pi := range d.isolators {
		out = append(out, rs.PolicyName(pi))
	}
	return out
}

// StagedCause names the staged policies that make the audit verdict
// differ from the enforced one: for a flow that would be denied, the staged
// policies isolating the side that denies it; for one that would be
// allowed, the staged policy whose rule allows it. Nil when they agree.
func (rs *Ruleset) StagedCause(v Verdict) []string {
	if !v.AuditDiffers() {
		return nil
	}
	var out []string
	if !v.Audit.Allow {
		for dir, s := range [2]Side{ingress: v.Audit.Ingress, egress: v.Audit.Egress} {
			if s.Decision != DeniedIsolated || s.Pod < 0 {
				continue
			}
			for _, pi := range rs.pods[s.Pod].audit[dir].isolators {
				if rs.policies[pi].staged {
					out = append(out, rs.PolicyName(pi))
				}
			}
		}
		return out
	}
	for _, s := range []Side{v.Audit.Egress, v.Audit.Ingress} {
		if s.Decision == AllowedByRule && rs.PolicyStaged(s.Policy) {
			out = append(out, rs.PolicyName(s.Policy))
		}
	}
	return out
}

// DescribeAudit renders the audit verdict's reason when it differs from
// the enforced one, e.g. "would deny: ingress: default deny by isolation
// of x/a from x/staged-deny (staged)"; "" when they agree.
func (rs *Ruleset) DescribeAudit(v Verdict) string {
	if !v.AuditDiffers() {
		return ""
	}
	what := "would deny"
	if v.Audit.Allow {
		what = "would allow"
	}
	return what + " with staged " + strings.Join(rs.StagedCause(v), ", ") + ": egress: " + rs.describeSide(v.Audit.Egress, "egress", true, netip.Addr{}) + "; ingress: " + rs.describeSide(v.Audit.Ingress, "ingress", true, netip.Addr{})
}

// Describe renders a verdict's reason in one line, naming the rule that
// allowed each side or the policies whose isolation denied it. An
// UnknownPod side is named "source" or "destination"; DescribeFlow names
// its address.
func (rs *Ruleset) Describe(v Verdict) string {
	return rs.describe(v, netip.Addr{}, netip.Addr{})
}

// DescribeFlow is Describe with the flow's addresses, which an UnknownPod
// side (an address the Ruleset has no name for) is rendered with.
func (rs *Ruleset) DescribeFlow(f Flow, v Verdict) string {
	return rs.describe(v, f.Src, f.Dst)
}

func (rs *Ruleset) describe(v Verdict, src, dst netip.Addr) string {
	verdict := "deny"
	if v.Allow {
		verdict = "allow"
	}
	if v.Egress.Decision == Malformed || v.Ingress.Decision == Malformed {
		return "deny: malformed packet"
	}
	return verdict + ": egress: " + rs.describeSide(v.Egress, "egress", false, src) + "; ingress: " + rs.describeSide(v.Ingress, "ingress", false, dst)
}

// DescribeSide renders one side of a verdict.
func (rs *Ruleset) DescribeSide(s Side, direction string) string {
	return rs.describeSide(s, direction, false, netip.Addr{})
}

// describeSide renders s; self is the side's own address when known
// (the source's for egress), used to name an unknown pod.
func (rs *Ruleset) describeSide(s Side, direction string, audit bool, self netip.Addr) string {
	switch s.Decision {
	case UnknownPod:
		who := "source"
		if direction == "ingress" {
			who = "destination"
		}
		if self.IsValid() {
			who = self.String()
		}
		node, prefix, ok := rs.PodCIDR(s.Policy)
		if !ok {
			return who + " is in a node's pod CIDR but belongs to no known pod (not synced yet): denied"
		}
		return fmt.Sprintf("%s is in %s's pod CIDR %s but belongs to no known pod (not synced yet): denied", who, node, prefix)
	case NotPoliced:
		if direction == "egress" {
			return "source is not a pod"
		}
		return "destination is not a pod"
	case NotIsolated:
		return rs.PodName(s.Pod) + " not isolated"
	case NodeLocal:
		return "from " + rs.PodName(s.Pod) + "'s own node"
	case AllowedByRule:
		return "allowed by " + rs.RuleName(s, direction)
	case DeniedIsolated:
		return "default deny by isolation of " + rs.PodName(s.Pod) + " from " + strings.Join(rs.Isolators(s.Pod, direction, audit), ", ")
	case Malformed:
		return "malformed packet"
	}
	return s.Decision.String()
}

// RuleName names the rule and peer of an AllowedByRule side of the given
// direction ("ingress" or "egress"), e.g.
// "x/allow-web ingress[0] from[1] (namespaceSelector{team=a})".
func (rs *Ruleset) RuleName(s Side, direction string) string {
	if s.Policy < 0 || int(s.Policy) >= len(rs.policies) {
		return ""
	}
	pol := &rs.policies[s.Policy]
	dir, field := ingress, "from"
	if direction == "egress" {
		dir, field = egress, "to"
	}
	if s.Rule < 0 || int(s.Rule) >= len(pol.rules[dir]) {
		return rs.PolicyName(s.Policy)
	}
	r := &rs.rules[pol.rules[dir][s.Rule]]
	name := fmt.Sprintf("%s/%s %s[%d]", pol.ns, pol.name, dirNames[dir], r.index)
	if s.Peer < 0 || int(s.Peer) >= len(r.peers) {
		return name + " (any peer)"
	}
	return fmt.Sprintf("%s %s[%d] (%s)", name, field, s.Peer, r.peers[s.Peer].text)
}

// Explanation is the full reasoning for one flow: the verdict and, for
// each side, every policy that selects the pod and what each of its rules
// made of the flow.
type Explanation struct {
	Verdict string          `json:"verdict"`
	Reason  string          `json:"reason"`
	Flow    string          `json:"flow"`
	Egress  SideExplanation `json:"egress"`
	Ingress SideExplanation `json:"ingress"`
}

// SideExplanation explains one direction.
type SideExplanation struct {
	Pod      string              `json:"pod,omitempty"`
	Decision string              `json:"decision"`
	Summary  string              `json:"summary"`
	Policies []PolicyExplanation `json:"policies,omitempty"`
}

// PolicyExplanation lists what each rule of one selecting policy did.
type PolicyExplanation struct {
	Policy string            `json:"policy"`
	Staged bool              `json:"staged,omitempty"`
	Rules  []RuleExplanation `json:"rules"`
}

// RuleExplanation says whether a rule matched and, if not, why.
type RuleExplanation struct {
	Rule    string `json:"rule"`
	Matched bool   `json:"matched"`
	Why     string `json:"why"`
}

// Explain decides f and explains the decision. The verdict is Decide's;
// the per-rule detail runs the same port and peer matchers over the same
// compiled rules, so the explanation cannot disagree with the agent.
func (rs *Ruleset) Explain(f Flow) Explanation {
	v := rs.Decide(f)
	src := rs.endpointOf(f.Src)
	dst := rs.endpointOf(f.Dst)
	e := Explanation{
		Verdict: map[bool]string{true: "allow", false: "deny"}[v.Allow],
		Reason:  rs.DescribeFlow(f, v),
		Flow:    fmt.Sprintf("%s -> %s %d/%s", rs.addrName(f.Src), rs.addrName(f.Dst), f.DstPort, ProtoName(f.Proto)),
	}
	e.Egress = rs.explainSide(egress, v.Egress, f.Src, dst, f.Dst, dst.pod, f)
	e.Ingress = rs.explainSide(ingress, v.Ingress, f.Dst, src, f.Src, dst.pod, f)
	return e
}

func (rs *Ruleset) explainSide(dir uint8, s Side, selfAddr netip.Addr, peer endpoint, peerAddr netip.Addr, dstPod int32, f Flow) SideExplanation {
	out := SideExplanation{Pod: rs.PodName(s.Pod), Decision: s.Decision.String(), Summary: rs.describeSide(s, dirNames[dir], false, selfAddr)}
	if s.Pod < 0 {
		return out
	}
	d := rs.pods[s.Pod].audit[dir]
	for _, pi := range d.isolators {
		pol := &rs.policies[pi]
		pe := PolicyExplanation{Policy: rs.PolicyName(pi), Staged: pol.staged}
		if len(pol.rules[dir]) == 0 {
			pe.Rules = append(pe.Rules, RuleExplanation{Rule: "(none)", Why: "the policy has no " + dirNames[dir] + " rules: it only isolates"})
		}
		for _, ri := range pol.rules[dir] {
			r := &rs.rules[ri]
			re := RuleExplanation{Rule: fmt.Sprintf("%s[%d]", dirNames[dir], r.index)}
			portOK := r.anyPort || rs.portsMatch(r.ports, f.Proto, f.DstPort, dstPod)
			peerIdx := -1
			if !r.anyPeer {
				peerIdx = peerMatch(r.peers, peer.pod, peerAddr)
			}
			switch {
			case !portOK:
				re.Why = fmt.Sprintf("port %d/%s is not among %s", f.DstPort, ProtoName(f.Proto), rs.portsText(r.ports))
			case r.anyPeer:
				re.Matched, re.Why = true, "any peer, port matches"
			case peerIdx >= 0:
				re.Matched, re.Why = true, "peer "+r.peers[peerIdx].text+" matches"
			default:
				texts := make([]string, 0, len(r.peers))
				for _, p := range r.peers {
					texts = append(texts, p.text)
				}
				re.Why = "peer " + rs.addrName(peerAddr) + " matches none of: " + strings.Join(texts, "; ")
			}
			pe.Rules = append(pe.Rules, re)
		}
		out.Policies = append(out.Policies, pe)
	}
	return out
}

func (rs *Ruleset) portsText(ports []portRange) string {
	parts := make([]string, 0, len(ports))
	for _, p := range ports {
		switch {
		case p.name >= 0:
			parts = append(parts, fmt.Sprintf("%s/%s", rs.portNames[p.name], ProtoName(p.proto)))
		case p.lo == 0 && p.hi == 65535:
			parts = append(parts, "any/"+ProtoName(p.proto))
		case p.lo == p.hi:
			parts = append(parts, fmt.Sprintf("%d/%s", p.lo, ProtoName(p.proto)))
		case p.lo > p.hi:
			parts = append(parts, "(unusable port)")
		default:
			parts = append(parts, fmt.Sprintf("%d-%d/%s", p.lo, p.hi, ProtoName(p.proto)))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// addrName names an address: the pod or node it is, or the address itself.
func (rs *Ruleset) addrName(a netip.Addr) string {
	ep := rs.endpointOf(a)
	switch {
	case ep.pod >= 0:
		return rs.PodName(ep.pod) + " (" + a.String() + ")"
	case ep.host >= 0:
		return rs.PodName(ep.host) + " (hostNetwork, " + a.String() + ")"
	case ep.node >= 0:
		return "node/" + rs.nodes[ep.node].name + " (" + a.String() + ")"
	case rs.unknownPod(ep, a) >= 0:
		node, _, _ := rs.PodCIDR(rs.unknownPod(ep, a))
		return a.String() + " (unknown pod on node/" + node + ")"
	}
	return a.String()
}

// ProtoName names an IP protocol number.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	case ProtoICMP:
		return "ICMP"
	case ProtoICMPv6:
		return "ICMPv6"
	}
	return fmt.Sprintf("proto-%d", p)
}

// ProtoNumber parses "TCP", "UDP" or "SCTP" (any case).
func ProtoNumber(name string) (uint8, error) {
	switch strings.ToUpper(name) {
	case "TCP", "":
		return ProtoTCP, nil
	case "UDP":
		return ProtoUDP, nil
	case "SCTP":
		return ProtoSCTP, nil
	}
	return 0, fmt.Errorf("protocol %q is not TCP, UDP or SCTP", name)
}
