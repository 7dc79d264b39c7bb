// Package bench holds the benchmarks of the verdict engine and the
// generators of the workloads they run on; `make bench` runs them and
// prints the figures against the targets.
package bench

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Workload is a generated cluster and flows over it.
type Workload struct {
	Cluster *cluster.Cluster
	Flows   []filter.Flow
}

// Generate builds a cluster shaped like the knp workload, scaled: every
// namespace holds pods/namespaces pods of apps with tiers and versions
// and policies/namespaces policies that select apps and allow traffic by
// pod selector, namespace and pod selector, named port, DNS to all
// namespaces, ipBlocks with except and port ranges. The flows mix
// pod-to-pod (70%), pod-to-external and external-to-pod traffic.
func Generate(namespaces, pods, policies, flows int, seed uint64) *Workload {
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	c := &cluster.Cluster{}
	teams := []string{"t-0", "t-1", "t-2", "t-3"}
	tiers := []string{"frontend", "backend", "db"}
	podsPerNS := pods / namespaces
	appsPerNS := max(podsPerNS/10, 1)
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	var podAddrs []netip.Addr
	for n := 0; n < namespaces; n++ {
		ns := fmt.Sprintf("ns-%d", n)
		env := "prod"
		if n%2 == 1 {
			env = "dev"
		}
		c.Namespaces = append(c.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{
			corev1.LabelMetadataName: ns, "env": env, "team": teams[n%len(teams)]}}})
		for i := 0; i < podsPerNS; i++ {
			idx := n*podsPerNS + i
			addr := netip.AddrFrom4([4]byte{10, byte(idx >> 16), byte(idx >> 8), byte(idx)})
			podAddrs = append(podAddrs, addr)
			c.Pods = append(c.Pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p-%d", i), Namespace: ns, Labels: map[string]string{
					"app": fmt.Sprintf("app-%d", i%appsPerNS), "tier": tiers[i%len(tiers)], "version": fmt.Sprintf("v%d", i%3)}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", idx%50), Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080, Protocol: tcp},
					{Name: "metrics", ContainerPort: 9090, Protocol: tcp},
					{Name: "dns", ContainerPort: 53, Protocol: udp}}}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: addr.String(), PodIPs: []corev1.PodIP{{IP: addr.String()}}},
			})
		}
		for i := 0; i < policies/namespaces; i++ {
			app := func() map[string]string { return map[string]string{"app": fmt.Sprintf("app-%d", rnd.IntN(appsPerNS))} }
			port := func(p int32, proto *corev1.Protocol) []networkingv1.NetworkPolicyPort {
				v := intstr.FromInt32(p)
				return []networkingv1.NetworkPolicyPort{{Port: &v, Protocol: proto}}
			}
			named := intstr.FromString("http")
			p30000, end := intstr.FromInt32(30000), int32(32767)
			np := &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np-%d", i), Namespace: ns},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: app()},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
					Ingress: []networkingv1.NetworkPolicyIngressRule{
						{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": tiers[rnd.IntN(3)]}}}}, Ports: port(8080, &tcp)},
						{From: []networkingv1.NetworkPolicyPeer{{
							NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": teams[rnd.IntN(len(teams))]}},
							PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{tiers[rnd.IntN(3)]}}}},
						}}, Ports: []networkingv1.NetworkPolicyPort{{Port: &named, Protocol: &tcp}}},
						{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}},
							Ports: []networkingv1.NetworkPolicyPort{{Port: &p30000, EndPort: &end, Protocol: &tcp}}},
					},
					Egress: []networkingv1.NetworkPolicyEgressRule{
						{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: app()}}}, Ports: port(8080, &tcp)},
						{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}, Ports: port(53, &udp)},
						{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8"}}}}, Ports: port(443, &tcp)},
					},
				},
			}
			c.Policies = append(c.Policies, np)
		}
	}
	w := &Workload{Cluster: c}
	ports := []uint16{8080, 9090, 53, 443, 80, 30001}
	for i := 0; i < flows; i++ {
		f := filter.Flow{SrcPort: uint16(32768 + i%28000), DstPort: ports[rnd.IntN(len(ports))], Proto: filter.ProtoTCP}
		if f.DstPort == 53 {
			f.Proto = filter.ProtoUDP
		}
		ext := netip.AddrFrom4([4]byte{192, 168, byte(rnd.IntN(4)), byte(1 + rnd.IntN(250))})
		switch r := rnd.IntN(100); {
		case r < 70:
			f.Src, f.Dst = podAddrs[rnd.IntN(len(podAddrs))], podAddrs[rnd.IntN(len(podAddrs))]
		case r < 85:
			f.Src, f.Dst = podAddrs[rnd.IntN(len(podAddrs))], ext
		default:
			f.Src, f.Dst = ext, podAddrs[rnd.IntN(len(podAddrs))]
		}
		w.Flows = append(w.Flows, f)
	}
	return w
}

