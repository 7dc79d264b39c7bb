package k8swatch

import (
	"github.com/nfqpolicy/nfqpolicy/cluster"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// The informer source applies the file loader's defaults and policy
// validation so that both sources hand the compiler the same objects.
// Objects from the API server are already defaulted and validated, so this
// mostly guards against servers that validate less than we rely on (older
// versions, or a server with validation bugs).

func defaultInformerPod(p *corev1.Pod)              { cluster.DefaultPod(p) }
func defaultInformerNamespace(ns *corev1.Namespace) { cluster.DefaultNamespace(ns) }
func defaultInformerPolicy(p *networkingv1.NetworkPolicy) {
	cluster.DefaultPolicy(p)
}

func validateInformerPolicy(p *networkingv1.NetworkPolicy) error {
	return cluster.AsError(cluster.ValidatePolicy(p))
}
