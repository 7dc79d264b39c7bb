// Command netpol-e2e runs upstream's NetworkPolicy e2e tests (the Netpol
// specs of Kubernetes v1.37.2) against a cluster and prints every spec with
// PASS/FAIL/SKIP and a final "N passed, M failed, K skipped" line. It exits
// 1 when a spec failed, 2 when the suite could not run.
//
//	go run ./tools/netpol-e2e -kubeconfig FILE [-dir DIR] [-procs N] [-focus RE | -representative]
//
// The test binary and the ginkgo CLI come from tools/kubernetes/build.sh
// (built on first use, then cached). Every node must have
// registry.k8s.io/e2e-test-images/agnhost:2.66.1 imported.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nfqpolicy/nfqpolicy/internal/netpolsuite"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "admin kubeconfig of the cluster")
	dir := flag.String("dir", "netpol-e2e", "folder for report.json and e2e.log")
	procs := flag.Int("procs", 4, "parallel ginkgo processes (1: the test binary alone)")
	focus := flag.String("focus", "", "regexp narrowing the Netpol specs")
	representative := flag.Bool("representative", false, "run netpolsuite.Representative, a third of the specs (overrides -focus)")
	flag.Parse()
	if *representative {
		*focus = netpolsuite.Representative
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	binary, ginkgo, err := netpolsuite.Binaries(ctx, ".", os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "netpol-e2e:", err)
		os.Exit(2)
	}
	if !netpolsuite.SCTPAvailable() {
		fmt.Println("skipping [Feature:SCTPConnectivity]: " + netpolsuite.SCTPReason)
	}
	res, err := netpolsuite.Run(ctx, netpolsuite.Options{
		Binary: binary, Ginkgo: ginkgo, Procs: *procs,
		Kubeconfig: *kubeconfig, Dir: *dir, Focus: *focus, Out: os.Stdout,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "netpol-e2e:", err)
		os.Exit(2)
	}
	if _, failed, _ := res.Counts(); failed > 0 {
		fmt.Fprintf(os.Stderr, "netpol-e2e: details in %s and %s\n", res.Log, res.Report)
		os.Exit(1)
	}
}
