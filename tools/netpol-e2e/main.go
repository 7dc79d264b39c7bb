// Command netpol-e2e runs upstream's NetworkPolicy e2e tests (the Netpol
// specs of Kubernetes v1.37.2) against a cluster and prints every spec with
// PASS/FAIL/SKIP and a final "N passed, M failed, K skipped" line. It exits
// 1 when a spec failed, 2 when the suite could not run.
//
//	go run ./tools/netpol-e2e -kubeconfig FILE [-dir DIR] [-procs N] [-focus RE]
//
// The test binary and the ginkgo CLI come from tools/kubernetes/build.sh
// (built on first use, then cached). Every node must have
// registry.k8s.io/e2e-test-images/agnhost:2.66.1 imported.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nfqpolicy/nfqpolicy/internal/netpolsuite"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "admin kubeconfig of the cluster")
	dir := flag.String("dir", "netpol-e2e", "folder for report.json and e2e.log")
	procs := flag.Int("procs", 4, "parallel ginkgo processes (1: the test binary alone)")
	focus := flag.String("focus", "", "regexp narrowing the Netpol specs")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bins, err := build(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "netpol-e2e:", err)
		os.Exit(2)
	}
	if !netpolsuite.SCTPAvailable() {
		fmt.Println("skipping [Feature:SCTPConnectivity]: " + netpolsuite.SCTPReason)
	}
	res, err := netpolsuite.Run(ctx, netpolsuite.Options{
		Binary: bins["e2e-netpol"], Ginkgo: bins["ginkgo"], Procs: *procs,
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

// build runs tools/kubernetes/build.sh for the test binary and ginkgo and
// returns NAME -> path.
func build(ctx context.Context) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, "sh", "tools/kubernetes/build.sh", "e2e-netpol", "ginkgo")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tools/kubernetes/build.sh (run from the repository root): %w", err)
	}
	bins := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			bins[k] = v
		}
	}
	if bins["e2e-netpol"] == "" || bins["ginkgo"] == "" {
		return nil, errors.New("tools/kubernetes/build.sh printed no e2e-netpol or ginkgo path")
	}
	return bins, nil
}
