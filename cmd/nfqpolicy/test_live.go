package main

import (
	"context"
	"errors"
	"flag"
	"io"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

func testUsage(w io.Writer, fs *flag.FlagSet, kf *kubeFlags) {
	kubectlUsage(w, fs, kf, "test [--json] [--staged] PATH... [options]", `
Runs reachability scenario files (or directories of them) through the
agent's decode, cache and verdict path. Exit status: 0 all pass, 1 a
mismatch, 2 bad input.

With kubectl's flags (--kubeconfig, --context, ...) the scenarios are
about the live cluster: each scenario's objects are applied over the
cluster read from the API server (created, or replacing the object of the
same kind and name) and its probes name the cluster's pods. With --staged,
audit-mode (staged) policies are enforced too: check a rollout against the
real pods before promoting it.`, `
# Would promoting the staged policies keep these flows working?
nfqpolicy test --kubeconfig ~/.kube/config --staged probes.yaml

# Scenario files describing their own cluster
nfqpolicy test testdata/conformance/public`)
}

// loadScenarios reads scenario files, over the live cluster when a
// kubeconfig flag is given; problems are printed.
func loadScenarios(ctx context.Context, kf *kubeFlags, paths []string, stderr io.Writer) ([]*scenario.Scenario, error) {
	var base *cluster.Cluster
	if kf.given() {
		c, err := kf.listCluster(ctx)
		var ve *cluster.ValidationError
		if err != nil && !errors.As(err, &ve) {
			printLiveError(stderr, err)
			return nil, err
		}
		if err != nil {
			printLoadError(stderr, err) // skipped as the agent skips them
		}
		base = c
	}
	scs, err := scenario.LoadAllOn(base, paths...)
	if err != nil {
		printLoadError(stderr, err)
		return nil, err
	}
	return scs, nil
}
