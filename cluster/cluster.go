// Package cluster holds the cluster model the policy compiler reads:
// Namespaces, Nodes, Pods, NetworkPolicies and ClusterNetworkPolicies as the
// API server serves them
// (API-defaulted and validated), the loader that reads them from kubectl
// YAML or JSON and scenario files, and an address index over them. The
// sources that keep a model current (files, informers) live in k8swatch.
package cluster

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Cluster is one consistent view of the objects the compiler reads. Objects
// are API-defaulted (see Default) and validated before they reach a Cluster.
// A Cluster is never mutated after it is published: sources build a new one
// on every change so that readers need no locks.
type Cluster struct {
	Namespaces []*corev1.Namespace
	Nodes      []*corev1.Node
	Pods       []*corev1.Pod
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are ClusterNetworkPolicies (network-policy-api), held
	// as v1beta1 whichever served version they were read from (v1alpha2 has
	// the same schema).
	ClusterPolicies []*cnpv1beta1.ClusterNetworkPolicy
	// Skipped lists the objects of files that are of kinds the model does
	// not read (Services, Deployments, AdminNetworkPolicies...), so that
	// callers can say so: a snapshot may hold them (a warning), a scenario
	// may not (an error). Empty for informer-built clusters.
	Skipped []FieldError
}
