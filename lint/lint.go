// Package lint finds what the Kubernetes documentation warns about in a
// cluster's NetworkPolicies and pods: policies that cannot have the effect
// they seem to have (they select nothing, or only hostNetwork pods, or name
// a port no destination declares), pods that policies cannot protect or
// that lose DNS, and ipBlocks used for pod traffic; and in
// ClusterNetworkPolicies, subjects that select nothing or only hostNetwork
// pods, rules shadowed by an earlier rule or a higher-priority policy,
// same-priority policies that may disagree, domainNames peers (not
// enforced), and Admin Deny rules that cut DNS. Findings are warnings: the
// objects are valid, and the enforcer applies them as written.
package lint

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Checks, as Finding.Check names them.
const (
	CheckSelectsNothing    = "selects-nothing"
	CheckHostNetworkOnly   = "selects-only-hostnetwork"
	CheckNamedPort         = "named-port-undeclared"
	CheckIPBlockCoversPods = "ipblock-covers-pods"
	CheckNoDNSEgress       = "egress-without-dns"
	CheckHostNetworkDNS    = "hostnetwork-dnspolicy"
	CheckHostPort          = "hostport"
)

// Finding is one warning about one field of one object.
type Finding struct {
	Check   string `json:"check"`
	Object  string `json:"object"` // "NetworkPolicy ns/name", "Pod ns/name"
	Field   string `json:"field"`  // API field path
	Message string `json:"message"`
}

// String renders "warning: Kind ns/name: field: message".
func (f Finding) String() string {
	return fmt.Sprintf("warning: %s: %s: %s", f.Object, f.Field, f.Message)
}

// maxListed bounds how many pods a message names.
const maxListed = 3

// Lint returns the findings about c, NetworkPolicies first (in c's order),
// then ClusterNetworkPolicies (in the order they are enforced), then pods.
func Lint(c *cluster.Cluster) []Finding {
	l := newLinter(c)
	var out []Finding
	for _, p := range c.Policies {
		out = append(out, l.policy(p)...)
	}
	out = append(out, l.clusterPolicies()...)
	for _, p := range c.Pods {
		out = append(out, l.pod(p)...)
	}
	return out
}

type linter struct {
	c        *cluster.Cluster
	nsLabels map[string]labels.Set
	// live are the pods policies apply to and traffic comes from: not
	// terminated. Pending pods without an address count: they will have
	// one.
	live []*corev1.Pod
	// egressPolicies lists, per pod, the policies isolating it for egress.
	egressPolicies map[*corev1.Pod][]*networkingv1.NetworkPolicy
	selected       map[*networkingv1.NetworkPolicy][]*corev1.Pod // non-hostNetwork pods
	// peerCache holds peerPods results by the address of the rule's first
	// peer, which identifies the rule.
	peerCache map[*networkingv1.NetworkPolicyPeer][]*corev1.Pod
}

func newLinter(c *cluster.Cluster) *linter {
	l := &linter{
		c:              c,
		nsLabels:       make(map[string]labels.Set, len(c.Namespaces)),
		egressPolicies: make(map[*corev1.Pod][]*networkingv1.NetworkPolicy),
		selected:       make(map[*networkingv1.NetworkPolicy][]*corev1.Pod),
		peerCache:      make(map[*networkingv1.NetworkPolicyPeer][]*corev1.Pod),
	}
	for _, ns := range c.Namespaces {
		l.nsLabels[ns.Name] = labels.Set(ns.Labels)
	}
	for _, p := range c.Pods {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			l.live = append(l.live, p)
		}
	}
	for _, pol := range c.Policies {
		sel, err := metav1.LabelSelectorAsSelector(&pol.Spec.PodSelector)
		if err != nil {
			continue // validated objects do not get here
		}
		egress := hasType(pol, networkingv1.PolicyTypeEgress)
		for _, p := range l.live {
			if p.Namespace != pol.Namespace || p.Spec.HostNetwork || !sel.Matches(labels.Set(p.Labels)) {
				continue
			}
			l.selected[pol] = append(l.selected[pol], p)
			if egress {
				l.egressPolicies[p] = append(l.egressPolicies[p], pol)
			}
		}
	}
	return l
}

func hasType(p *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	for _, pt := range p.Spec.PolicyTypes {
		if pt == t {
			return true
		}
	}
	return false
}

