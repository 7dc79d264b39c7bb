package filter

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
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

// PolicyName returns "namespace/name" of NetworkPolicy index i,
// "ClusterNetworkPolicy/name" (CNPName) of a ClusterNetworkPolicy, or ""
// for -1.
func (rs *Ruleset) PolicyName(i int32) string {
	if i < 0 || int(i) >= len(rs.policies) {
		return ""
	}
	p := &rs.policies[i]
	if p.kind != tierNP {
		return p.id
	}
	return p.ns + "/" + p.name
}

// PolicyTier returns the tier of policy index i: "Admin" or "Baseline"
// for a ClusterNetworkPolicy, "NetworkPolicy" for a NetworkPolicy, "" for
// an index out of range.
func (rs *Ruleset) PolicyTier(i int32) string {
	if i < 0 || int(i) >= len(rs.policies) {
		return ""
	}
	return tierName(rs.policies[i].kind)
}

// policyTitle names a policy for people: a ClusterNetworkPolicy with its
// tier and priority.
func (rs *Ruleset) policyTitle(i int32) string {
	p := &rs.policies[i]
	if p.kind == tierNP {
		return rs.PolicyName(i)
	}
	return fmt.Sprintf("%s %s (priority %d)", tierName(p.kind), CNPName(p.name), p.priority)
}

// RuleRef names the rule that decided a side (Decision.ByRule) or the
// Pass rule that sent it on: the policy, its tier, the rule's index in
// its direction, its name (ClusterNetworkPolicy rules; "" when unnamed)
// and its action ("Allow" for NetworkPolicy rules).
type RuleRef struct {
	Policy string `json:"policy"`
	Tier   string `json:"tier"`
	Index  int    `json:"rule"`
	Name   string `json:"rule_name,omitempty"`
	Action string `json:"action"`
}

// DecidingRule returns the rule that decided side s of the given
// direction ("ingress" or "egress"); ok is false when no rule did.
func (rs *Ruleset) DecidingRule(s Side, direction string) (RuleRef, bool) {
	if !s.Decision.ByRule() || s.Policy < 0 || int(s.Policy) >= len(rs.policies) {
		return RuleRef{}, false
	}
	pol := &rs.policies[s.Policy]
	dir := ingress
	if direction == "egress" {
		dir = egress
	}
	if s.Rule < 0 || int(s.Rule) >= len(pol.rules[dir]) {
		return RuleRef{}, false
	}
	return rs.ruleRef(&rs.rules[pol.rules[dir][s.Rule]]), true
}

func (rs *Ruleset) ruleRef(r *rule) RuleRef {
	return RuleRef{Policy: rs.PolicyName(r.policy), Tier: tierName(rs.policies[r.policy].kind), Index: int(r.index), Name: rs.ruleName(r), Action: actionName(r.action)}
}

// PassRule returns the Admin Pass rule that sent side s on to the lower
// tiers; ok is false when none did.
func (rs *Ruleset) PassRule(s Side) (RuleRef, bool) {
	if s.Pass == 0 || int(s.Pass) > len(rs.passRules) {
		return RuleRef{}, false
	}
	return rs.ruleRef(&rs.rules[rs.passRules[s.Pass-1]]), true
}

// DomainNameRule is a ClusterNetworkPolicy egress rule with domainNames
// peers. nfqpolicy does not resolve domain names: those peers match no
// traffic, so an Accept rule (the only action the API allows with them)
// accepts nothing through them and the flows fall to the rules after it,
// typically a Deny.
type DomainNameRule struct {
	Policy      string   `json:"policy"` // CNPName
	Tier        string   `json:"tier"`
	Rule        int      `json:"rule"` // index in spec.egress
	RuleName    string   `json:"rule_name,omitempty"`
	Action      string   `json:"action"`
	DomainNames []string `json:"domain_names"`
	Staged      bool     `json:"staged,omitempty"`
}

