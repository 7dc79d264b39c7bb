package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// agentSet is the nfqpolicy agents of one topology, one per node namespace.
type agentSet struct {
	dir string // holds the snapshot file
}

func startAgents(ctx context.Context, bin, prefix string, t *topology, pr *prober, first *Scenario, log zerolog.Logger) (*agentSet, error) {
	return nil, fmt.Errorf("agent integration: not written yet")
}

func (a *agentSet) load(ctx context.Context, s *Scenario) error { return nil }
func (a *agentSet) alive() error                                { return nil }
func (a *agentSet) stop() error                                 { return nil }

// writeSnapshot writes the scenario's objects as one kind: List, atomically
// (a rename), so that an agent polling the file never reads half of it.
func writeSnapshot(path string, s *Scenario) error {
	var items []any
	c := s.Cluster
	for _, ns := range c.Namespaces {
		o := ns.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}
		items = append(items, o)
	}
	for _, n := range c.Nodes {
		o := n.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}
		items = append(items, o)
	}
	for _, p := range c.Pods {
		o := p.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
		items = append(items, o)
	}
	for _, p := range c.Policies {
		o := p.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
		items = append(items, o)
	}
	data, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode snapshot of %s: %w", s.Name, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".snapshot-*.json")
	if err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}
