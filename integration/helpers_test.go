package integration

import (
	"context"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

// runSource runs src until the test ends and checks that Run returned nil.
func runSource(t *testing.T, src k8swatch.Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("source Run: %v", err)
		}
	})
}

func waitSynced(t *testing.T, src k8swatch.Source, timeout time.Duration) *cluster.Cluster {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if c, ok := src.Current(); ok {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("source not synced within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