// DomainNameRules lists the rules with domainNames peers, which are not
// enforced (they match no traffic), so that lint, the agent's log and
// metrics can report them.
func (rs *Ruleset) DomainNameRules() []DomainNameRule {
	out := make([]DomainNameRule, 0, len(rs.domainRules))
	for _, ri := range rs.domainRules {
		r := &rs.rules[ri]
		pol := &rs.policies[r.policy]
		d := DomainNameRule{Policy: rs.PolicyName(r.policy), Tier: tierName(pol.kind), Rule: int(r.index), RuleName: rs.ruleName(r), Action: actionName(r.action), Staged: pol.staged}
		for _, pe := range r.peers {
			if names, ok := strings.CutPrefix(pe.text, "domainNames "); ok && pe.kind == peerNever {
				names, _, _ = strings.Cut(names, " ")
				d.DomainNames = append(d.DomainNames, strings.Split(names, ",")...)
			}
		}
		out = append(out, d)
	}
	return out
}

// PolicyStaged reports whether policy index i is in audit mode.
func (rs *Ruleset) PolicyStaged(i int32) bool {
	return i >= 0 && int(i) < len(rs.policies) && rs.policies[i].staged
}

// Counts returns the number of pods, nodes, policies and rules compiled
// (a Compiler's free slots not included).
func (rs *Ruleset) Counts() (pods, nodes, policies, rules int) {
	return liveCount(rs.pods, func(p *pod) bool { return p.name == "" }), len(rs.nodes),
		liveCount(rs.policies, func(p *policy) bool { return p.name == "" }),
		liveCount(rs.rules, func(r *rule) bool { return r.policy < 0 })
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

// ClusterPolicies returns the names of the ClusterNetworkPolicies whose
// subject selects pod index i and that have rules in the given direction
// ("ingress" or "egress"), in evaluation order (Admin, then Baseline), with
// staged ones when audit.
func (rs *Ruleset) ClusterPolicies(i int32, direction string, audit bool) []string {
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
	set := &rs.cnpSets[d.cnp]
	var out []string
	last := int32(-1)
	for _, rules := range [2][]cnpRule{set.admin.rules, set.baseline.rules} {
		for _, c := range rules {
			if p := rs.rules[c.rule].policy; p != last {
				out = append(out, rs.PolicyName(p))
				last = p
			}
		}
	}
	return out
}

// StagedCause names the staged policies that make the audit verdict
// differ from the enforced one: the staged policies on the path that
// decided the audit verdict's sides, that is the rule that decided (or
// the Admin Pass rule that skipped the rest of its tier) when its policy
// is staged, and for a side denied by isolation its staged isolators. Nil
// when the verdicts agree.
func (rs *Ruleset) StagedCause(v Verdict) []string {
	if !v.AuditDiffers() {
		return nil
	}
	var out []string
	add := func(pi int32) {
		if rs.PolicyStaged(pi) {
			if n := rs.PolicyName(pi); !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	for dir, s := range [2]Side{ingress: v.Audit.Ingress, egress: v.Audit.Egress} {
		// Only the sides that make the audit outcome: the denying sides
		// of a would-deny, both sides of a would-allow.
		if s.Decision.Allowed() != v.Audit.Allow {
			continue
		}
		if s.Pass != 0 && int(s.Pass) <= len(rs.passRules) {
			add(rs.rules[rs.passRules[s.Pass-1]].policy)
		}
		if s.Decision.ByRule() {
			add(s.Policy)
		}
		if s.Decision == DeniedIsolated && s.Pod >= 0 {
			for _, pi := range rs.pods[s.Pod].audit[dir].isolators {
				add(pi)
			}
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
	case NodeLocal:
		return "from " + rs.PodName(s.Pod) + "'s own node"
	case Malformed:
		return "malformed packet"
	}
	// The tiers below Admin: say first that an Admin Pass rule sent the
	// flow on.
	pass := ""
	if s.Pass != 0 {
		pass = "passed by " + rs.passName(s, direction) + "; "
	}
	switch s.Decision {
	case NotIsolated:
		return pass + rs.PodName(s.Pod) + " not isolated"
	case AllowedByRule:
		return pass + "allowed by " + rs.RuleName(s, direction)
	case DeniedIsolated:
		return pass + "default deny by isolation of " + rs.PodName(s.Pod) + " from " + strings.Join(rs.Isolators(s.Pod, direction, audit), ", ")
	case AdminAccepted, BaselineAccepted:
		return pass + "accepted by " + rs.RuleName(s, direction)
	case AdminDenied, BaselineDenied:
		return pass + "denied by " + rs.RuleName(s, direction)
	case BaselinePassed:
		return pass + "passed by " + rs.RuleName(s, direction) + " to the default (allow)"
	}
	return s.Decision.String()
}

// passName names side s's Admin Pass rule like RuleName does.
func (rs *Ruleset) passName(s Side, direction string) string {
	if s.Pass == 0 || int(s.Pass) > len(rs.passRules) {
		return "an Admin Pass rule"
	}
	r := &rs.rules[rs.passRules[s.Pass-1]]
	ps := Side{Policy: r.policy, Rule: r.index, Peer: -1}
	if r.anyPeer {
		return rs.RuleName(ps, direction)
	}
	// The peer that matched is not kept for a Pass; name the rule.
	return rs.ruleTitle(r)
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
	name := rs.ruleTitle(r)
	if s.Peer < 0 || int(s.Peer) >= len(r.peers) {
		return name + " (any peer)"
	}
	return fmt.Sprintf("%s %s[%d] (%s)", name, field, s.Peer, r.peers[s.Peer].text)
}

// ruleName is a ClusterNetworkPolicy rule's name, "" when it has none or
// r is a NetworkPolicy rule.
func (rs *Ruleset) ruleName(r *rule) string {
	names := rs.policies[r.policy].ruleNames[r.dir]
	if int(r.index) < len(names) {
		return names[r.index]
	}
	return ""
}

// ruleTitle names a rule: "x/allow-web ingress[0]" for a NetworkPolicy,
// `Admin ClusterNetworkPolicy/guard (priority 5) egress[2] "no-db" Deny`
// for a ClusterNetworkPolicy.
func (rs *Ruleset) ruleTitle(r *rule) string {
	pol := &rs.policies[r.policy]
	if pol.kind == tierNP {
		return fmt.Sprintf("%s/%s %s[%d]", pol.ns, pol.name, dirNames[r.dir], r.index)
	}
	name := ""
	if n := rs.ruleName(r); n != "" {
		name = " " + strconv.Quote(n)
	}
	return fmt.Sprintf("%s %s[%d]%s %s", rs.policyTitle(r.policy), dirNames[r.dir], r.index, name, actionName(r.action))
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

// SideExplanation explains one direction: the tier walk. Policies lists,
// in evaluation order, the Admin tier ClusterNetworkPolicies whose subject
// selects the pod, the NetworkPolicies that isolate it, then the Baseline
// tier ClusterNetworkPolicies, each with what its rules made of the flow.
type SideExplanation struct {
	Pod      string              `json:"pod,omitempty"`
	Decision string              `json:"decision"`
	Summary  string              `json:"summary"`
	Policies []PolicyExplanation `json:"policies,omitempty"`
}

// PolicyExplanation lists what each rule of one policy did.
type PolicyExplanation struct {
	Policy   string            `json:"policy"`
	Tier     string            `json:"tier,omitempty"` // Admin, NetworkPolicy, Baseline
	Priority *int32            `json:"priority,omitempty"`
	Staged   bool              `json:"staged,omitempty"`
	Rules    []RuleExplanation `json:"rules"`
}

// RuleExplanation says whether a rule matched and, if not, why. For a
// ClusterNetworkPolicy rule, Action is its action and Decided tells
// whether it was the rule that decided (Accept, Deny) or passed the flow
// on; rules after that point are marked not reached.
type RuleExplanation struct {
	Rule    string `json:"rule"`
	Name    string `json:"name,omitempty"`
	Action  string `json:"action,omitempty"`
	Matched bool   `json:"matched"`
	Decided bool   `json:"decided,omitempty"`
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

// explainSide walks the tiers the way side() does, over the policies with
// staged ones included: a staged policy's rules are shown with what they
// match but never end the walk, as they do not decide the enforced verdict.
func (rs *Ruleset) explainSide(dir uint8, s Side, selfAddr netip.Addr, peer endpoint, peerAddr netip.Addr, dstPod int32, f Flow) SideExplanation {
	out := SideExplanation{Pod: rs.PodName(s.Pod), Decision: s.Decision.String(), Summary: rs.describeSide(s, dirNames[dir], false, selfAddr)}
	if s.Pod < 0 {
		return out
	}
	d := rs.pods[s.Pod].audit[dir]
	set := &rs.cnpSets[d.cnp]
	// stop, once set, is why the rest of the walk is not reached.
	stop := ""
	if s.Decision == NodeLocal {
		stop = "not reached: traffic from the pod's own node skips its ingress policy"
	}
	stop = rs.explainCNP(&out, dir, set.admin.rules, stop, peer, peerAddr, dstPod, f)
	npIsolates := len(rs.pods[s.Pod].enforced[dir].isolators) > 0
	for _, pi := range d.isolators {
		pol := &rs.policies[pi]
		pe := PolicyExplanation{Policy: rs.PolicyName(pi), Tier: "NetworkPolicy", Staged: pol.staged}
		if len(pol.rules[dir]) == 0 {
			pe.Rules = append(pe.Rules, RuleExplanation{Rule: "(none)", Why: "the policy has no " + dirNames[dir] + " rules: it only isolates"})
		}
		for _, ri := range pol.rules[dir] {
			r := &rs.rules[ri]
			re := rs.explainRule(r, peer, peerAddr, dstPod, f)
			if stop != "" {
				re.Matched, re.Why = false, stop
			}
			pe.Rules = append(pe.Rules, re)
		}
		out.Policies = append(out.Policies, pe)
	}
	if stop == "" && npIsolates {
		stop = "not reached: a NetworkPolicy isolates the pod for " + dirNames[dir] + ", so it decides"
	}
	rs.explainCNP(&out, dir, set.baseline.rules, stop, peer, peerAddr, dstPod, f)
	return out
}

// explainCNP explains one tier's ClusterNetworkPolicy rules in evaluation
// order, starting with stop as the reason rules are not reached ("" while
// they are), and returns the stop reason for what comes after the tier.
func (rs *Ruleset) explainCNP(out *SideExplanation, dir uint8, rules []cnpRule, stop string, peer endpoint, peerAddr netip.Addr, dstPod int32, f Flow) string {
	after := stop
	tierStop := stop
	for _, c := range rules {
		r := &rs.rules[c.rule]
		pol := &rs.policies[r.policy]
		if n := len(out.Policies); n == 0 || out.Policies[n-1].Policy != rs.PolicyName(r.policy) {
			prio := pol.priority
			out.Policies = append(out.Policies, PolicyExplanation{Policy: rs.PolicyName(r.policy), Tier: tierName(pol.kind), Priority: &prio, Staged: pol.staged})
		}
		pe := &out.Policies[len(out.Policies)-1]
		re := rs.explainRule(r, peer, peerAddr, dstPod, f)
		switch {
		case tierStop != "":
			re.Matched, re.Why = false, tierStop
		case re.Matched && pol.staged:
			re.Why += " (staged: would decide " + actionName(r.action) + ")"
		case re.Matched:
			re.Decided = true
			if r.action == actPass {
				re.Why += ": Pass skips the rest of the " + tierName(pol.kind) + " tier"
				tierStop = "not reached: " + rs.ruleTitle(r) + " passed the flow to the next tier"
			} else {
				re.Why += ": " + actionName(r.action) + " decides"
				tierStop = "not reached: decided by " + rs.ruleTitle(r)
				after = tierStop
			}
		}
		pe.Rules = append(pe.Rules, re)
	}
	return after
}

// explainRule says whether rule r matches the flow and why.
func (rs *Ruleset) explainRule(r *rule, peer endpoint, peerAddr netip.Addr, dstPod int32, f Flow) RuleExplanation {
	re := RuleExplanation{Rule: fmt.Sprintf("%s[%d]", dirNames[r.dir], r.index), Name: rs.ruleName(r)}
	if rs.policies[r.policy].kind != tierNP {
		re.Action = actionName(r.action)
	}
	portOK := r.anyPort || rs.portsMatch(r.ports, f.Proto, f.DstPort, dstPod)
	peerIdx := -1
	if !r.anyPeer {
		peerIdx = rs.peerMatch(r.peers, peer, peerAddr)
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
	return re
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
