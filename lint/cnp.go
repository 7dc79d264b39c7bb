package lint

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ClusterNetworkPolicy checks, as Finding.Check names them (with
// CheckSelectsNothing and CheckHostNetworkOnly for their subjects).
const (
	CheckCNPSamePriority = "cnp-same-priority"
	CheckCNPShadowed     = "cnp-rule-shadowed"
	CheckCNPDomainNames  = "cnp-domain-names"
	CheckCNPDenyDNS      = "cnp-admin-deny-dns"
)

// cnpRule is one rule of a ClusterNetworkPolicy as the checks read it:
// the pods its peers select now, and whether it has peers that are not pods.
type cnpRule struct {
	pol     *cnpv1beta1.ClusterNetworkPolicy
	dir     string // "ingress" or "egress"
	index   int
	action  cnpv1beta1.ClusterNetworkPolicyRuleAction
	pods    map[*corev1.Pod]bool
	nonPod  bool // networks, nodes or domainNames peers
	allNets bool // networks cover every IPv4 and IPv6 address
	nets    []netip.Prefix
	protos  []cnpv1beta1.ClusterNetworkPolicyProtocol
}

func (r *cnpRule) field() string { return fmt.Sprintf("spec.%s[%d]", r.dir, r.index) }

// clusterPolicies lints the ClusterNetworkPolicies of c.
func (l *linter) clusterPolicies() []Finding {
	pols := slices.Clone(l.c.ClusterPolicies)
	// The order the enforcer walks them in: tier, priority, then name
	// (docs/clusternetworkpolicy.md).
	slices.SortStableFunc(pols, func(a, b *cnpv1beta1.ClusterNetworkPolicy) int {
		if a.Spec.Tier != b.Spec.Tier {
			return strings.Compare(string(a.Spec.Tier), string(b.Spec.Tier))
		}
		if a.Spec.Priority != b.Spec.Priority {
			return int(a.Spec.Priority - b.Spec.Priority)
		}
		return strings.Compare(a.Name, b.Name)
	})
	subjects := make(map[*cnpv1beta1.ClusterNetworkPolicy][]*corev1.Pod, len(pols))
	rules := make(map[*cnpv1beta1.ClusterNetworkPolicy][]*cnpRule, len(pols))
	for _, p := range pols {
		subjects[p] = l.cnpSubject(p, false)
		for i, r := range p.Spec.Ingress {
			peers := make([]cnpv1beta1.ClusterNetworkPolicyEgressPeer, len(r.From))
			for j, pe := range r.From {
				peers[j] = cnpv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods}
			}
			rules[p] = append(rules[p], l.cnpRule(p, "ingress", i, r.Action, peers, r.Protocols))
		}
		for i, r := range p.Spec.Egress {
			rules[p] = append(rules[p], l.cnpRule(p, "egress", i, r.Action, r.To, r.Protocols))
		}
	}
	var out []Finding
	for pi, p := range pols {
		obj := cluster.ObjectName(p)
		add := func(check, field, format string, args ...any) {
			out = append(out, Finding{Check: check, Object: obj, Field: field, Message: fmt.Sprintf(format, args...)})
		}
		subj := subjects[p]
		if len(subj) == 0 {
			if hn := l.cnpSubject(p, true); len(hn) > 0 {
				add(CheckHostNetworkOnly, "spec.subject", "selects only hostNetwork pods (%s): ClusterNetworkPolicy never applies to them, so this policy has no effect", podList(hn))
			} else {
				add(CheckSelectsNothing, "spec.subject", "selects no pod: this policy has no effect")
			}
		}
		for _, q := range pols[:pi] {
			if q.Spec.Tier == p.Spec.Tier && q.Spec.Priority == p.Spec.Priority && overlap(subjects[q], subj) && actionsDiffer(rules[q], rules[p]) {
				add(CheckCNPSamePriority, "spec.priority", "%s tier priority %d is also %s's, and both select %s with rules of different actions: where both match a flow the API leaves the result undefined (nfqpolicy applies %s first, by name); give them different priorities",
					p.Spec.Tier, p.Spec.Priority, cluster.ObjectName(q), podList(common(subjects[q], subj)), q.Name)
			}
		}
		for ri, r := range rules[p] {
			if r.dir == "egress" {
				if d := domainNames(p.Spec.Egress[r.index].To); len(d) > 0 {
					add(CheckCNPDomainNames, r.field(), "domainNames peers (%s) are not enforced by nfqpolicy: they match no traffic, so this %s rule lets nothing through by name and those flows fall to the rules and tiers after it (typically a Deny); use networks peers with the addresses instead", strings.Join(d, ", "), r.action)
				}
			}
			if len(subj) == 0 || (len(r.pods) == 0 && !r.nonPod) {
				continue
			}
			if by := l.shadowedBy(r, rules[p][:ri], subj, subjects, pols[:pi], rules, p.Spec.Tier); by != "" {
				add(CheckCNPShadowed, r.field(), "never decides: %s matches every flow this rule matches first (for the pods selected now)", by)
			}
		}
	}
	out = append(out, l.cnpDNS(pols, subjects, rules)...)
	return out
}

