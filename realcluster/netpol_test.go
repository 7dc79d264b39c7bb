package realcluster

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/netpolsuite"
)

// TestRealClusterNetpol runs upstream's NetworkPolicy e2e specs
// (k8s.io/kubernetes v1.37.2 test/e2e/network/netpol) against the shared
// cluster with nfqpolicy enforcing from its DaemonSet. By default it runs
// netpolsuite.Representative, a third of the specs (make test);
// NFQPOLICY_NETPOL=all runs every spec (make e2e). SCTP connectivity specs
// are skipped when the kernel has no SCTP sockets, and say so. Every spec
// line goes to stdout so that make e2e can count them.
func TestRealClusterNetpol(t *testing.T) {
	c, _ := agentCluster(t)
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	binary, ginkgo, err := netpolsuite.Binaries(ctx, root, os.Stderr)
	if err != nil {
		if Required() {
			t.Fatalf("netpol e2e binaries: %v (NFQPOLICY_REQUIRE_CLUSTER=1)", err)
		}
		t.Skipf("SKIPPED, NO NETPOL E2E BINARY: %v", err)
	}
	focus := netpolsuite.Representative
	if os.Getenv("NFQPOLICY_NETPOL") == "all" {
		focus = ""
	}
	if !netpolsuite.SCTPAvailable() {
		t.Log("skipping [Feature:SCTPConnectivity]: " + netpolsuite.SCTPReason)
	}
	dir := filepath.Join(root, "bin", "netpol-e2e")
	res, err := netpolsuite.Run(ctx, netpolsuite.Options{
		Binary: binary, Ginkgo: ginkgo, Procs: 3,
		Kubeconfig: c.Kubeconfig, Dir: dir, Focus: focus, Out: os.Stdout,
	})
	if err != nil {
		t.Fatalf("netpol e2e: %v (log %s)", err, filepath.Join(dir, "e2e.log"))
	}
	passed, failed, _ := res.Counts()
	if failed > 0 {
		t.Errorf("upstream Netpol: %s (log %s, report %s)", res.Summary(), res.Log, res.Report)
	}
	if passed == 0 {
		t.Errorf("upstream Netpol: no spec passed (%s): the focus selected nothing or every spec was skipped", res.Summary())
	}
}
