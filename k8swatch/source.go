// Package k8swatch keeps a cluster model (package cluster) current from one
// of two sources: a snapshot of files, re-read when they change, or, for the
// node agent, client-go informers on the API server.
package k8swatch

import (
	"context"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// Source is where the agent's cluster state comes from. The snapshot source
// (files) and the informer source (API server) implement it.
type Source interface {
	// Run feeds the source until ctx is done. It returns an error only when
	// the source cannot start at all (a missing file, no kubeconfig).
	Run(ctx context.Context) error
	// Current returns the latest state; ok is false until the first full
	// read or sync has completed.
	Current() (c *cluster.Cluster, ok bool)
	// Changed receives a value (coalesced, never blocking the source) after
	// Current has changed.
	Changed() <-chan struct{}
}
