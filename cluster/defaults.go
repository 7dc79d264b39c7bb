package cluster

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The Default functions apply what the API server (and kubectl, for the
// namespace) fills in before an object is stored, so that snapshot files
// written by hand mean what they would mean in a cluster. They only fill in
// absent values and are idempotent: objects from an informer, already
// defaulted, are left as they are.

// DefaultNamespace adds the kubernetes.io/metadata.name label the API
// server puts on every namespace.
func DefaultNamespace(ns *corev1.Namespace) {
	if ns.Name == "" {
		return
	}
	if ns.Labels == nil {
		ns.Labels = make(map[string]string, 1)
	}
	if _, ok := ns.Labels[corev1.LabelMetadataName]; !ok {
		ns.Labels[corev1.LabelMetadataName] = ns.Name
	}
}

// DefaultPod puts a pod without namespace in "default", as kubectl does,
// gives container ports without protocol TCP, dnsPolicy ClusterFirst when
// unset, and, for hostNetwork pods, hostPort = containerPort (the ports
// are the node's).
func DefaultPod(p *corev1.Pod) {
	if p.Namespace == "" {
		p.Namespace = metav1.NamespaceDefault
	}
	if p.Spec.DNSPolicy == "" {
		p.Spec.DNSPolicy = corev1.DNSClusterFirst
	}
	defaultContainerPorts(p.Spec.InitContainers, p.Spec.HostNetwork)
	defaultContainerPorts(p.Spec.Containers, p.Spec.HostNetwork)
}

func defaultContainerPorts(cs []corev1.Container, hostNetwork bool) {
	for i := range cs {
		for j := range cs[i].Ports {
			port := &cs[i].Ports[j]
			if port.Protocol == "" {
				port.Protocol = corev1.ProtocolTCP
			}
			if hostNetwork && port.HostPort == 0 {
				port.HostPort = port.ContainerPort
			}
		}
	}
}

// DefaultPolicy puts a policy without namespace in "default", gives ports
// without protocol TCP, and fills absent policyTypes: Ingress always, plus
// Egress when the policy has egress rules.
func DefaultPolicy(p *networkingv1.NetworkPolicy) {
	if p.Namespace == "" {
		p.Namespace = metav1.NamespaceDefault
	}
	for i := range p.Spec.Ingress {
		defaultPolicyPorts(p.Spec.Ingress[i].Ports)
	}
	for i := range p.Spec.Egress {
		defaultPolicyPorts(p.Spec.Egress[i].Ports)
	}
	if len(p.Spec.PolicyTypes) == 0 {
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(p.Spec.Egress) > 0 {
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
}

func defaultPolicyPorts(ports []networkingv1.NetworkPolicyPort) {
	for i := range ports {
		if ports[i].Protocol == nil {
			tcp := corev1.ProtocolTCP
			ports[i].Protocol = &tcp
		}
	}
}