func (l *linter) policy(p *networkingv1.NetworkPolicy) []Finding {
	obj := cluster.ObjectName(p)
	var out []Finding
	add := func(check, field, format string, args ...any) {
		out = append(out, Finding{Check: check, Object: obj, Field: field, Message: fmt.Sprintf(format, args...)})
	}
	selected := l.selected[p]
	if len(selected) == 0 {
		var hostNet []*corev1.Pod
		if sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector); err == nil {
			for _, pod := range l.live {
				if pod.Namespace == p.Namespace && pod.Spec.HostNetwork && sel.Matches(labels.Set(pod.Labels)) {
					hostNet = append(hostNet, pod)
				}
			}
		}
		if len(hostNet) > 0 {
			add(CheckHostNetworkOnly, "spec.podSelector",
				"selects only hostNetwork pods (%s): NetworkPolicy does not apply to pods with hostNetwork, so this policy has no effect", podList(hostNet))
		} else {
			add(CheckSelectsNothing, "spec.podSelector", "selects no pod in namespace %s: this policy has no effect", p.Namespace)
		}
	}
	for i, r := range p.Spec.Ingress {
		for j, port := range r.Ports {
			if port.Port == nil || port.Port.Type != intstr.String || len(selected) == 0 {
				continue
			}
			if msg := namedPortProblem(port.Port.StrVal, protocolOf(port), selected, "selected pod"); msg != "" {
				add(CheckNamedPort, fmt.Sprintf("spec.ingress[%d].ports[%d].port", i, j), "%s", msg)
			}
		}
		for j, peer := range r.From {
			if peer.IPBlock != nil {
				if covered := l.coveredPods(peer.IPBlock); len(covered) > 0 {
					add(CheckIPBlockCoversPods, fmt.Sprintf("spec.ingress[%d].from[%d].ipBlock", i, j), "%s", ipBlockMessage(peer.IPBlock, covered))
				}
			}
		}
	}
	for i, r := range p.Spec.Egress {
		for j, port := range r.Ports {
			if port.Port == nil || port.Port.Type != intstr.String {
				continue
			}
			dests := l.peerPods(p, r.To)
			if msg := namedPortProblem(port.Port.StrVal, protocolOf(port), dests, "pod the rule's peers select"); msg != "" {
				add(CheckNamedPort, fmt.Sprintf("spec.egress[%d].ports[%d].port", i, j), "%s", msg)
			}
		}
		for j, peer := range r.To {
			if peer.IPBlock != nil {
				if covered := l.coveredPods(peer.IPBlock); len(covered) > 0 {
					add(CheckIPBlockCoversPods, fmt.Sprintf("spec.egress[%d].to[%d].ipBlock", i, j), "%s", ipBlockMessage(peer.IPBlock, covered))
				}
			}
		}
	}
	if hasType(p, networkingv1.PolicyTypeEgress) {
		var noUDP, noTCP []*corev1.Pod
		for _, pod := range selected {
			udp, tcp := l.dnsAllowed(pod)
			if !udp {
				noUDP = append(noUDP, pod)
			}
			if !tcp {
				noTCP = append(noTCP, pod)
			}
		}
		field := "spec.egress"
		if len(p.Spec.Egress) == 0 {
			field = "spec.policyTypes"
		}
		switch {
		case len(noUDP) > 0 && len(noTCP) > 0:
			add(CheckNoDNSEgress, field, "isolates %s for egress and no egress rule of the policies selecting them allows DNS (UDP and TCP port 53)", podList(union(noUDP, noTCP)))
		case len(noUDP) > 0:
			add(CheckNoDNSEgress, field, "isolates %s for egress and no egress rule of the policies selecting them allows DNS over UDP (port 53)", podList(noUDP))
		case len(noTCP) > 0:
			add(CheckNoDNSEgress, field, "isolates %s for egress and no egress rule of the policies selecting them allows DNS over TCP (port 53), which resolvers fall back to for large answers", podList(noTCP))
		}
	}
	return out
}

func (l *linter) pod(p *corev1.Pod) []Finding {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	obj := cluster.ObjectName(p)
	var out []Finding
	if p.Spec.HostNetwork {
		if p.Spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
			policy := p.Spec.DNSPolicy
			if policy == "" {
				policy = corev1.DNSClusterFirst
			}
			out = append(out, Finding{Check: CheckHostNetworkDNS, Object: obj, Field: "spec.dnsPolicy",
				Message: fmt.Sprintf("hostNetwork pod with dnsPolicy %s resolves names with the node's DNS settings, not the cluster's; set dnsPolicy: ClusterFirstWithHostNet", policy)})
		}
		// hostNetwork pods get hostPort = containerPort by defaulting: it
		// says nothing about the pod beyond hostNetwork itself.
		return out
	}
	for i, c := range p.Spec.Containers {
		for j, port := range c.Ports {
			if port.HostPort == 0 {
				continue
			}
			out = append(out, Finding{Check: CheckHostPort, Object: obj, Field: fmt.Sprintf("spec.containers[%d].ports[%d].hostPort", i, j),
				Message: fmt.Sprintf("hostPort %d is in use: not recommended in production (it limits where the pod can be scheduled and exposes it on the node's address); use a NodePort Service instead", port.HostPort)})
		}
	}
	return out
}

func protocolOf(p networkingv1.NetworkPolicyPort) corev1.Protocol {
	if p.Protocol == nil {
		return corev1.ProtocolTCP
	}
	return *p.Protocol
}

