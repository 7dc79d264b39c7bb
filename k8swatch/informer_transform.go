package k8swatch

import (
	"maps"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AnnotationPrefix marks the only annotations the informer source keeps;
// every other annotation (last-applied-configuration above all) is dropped
// from the cache.
const AnnotationPrefix = "nfqpolicy.io/"

// stripObject is the informers' transform: it keeps only what the compiler
// reads, which on a busy node cuts the cache to a fraction of the objects'
// size and makes status churn we ignore (conditions, container states,
// node heartbeats) compare equal so it triggers no rebuild. It builds fresh
// objects, so it is idempotent as client-go requires. Unknown types (the
// DeletedFinalStateUnknown tombstone) pass through.
func stripObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return stripPod(o), nil
	case *corev1.Node:
		return stripNode(o), nil
	case *corev1.Namespace:
		return stripNamespace(o), nil
	case *networkingv1.NetworkPolicy:
		return stripPolicy(o), nil
	}
	return obj, nil
}

func stripMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Generation:        m.Generation,
		CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp,
		Labels:            m.Labels,
	}
	for k, v := range m.Annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}

func stripPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: stripMeta(&p.ObjectMeta),
		Spec: corev1.PodSpec{
			NodeName:    p.Spec.NodeName,
			HostNetwork: p.Spec.HostNetwork,
			DNSPolicy:   p.Spec.DNSPolicy,
		},
		Status: corev1.PodStatus{
			Phase:   p.Status.Phase,
			PodIP:   p.Status.PodIP,
			PodIPs:  p.Status.PodIPs,
			HostIP:  p.Status.HostIP,
			HostIPs: p.Status.HostIPs,
		},
	}
	if len(p.Spec.Containers) > 0 {
		out.Spec.Containers = make([]corev1.Container, len(p.Spec.Containers))
		for i, c := range p.Spec.Containers {
			out.Spec.Containers[i] = corev1.Container{Name: c.Name, Ports: c.Ports}
		}
	}
	defaultInformerPod(out)
	return out
}

// stripNode keeps a node's addresses and its pod CIDRs: the compiler
// tells a pod it has not heard of yet (an address in a pod CIDR) from an
// external address by them, and the agent diverts its node's ranges.
func stripNode(n *corev1.Node) *corev1.Node {
	return &corev1.Node{
		TypeMeta:   n.TypeMeta,
		ObjectMeta: stripMeta(&n.ObjectMeta),
		Spec:       corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
		Status:     corev1.NodeStatus{Addresses: n.Status.Addresses},
	}
}

func stripNamespace(ns *corev1.Namespace) *corev1.Namespace {
	out := &corev1.Namespace{
		TypeMeta:   ns.TypeMeta,
		ObjectMeta: stripMeta(&ns.ObjectMeta),
	}
	// Defaulting may add a label: give it a map of its own.
	out.Labels = maps.Clone(out.Labels)
	defaultInformerNamespace(out)
	return out
}

func stripPolicy(p *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	out := &networkingv1.NetworkPolicy{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: stripMeta(&p.ObjectMeta),
		Spec:       *p.Spec.DeepCopy(), // defaulting writes into the port lists
	}
	defaultInformerPolicy(out)
	return out
}

// sameStripped reports whether an update changed nothing the compiler
// reads. ResourceVersion changes on every write, so it is ignored.
func sameStripped(oldObj, newObj any) bool {
	switch o := oldObj.(type) {
	case *corev1.Pod:
		n, ok := newObj.(*corev1.Pod)
		return ok && equalIgnoringRV(&o.ObjectMeta, &n.ObjectMeta) &&
			equality.Semantic.DeepEqual(o.Spec, n.Spec) && equality.Semantic.DeepEqual(o.Status, n.Status)
	case *corev1.Node:
		n, ok := newObj.(*corev1.Node)
		return ok && equalIgnoringRV(&o.ObjectMeta, &n.ObjectMeta) &&
			equality.Semantic.DeepEqual(o.Status.Addresses, n.Status.Addresses)
	case *corev1.Namespace:
		n, ok := newObj.(*corev1.Namespace)
		return ok && equalIgnoringRV(&o.ObjectMeta, &n.ObjectMeta)
	case *networkingv1.NetworkPolicy:
		n, ok := newObj.(*networkingv1.NetworkPolicy)
		return ok && equalIgnoringRV(&o.ObjectMeta, &n.ObjectMeta) && equality.Semantic.DeepEqual(o.Spec, n.Spec)
	}
	return false
}

func equalIgnoringRV(a, b *metav1.ObjectMeta) bool {
	x, y := *a, *b
	x.ResourceVersion, y.ResourceVersion = "", ""
	// Generation moves with spec changes, which are compared separately;
	// kept here anyway because comparing it is free.
	return equality.Semantic.DeepEqual(x, y)
}
