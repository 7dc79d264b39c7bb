package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/lint"
)

func lintUsage(w io.Writer, fs *flag.FlagSet, kf *kubeFlags) {
	kubectlUsage(w, fs, kf, "lint [--snapshot FILE...] [-n NAMESPACE] [-o text|json] [options]", `
Warns about NetworkPolicies and pods the Kubernetes documentation warns
about. Reads the live cluster (kubectl's flags: --kubeconfig, --context)
unless --snapshot files are given; -n keeps the findings about one
namespace (the whole cluster is still read: policies of other namespaces
select its pods' peers). Exit status: 0 no findings, 1 findings, 2 bad
input or an API server error.`, `
# Lint the cluster of the current kubeconfig context
nfqpolicy lint

# Only what concerns namespace shop, from another context
nfqpolicy lint --context prod -n shop

# Lint snapshot files instead
nfqpolicy lint --snapshot objects.yaml`)
}

// lintLoad reads the snapshot files, or the live cluster when none is
// given. Kubeconfig flags with snapshot files are a contradiction.
func lintLoad(ctx context.Context, kf *kubeFlags, snapshots []string) (*cluster.Cluster, error) {
	if len(snapshots) > 0 {
		if kf.given() && !kf.namespaceGiven() {
			return nil, errors.New("--snapshot reads files: kubeconfig flags (--kubeconfig, --context, ...) cannot be used with it")
		}
		return cluster.LoadFiles(snapshots...)
	}
	return kf.listCluster(ctx)
}

// lintScope keeps the findings about objects in -n's namespace (all of
// them without -n).
func lintScope(kf *kubeFlags, findings []lint.Finding) []lint.Finding {
	if !kf.namespaceGiven() {
		return findings
	}
	ns := kf.namespace()
	out := findings[:0]
	for _, f := range findings {
		_, name, _ := strings.Cut(f.Object, " ")
		if objNS, _, ok := strings.Cut(name, "/"); ok && objNS == ns {
			out = append(out, f)
		}
	}
	return out
}

func matrixUsage(w io.Writer, fs *flag.FlagSet, kf *kubeFlags) {
	kubectlUsage(w, fs, kf, "matrix [--snapshot FILE...] [-n NAMESPACE] [--port 80/TCP...] [--family 4|6] [-o table|json] [options]", `
Prints the pod-to-pod truth table: '.' allowed, 'X' denied. The cluster is
read from the API server (kubectl's flags) unless --snapshot files are
given; -n limits the table to one namespace's pods (policies everywhere
still apply).`, `
# Namespace shop of the current context, on two ports
nfqpolicy matrix -n shop --port 80/TCP --port 6379/TCP

# A snapshot file
nfqpolicy matrix --snapshot objects.yaml --port 6379/TCP`)
}