// ClusterPolicies builds admin Admin tier and baseline Baseline tier
// ClusterNetworkPolicies over the label scheme Generate and the knp
// workload share (namespaces: kubernetes.io/metadata.name, env, team;
// pods: app, tier, version), shaped like an administrator's guardrails:
// Admin policies pass a team's own traffic to the namespace owners,
// accept monitoring scrapes, deny metadata-service and database access
// from dev; Baseline policies default-deny NodePort ranges and pass the
// rest. Every peer kind but nodes and domainNames is used (the workloads
// have no Node objects), with numbered, ranged and named ports.
func ClusterPolicies(admin, baseline, namespaces int, seed uint64) []*cnpv1beta1.ClusterNetworkPolicy {
	rnd := rand.New(rand.NewPCG(seed, seed^0x51ed270b27a3c9f1))
	teams := []string{"t-0", "t-1", "t-2", "t-3"}
	envs := []string{"prod", "dev"}
	tiers := []string{"frontend", "backend", "db"}
	ns := func(k, v string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	tcp := func(p int32) cnpv1beta1.ClusterNetworkPolicyProtocol {
		return cnpv1beta1.ClusterNetworkPolicyProtocol{TCP: &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1beta1.Port{Number: p}}}
	}
	tcpRange := func(lo, hi int32) cnpv1beta1.ClusterNetworkPolicyProtocol {
		return cnpv1beta1.ClusterNetworkPolicyProtocol{TCP: &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1beta1.Port{Range: &cnpv1beta1.PortRange{Start: lo, End: hi}}}}
	}
	var out []*cnpv1beta1.ClusterNetworkPolicy
	for i := 0; i < admin; i++ {
		team := teams[rnd.IntN(len(teams))]
		subject := cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: ns("team", team)}
		if i%2 == 1 {
			subject = cnpv1beta1.ClusterNetworkPolicySubject{Pods: &cnpv1beta1.NamespacedPod{
				NamespaceSelector: *ns("env", envs[rnd.IntN(2)]),
				PodSelector:       *ns("tier", tiers[rnd.IntN(3)]),
			}}
		}
		scraper := fmt.Sprintf("ns-%d", rnd.IntN(max(namespaces, 1)))
		out = append(out, &cnpv1beta1.ClusterNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("admin-%d", i)},
			Spec: cnpv1beta1.ClusterNetworkPolicySpec{
				Tier: cnpv1beta1.AdminTier, Priority: int32(10 + i*10%990), Subject: subject,
				Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{
					{Name: "scrape", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionAccept,
						From:      []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: ns(corev1.LabelMetadataName, scraper)}},
						Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "metrics"}}},
					{Name: "no-dev-db", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
						From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1beta1.NamespacedPod{
							NamespaceSelector: *ns("env", "dev"), PodSelector: *ns("tier", "db")}}},
						Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{tcp(5432), tcpRange(6379, 6380)}},
					{Name: "own-team", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionPass,
						From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: ns("team", team)}}},
				},
				Egress: []cnpv1beta1.ClusterNetworkPolicyEgressRule{
					{Name: "no-metadata", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
						To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"169.254.169.254/32", "fd00:ec2::254/128"}}}},
					{Name: "partners", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionAccept,
						To:        []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"203.0.113.0/24"}}},
						Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{tcp(443)}},
					{Name: "in-cluster", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionPass,
						To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Namespaces: &metav1.LabelSelector{}}}},
				},
			},
		})
	}
	for i := 0; i < baseline; i++ {
		env := envs[i%2]
		out = append(out, &cnpv1beta1.ClusterNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("baseline-%d", i)},
			Spec: cnpv1beta1.ClusterNetworkPolicySpec{
				Tier: cnpv1beta1.BaselineTier, Priority: int32(10 + i*10%990),
				Subject: cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: ns("env", env)},
				Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{
					{Name: "same-env", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionPass,
						From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: ns("env", env)}}},
					{Name: "no-nodeports", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
						From:      []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}},
						Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{tcpRange(30000, 32767)}},
				},
				Egress: []cnpv1beta1.ClusterNetworkPolicyEgressRule{
					{Name: "no-ssh-out", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
						To:        []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"192.168.0.0/16"}}},
						Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{tcp(22)}},
					{Name: "rest", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionPass,
						To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"0.0.0.0/0", "::/0"}}}},
				},
			},
		})
	}
	return out
}
