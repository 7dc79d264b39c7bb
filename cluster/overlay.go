package cluster

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Ref names one object of the model: its kind (as the loader spells it:
// Namespace, Node, Pod, NetworkPolicy, ClusterNetworkPolicy), namespace
// ("" for cluster-scoped kinds) and name.
type Ref struct {
	Kind, Namespace, Name string
}

func (r Ref) String() string {
	if r.Namespace == "" {
		return r.Kind + "/" + r.Name
	}
	return r.Kind + "/" + r.Namespace + "/" + r.Name
}

// refKinds maps the names kubectl accepts for a kind (singular, plural,
// short, any case) to the kind, and says whether it is namespaced.
var refKinds = map[string]struct {
	kind       string
	namespaced bool
}{
	"networkpolicy": {kindNetworkPolicy, true}, "networkpolicies": {kindNetworkPolicy, true}, "netpol": {kindNetworkPolicy, true},
	"pod": {kindPod, true}, "pods": {kindPod, true}, "po": {kindPod, true},
	"namespace": {kindNamespace, false}, "namespaces": {kindNamespace, false}, "ns": {kindNamespace, false},
	"node": {kindNode, false}, "nodes": {kindNode, false}, "no": {kindNode, false},
	"clusternetworkpolicy": {"ClusterNetworkPolicy", false}, "clusternetworkpolicies": {"ClusterNetworkPolicy", false}, "cnp": {"ClusterNetworkPolicy", false},
}

// ParseRef reads KIND/NAMESPACE/NAME (namespaced kinds) or KIND/NAME
// (Namespace, Node, ClusterNetworkPolicy), with kubectl's kind names:
// networkpolicy/shop/deny-all, netpol/shop/deny-all, cnp/baseline.
func ParseRef(s string) (Ref, error) {
	parts := strings.Split(s, "/")
	k, ok := refKinds[strings.ToLower(parts[0])]
	if !ok {
		return Ref{}, fmt.Errorf("%q: unknown kind %q (want NetworkPolicy, ClusterNetworkPolicy, Pod, Namespace or Node)", s, parts[0])
	}
	want := 2
	form := "KIND/NAME"
	if k.namespaced {
		want, form = 3, "KIND/NAMESPACE/NAME"
	}
	if len(parts) != want || slices.Contains(parts, "") {
		return Ref{}, fmt.Errorf("%q: want %s for a %s", s, form, k.kind)
	}
	r := Ref{Kind: k.kind, Name: parts[want-1]}
	if k.namespaced {
		r.Namespace = parts[1]
	}
	return r, nil
}

// Overlay returns base with every object of add created, or replacing the
// object of the same kind, namespace and name, and the objects del names
// removed. base and add are not modified (the result shares their
// objects). Deleting an object base does not hold is an error, so that a
// typo is not taken for a change that does nothing. A Namespace of add
// with nothing but its name label, which is what the loader adds for
// objects whose namespace no document declares, does not replace base's
// (whose labels policies select on).
func Overlay(base, add *Cluster, del []Ref) (*Cluster, error) {
	if add == nil {
		add = &Cluster{}
	}
	inBase := make(map[string]bool, len(base.Namespaces))
	for _, ns := range base.Namespaces {
		inBase[ns.Name] = true
	}
	addNS := make([]*corev1.Namespace, 0, len(add.Namespaces))
	for _, ns := range add.Namespaces {
		bare := len(ns.Labels) == 1 && ns.Labels[corev1.LabelMetadataName] == ns.Name && len(ns.Annotations) == 0
		if !(bare && inBase[ns.Name]) {
			addNS = append(addNS, ns)
		}
	}
	gone := make(map[Ref]bool, len(del))
	for _, r := range del {
		gone[r] = false
	}
	out := &Cluster{
		Namespaces:      overlayKind(kindNamespace, base.Namespaces, addNS, gone),
		Nodes:           overlayKind(kindNode, base.Nodes, add.Nodes, gone),
		Pods:            overlayKind(kindPod, base.Pods, add.Pods, gone),
		Policies:        overlayKind(kindNetworkPolicy, base.Policies, add.Policies, gone),
		ClusterPolicies: overlayKind("ClusterNetworkPolicy", base.ClusterPolicies, add.ClusterPolicies, gone),
	}
	for _, r := range del {
		if !gone[r] {
			return nil, fmt.Errorf("delete %s: no such object in the cluster", r)
		}
	}
	return out, nil
}

var (
	_ metav1.Object = (*corev1.Pod)(nil)
	_ metav1.Object = (*networkingv1.NetworkPolicy)(nil)
	_ metav1.Object = (*cnpv1beta1.ClusterNetworkPolicy)(nil)
)

// overlayKind merges one kind: base minus deleted and replaced objects,
// plus add, sorted by namespace and name as the sources publish them.
func overlayKind[T metav1.Object](kind string, base, add []T, gone map[Ref]bool) []T {
	ref := func(o T) Ref { return Ref{Kind: kind, Namespace: o.GetNamespace(), Name: o.GetName()} }
	replaced := make(map[Ref]bool, len(add))
	for _, o := range add {
		replaced[ref(o)] = true
	}
	out := make([]T, 0, len(base)+len(add))
	for _, o := range base {
		r := ref(o)
		if _, del := gone[r]; del {
			gone[r] = true
			continue
		}
		if !replaced[r] {
			out = append(out, o)
		}
	}
	out = append(out, add...)
	slices.SortStableFunc(out, func(a, b T) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	return out
}
