// Package k8swatch holds the cluster state the policy compiler reads:
// Namespaces, Nodes, Pods and NetworkPolicies, as the API server serves them.
// Two sources feed it: a snapshot read from files (kubectl YAML or JSON and
// reachability scenario files) and, for the node agent, client-go informers.
package k8swatch

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
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
}

// Source is where the agent's cluster state comes from. The snapshot source
// (files) and the informer source (API server) implement it.
type Source interface {
	// Run feeds the source until ctx is done. It returns an error only when
	// the source cannot start at all (a missing file, no kubeconfig).
	Run(ctx context.Context) error
	// Current returns the latest state; ok is false until the first full
	// read or sync has completed.
	Current() (c *Cluster, ok bool)
	// Changed receives a value (coalesced, never blocking the source) after
	// Current has changed.
	Changed() <-chan struct{}
}
