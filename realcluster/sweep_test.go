package realcluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRealClusterSweepAfterKill: a harness killed with SIGKILL (no
// teardown at all) leaves a running cluster behind; the next Sweep removes
// every namespace, process, mount, cgroup and folder of it.
func TestRealClusterSweepAfterKill(t *testing.T) {
	if os.Getenv("REALCLUSTER_HELPER") == "1" {
		helperCluster()
		return
	}
	if testing.Short() {
		t.Skip("SKIPPED in -short: brings up a real cluster")
	}
	if err := CanRun(); err != nil {
		if Required() {
			t.Fatalf("realcluster: %v (NFQPOLICY_REQUIRE_CLUSTER=1)", err)
		}
		t.Skipf("SKIPPED, NO REAL CLUSTER: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRealClusterSweepAfterKill$", "-test.v")
	cmd.Env = append(os.Environ(), "REALCLUSTER_HELPER=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := ""
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			name = n
			break
		}
	}
	if name == "" {
		_ = cmd.Wait()
		t.Fatal("the helper's cluster did not come up")
	}
	mine := func() []string {
		var out []string
		for _, l := range Leftovers() {
			if strings.Contains(l, name) {
				out = append(out, l)
			}
		}
		return out
	}
	if len(mine()) == 0 {
		t.Fatalf("cluster %s running but Leftovers sees nothing of it", name)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	// Pods and shims outlive the harness (only its direct children got
	// Pdeathsig): the leftovers are real until the sweep.
	if len(cgroupPids(cgroupRootOf(name, nodeNames[0]))) == 0 {
		t.Logf("note: no pod processes left in %s after the kill", cgroupRootOf(name, nodeNames[0]))
	}
	swept, err := Sweep()
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	found := false
	for _, s := range swept {
		found = found || s == name
	}
	if !found {
		t.Fatalf("sweep cleaned %v, not %s", swept, name)
	}
	if left := mine(); len(left) > 0 {
		t.Fatalf("after the sweep, left behind: %v", left)
	}
}

// helperCluster brings a cluster up with agnhost pods on both nodes,
// reports its name and waits to be killed.
func helperCluster() {
	images, _ := ImageTarballs()
	ctx := context.Background()
	c, err := Up(ctx, Options{Images: images})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	for i, n := range nodeNames {
		if err := c.Apply(ctx, agnhostPod("default", fmt.Sprintf("p%d", i), n, map[string]string{"app": "p"}, "pause")); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
	}
	if _, err := c.Kubectl(ctx, "wait", "--for=condition=Ready", "pod/p0", "pod/p1", "--timeout=120s"); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	fmt.Println("READY " + c.Name)
	select {}
}