// namedPortProblem says why no pod of dests declares port name for proto,
// or returns "" when one does.
func namedPortProblem(name string, proto corev1.Protocol, dests []*corev1.Pod, who string) string {
	var otherProtos []string
	for _, p := range dests {
		if p.Spec.HostNetwork {
			continue
		}
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name != name {
					continue
				}
				if cp.Protocol == proto {
					return ""
				}
				otherProtos = appendUnique(otherProtos, string(cp.Protocol))
			}
		}
	}
	if len(otherProtos) > 0 {
		return fmt.Sprintf("named port %q is declared by no %s for protocol %s (only for %s)", name, who, proto, strings.Join(otherProtos, ", "))
	}
	return fmt.Sprintf("named port %q is declared by no %s", name, who)
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// peerPods returns the live non-hostNetwork pods that peers select; every
// pod when there are no peers or a peer is an ipBlock (which may cover any
// pod address).
func (l *linter) peerPods(p *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer) []*corev1.Pod {
	if len(peers) == 0 {
		return l.live
	}
	key := &peers[0]
	if pods, ok := l.peerCache[key]; ok {
		return pods
	}
	pods := l.selectPeers(p, peers)
	l.peerCache[key] = pods
	return pods
}

func (l *linter) selectPeers(p *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer) []*corev1.Pod {
	var out []*corev1.Pod
	seen := map[*corev1.Pod]bool{}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			return l.live
		}
		for _, pod := range l.live {
			if !seen[pod] && l.peerSelects(p, peer, pod) {
				seen[pod] = true
				out = append(out, pod)
			}
		}
	}
	return out
}

func (l *linter) peerSelects(p *networkingv1.NetworkPolicy, peer networkingv1.NetworkPolicyPeer, pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	if peer.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil || !sel.Matches(l.nsLabels[pod.Namespace]) {
			return false
		}
	} else if pod.Namespace != p.Namespace {
		return false
	}
	if peer.PodSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			return false
		}
	}
	return true
}

// dnsAllowed reports whether some egress rule of the policies isolating
// pod for egress allows UDP and TCP port 53 to some peer.
func (l *linter) dnsAllowed(pod *corev1.Pod) (udp, tcp bool) {
	for _, pol := range l.egressPolicies[pod] {
		for _, r := range pol.Spec.Egress {
			dests := func() []*corev1.Pod { return l.peerPods(pol, r.To) }
			udp = udp || l.portAllowed(r.Ports, corev1.ProtocolUDP, 53, dests)
			tcp = tcp || l.portAllowed(r.Ports, corev1.ProtocolTCP, 53, dests)
		}
	}
	return udp, tcp
}

// portAllowed reports whether ports allow proto/num; dests, called only
// for named ports, gives the pods the rule's peers select.
func (l *linter) portAllowed(ports []networkingv1.NetworkPolicyPort, proto corev1.Protocol, num int32, dests func() []*corev1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if protocolOf(p) != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int:
			end := p.Port.IntVal
			if p.EndPort != nil {
				end = *p.EndPort
			}
			if p.Port.IntVal <= num && num <= end {
				return true
			}
		default:
			for _, d := range dests() {
				if d.Spec.HostNetwork {
					continue
				}
				for _, c := range d.Spec.Containers {
					for _, cp := range c.Ports {
						if cp.Name == p.Port.StrVal && cp.Protocol == proto && cp.ContainerPort == num {
							return true
						}
					}
				}
			}
		}
	}
	return false
}

// coveredPods returns the live non-hostNetwork pods with an address in b.
func (l *linter) coveredPods(b *networkingv1.IPBlock) []*corev1.Pod {
	cidr, err := cluster.ParseCIDR(b.CIDR)
	if err != nil {
		return nil
	}
	var except []netip.Prefix
	for _, e := range b.Except {
		if p, err := cluster.ParseCIDR(e); err == nil {
			except = append(except, p)
		}
	}
	var out []*corev1.Pod
	for _, pod := range l.live {
		if pod.Spec.HostNetwork {
			continue
		}
	addrs:
		for _, a := range cluster.PodAddrs(pod) {
			if !cidr.Contains(a) {
				continue
			}
			for _, e := range except {
				if e.Contains(a) {
					continue addrs
				}
			}
			out = append(out, pod)
			break
		}
	}
	return out
}

func ipBlockMessage(b *networkingv1.IPBlock, covered []*corev1.Pod) string {
	return fmt.Sprintf("cidr %s covers the addresses of %s: ipBlock is meant for addresses outside the cluster (pod IPs are ephemeral; select pods with podSelector/namespaceSelector)", b.CIDR, podList(covered))
}

func union(a, b []*corev1.Pod) []*corev1.Pod {
	seen := make(map[*corev1.Pod]bool, len(a)+len(b))
	var out []*corev1.Pod
	for _, list := range [][]*corev1.Pod{a, b} {
		for _, p := range list {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// podList renders "pod x/a", "2 pods (x/a, x/b)", "5 pods (x/a, x/b, x/c and 2 more)".
func podList(pods []*corev1.Pod) string {
	if len(pods) == 1 {
		return "pod " + pods[0].Namespace + "/" + pods[0].Name
	}
	names := make([]string, 0, maxListed)
	for i, p := range pods {
		if i == maxListed {
			break
		}
		names = append(names, p.Namespace+"/"+p.Name)
	}
	list := strings.Join(names, ", ")
	if len(pods) > maxListed {
		list += fmt.Sprintf(" and %d more", len(pods)-maxListed)
	}
	return fmt.Sprintf("%d pods (%s)", len(pods), list)
}