// cnpSubject returns the live pods p selects: non-hostNetwork pods, or,
// with hostNet, the hostNetwork pods it would select if it could.
func (l *linter) cnpSubject(p *cnpv1beta1.ClusterNetworkPolicy, hostNet bool) []*corev1.Pod {
	var out []*corev1.Pod
	s := p.Spec.Subject
	for _, pod := range l.live {
		if pod.Spec.HostNetwork != hostNet {
			continue
		}
		if (s.Namespaces != nil && l.nsMatch(s.Namespaces, pod)) || (s.Pods != nil && l.podMatch(s.Pods, pod)) {
			out = append(out, pod)
		}
	}
	return out
}

func (l *linter) nsMatch(sel *metav1.LabelSelector, pod *corev1.Pod) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && s.Matches(l.nsLabels[pod.Namespace])
}

func (l *linter) podMatch(np *cnpv1beta1.NamespacedPod, pod *corev1.Pod) bool {
	s, err := metav1.LabelSelectorAsSelector(&np.PodSelector)
	return err == nil && l.nsMatch(&np.NamespaceSelector, pod) && s.Matches(labels.Set(pod.Labels))
}

func (l *linter) cnpRule(p *cnpv1beta1.ClusterNetworkPolicy, dir string, i int, action cnpv1beta1.ClusterNetworkPolicyRuleAction, peers []cnpv1beta1.ClusterNetworkPolicyEgressPeer, protos []cnpv1beta1.ClusterNetworkPolicyProtocol) *cnpRule {
	r := &cnpRule{pol: p, dir: dir, index: i, action: action, pods: map[*corev1.Pod]bool{}, protos: protos}
	var v4, v6 bool
	for _, pe := range peers {
		switch {
		case pe.Namespaces != nil || pe.Pods != nil:
			for _, pod := range l.live {
				if !pod.Spec.HostNetwork && ((pe.Namespaces != nil && l.nsMatch(pe.Namespaces, pod)) || (pe.Pods != nil && l.podMatch(pe.Pods, pod))) {
					r.pods[pod] = true
				}
			}
		default:
			r.nonPod = true
			for _, n := range pe.Networks {
				if pfx, err := netip.ParsePrefix(string(n)); err == nil {
					r.nets = append(r.nets, pfx)
					v4 = v4 || pfx.Bits() == 0 && pfx.Addr().Is4()
					v6 = v6 || pfx.Bits() == 0 && pfx.Addr().Is6()
				}
			}
		}
	}
	r.allNets = v4 && v6
	return r
}

// covers reports whether every flow r2 matches is one r1 matches, for the
// pods selected now. Networks that cover every address match every peer.
func covers(r1, r2 *cnpRule) bool {
	if r1.dir != r2.dir {
		return false
	}
	if len(r1.protos) > 0 && !reflect.DeepEqual(r1.protos, r2.protos) {
		return false
	}
	if r1.allNets {
		return true
	}
	if r2.nonPod {
		return false
	}
	for pod := range r2.pods {
		if !r1.pods[pod] {
			return false
		}
	}
	return true
}

// shadowedBy names the earlier rule of the same policy, or the rule of a
// policy before it in the same tier that selects every pod this one does,
// that covers r; "" when none.
func (l *linter) shadowedBy(r *cnpRule, earlier []*cnpRule, subj []*corev1.Pod, subjects map[*cnpv1beta1.ClusterNetworkPolicy][]*corev1.Pod, before []*cnpv1beta1.ClusterNetworkPolicy, rules map[*cnpv1beta1.ClusterNetworkPolicy][]*cnpRule, tier cnpv1beta1.Tier) string {
	for _, e := range earlier {
		if covers(e, r) {
			return fmt.Sprintf("the earlier rule %s (%s)", e.field(), e.action)
		}
	}
	for _, q := range before {
		if q.Spec.Tier != tier || !contains(subjects[q], subj) {
			continue
		}
		for _, e := range rules[q] {
			if covers(e, r) {
				return fmt.Sprintf("%s %s (%s, priority %d)", cluster.ObjectName(q), e.field(), e.action, q.Spec.Priority)
			}
		}
	}
	return ""
}

