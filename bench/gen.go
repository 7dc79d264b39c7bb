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
