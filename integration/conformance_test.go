package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
	"github.com/nfqpolicy/nfqpolicy/probe"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// TestIntegrationConformanceViaAPIServer runs the public reachability
// corpus through the agent's real input path: every scenario's objects are
// written to a kube-apiserver (which defaults and validates them), the
// informer source follows them (transform, coalescing, defaults, policy
// validation), and the probes are decided on what the source published.
// Every probe must get the verdict the scenario expects, as it does when the
// same objects are read from the file. The benchmark workload (1,000 pods)
// runs last, as a bulk load.
func TestIntegrationConformanceViaAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	files, err := filepath.Glob("../testdata/conformance/public/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	// The workload benchmark's 1,000 pods: a bulk load through the
	// informer, not only the corpus's handful of pods.
	files = append(files, "../testdata/bench/knp-workload.yaml")
	scenarios, err := scenario.LoadAll(files...)
	if err != nil {
		t.Fatal(err)
	}
	srv := apiserver.Start(t)
	loader := apiserver.NewLoader(srv.Client(t))
	src, err := k8swatch.NewInformerSource(srv.Config, k8swatch.InformerOptions{Quiet: 20 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, src)
	waitSynced(t, src, 15*time.Second)

	probes, start := 0, time.Now()
	for _, sc := range scenarios {
		if err := loader.Load(context.Background(), sc.Cluster); err != nil {
			t.Fatalf("%s: writing to the API server: %v", sc.File, err)
		}
		c := waitFollowed(t, loader, src, sc.File)
		via := *sc
		via.Cluster = c
		results, err := probe.Scenario(&via, probe.Options{})
		if err != nil {
			t.Fatalf("%s: %v", sc.File, err)
		}
		failed := 0
		for _, r := range results {
			if !r.Pass() {
				failed++
				if failed <= 5 {
					t.Errorf("%s:%d: %s -> %s %s/%d: got %s, want %s (%s)", r.File, r.Line, r.From, r.To, r.Protocol, r.Port, r.Got, r.Expect, r.Reason)
				}
			}
		}
		if failed > 5 {
			t.Errorf("%s: %d more mismatches", sc.File, failed-5)
		}
		probes += len(results)
	}
	t.Logf("%d scenarios, %d probes decided on API-server state in %v", len(scenarios), probes, time.Since(start).Round(time.Millisecond))
}

// waitFollowed waits until the source publishes exactly the loaded objects
// at exactly their last written versions.
func waitFollowed(t *testing.T, l *apiserver.Loader, src k8swatch.Source, what string) *cluster.Cluster {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, ok := src.Current()
		var diff string
		if ok {
			if diff = l.Diff(c); diff == "" {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the source did not follow the API server within 10s: %s", what, diff)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