// cnpDNS finds Admin Deny rules that are the first Admin rule to match a
// subject pod's DNS queries (UDP or TCP port 53 to the cluster's DNS pods,
// labelled k8s-app=kube-dns, or to any address when there are none): the
// cluster-scope version of the egress-without-dns footgun, which no
// NetworkPolicy can undo.
func (l *linter) cnpDNS(pols []*cnpv1beta1.ClusterNetworkPolicy, subjects map[*cnpv1beta1.ClusterNetworkPolicy][]*corev1.Pod, rules map[*cnpv1beta1.ClusterNetworkPolicy][]*cnpRule) []Finding {
	var dns []*corev1.Pod
	for _, pod := range l.live {
		if pod.Labels["k8s-app"] == "kube-dns" && !pod.Spec.HostNetwork {
			dns = append(dns, pod)
		}
	}
	cut := map[*cnpRule][]*corev1.Pod{}
	var order []*cnpRule
	for _, pod := range l.live {
		if pod.Spec.HostNetwork {
			continue
		}
	walk:
		for _, p := range pols {
			if p.Spec.Tier != cnpv1beta1.AdminTier || !slices.Contains(subjects[p], pod) {
				continue
			}
			for _, r := range rules[p] {
				if r.dir != "egress" || !matchesDNS(r, dns) {
					continue
				}
				if r.action == cnpv1beta1.ClusterNetworkPolicyRuleActionDeny {
					if cut[r] == nil {
						order = append(order, r)
					}
					cut[r] = append(cut[r], pod)
				}
				break walk
			}
		}
	}
	var out []Finding
	for _, r := range order {
		out = append(out, Finding{Check: CheckCNPDenyDNS, Object: cluster.ObjectName(r.pol), Field: r.field(),
			Message: fmt.Sprintf("denies DNS (port 53) for %s before any Admin rule accepts or passes it: no NetworkPolicy can allow it back; add an Accept (or Pass) rule for DNS to the cluster's DNS pods before it", podList(cut[r]))})
	}
	return out
}

// matchesDNS reports whether r matches UDP or TCP port 53 to the DNS pods
// (or to any address, when no DNS pod is known).
func matchesDNS(r *cnpRule, dns []*corev1.Pod) bool {
	port := len(r.protos) == 0
	for _, p := range r.protos {
		for _, pp := range []*cnpv1beta1.ClusterNetworkPolicyProtocolTCP{p.TCP, (*cnpv1beta1.ClusterNetworkPolicyProtocolTCP)(p.UDP)} {
			if pp != nil && pp.DestinationPort != nil && portHas(pp.DestinationPort, 53) {
				port = true
			}
		}
	}
	if !port {
		return false
	}
	if r.allNets {
		return true
	}
	if len(dns) == 0 {
		return false
	}
	for _, d := range dns {
		if r.pods[d] {
			return true
		}
		for _, ip := range d.Status.PodIPs {
			a, err := netip.ParseAddr(ip.IP)
			for _, n := range r.nets {
				if err == nil && n.Contains(a) {
					return true
				}
			}
		}
	}
	return false
}

func portHas(p *cnpv1beta1.Port, n int32) bool {
	if p.Range != nil {
		return p.Range.Start <= n && n <= p.Range.End
	}
	return p.Number == n
}

func domainNames(peers []cnpv1beta1.ClusterNetworkPolicyEgressPeer) []string {
	var out []string
	for _, pe := range peers {
		for _, d := range pe.DomainNames {
			out = append(out, string(d))
		}
	}
	return out
}

func actionsDiffer(a, b []*cnpRule) bool {
	for _, x := range a {
		for _, y := range b {
			if x.dir == y.dir && x.action != y.action {
				return true
			}
		}
	}
	return false
}

func overlap(a, b []*corev1.Pod) bool { return len(common(a, b)) > 0 }

func common(a, b []*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range b {
		if slices.Contains(a, p) {
			out = append(out, p)
		}
	}
	return out
}

func contains(super, sub []*corev1.Pod) bool {
	for _, p := range sub {
		if !slices.Contains(super, p) {
			return false
		}
	}
	return len(sub) > 0
}
