package realcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/cnpsuite"
)

// TestRealClusterCNPConformance runs network-policy-api v0.3.0's
// conformance suite (internal/cnpsuite) on the two-node cluster with
// nfqpolicy enforcing: the experimental-channel CRD installed, the standard
// tests plus the named-port and nodes-peer ones, the SCTP-only tests
// skipped. It takes tens of minutes, so it runs only with
// NFQPOLICY_CNP_CONFORMANCE=1; with NFQPOLICY_CNP_DOCS=1 it also writes
// docs/conformance-cnp.md and the suite's raw report
// docs/conformance-cnp-report.yaml.
func TestRealClusterCNPConformance(t *testing.T) {
	if os.Getenv("NFQPOLICY_CNP_CONFORMANCE") != "1" {
		t.Skip("SKIPPED: the network-policy-api conformance suite takes tens of minutes; set NFQPOLICY_CNP_CONFORMANCE=1")
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bin, err := cnpsuite.Binary(ctx, root, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	crd, err := cnpsuite.CRDFile(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	c, dep := agentCluster(t)
	if out, err := c.Kubectl(ctx, "apply", "--server-side", "-f", crd); err != nil {
		t.Fatalf("installing CRD %s: %v: %s", crd, err, out)
	}
	t.Cleanup(func() {
		// Later tests share the cluster: leave it without the CRD, as found.
		if out, err := c.Kubectl(context.Background(), "delete", "--wait=true", "--timeout=60s", "-f", crd); err != nil {
			t.Errorf("removing CRD %s: %v: %s", crd, err, out)
		}
	})
	if out, err := c.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s", "crd/clusternetworkpolicies.policy.networking.k8s.io"); err != nil {
		t.Fatalf("CRD not established: %v: %s", err, out)
	}
	// The suite's first test creates its policy seconds after this: every
	// agent must be enforcing ClusterNetworkPolicies by then, which each
	// says with nfqpolicy_cluster_network_policies_watched.
	crdAt := time.Now()
	if err := waitCNPWatched(ctx, c, time.Minute); err != nil {
		t.Fatal(err)
	}
	watched := time.Since(crdAt)
	t.Logf("every agent watches ClusterNetworkPolicies %v after the CRD was established", watched.Round(time.Millisecond))
	dir := os.Getenv("NFQPOLICY_CNP_DIR") // keeps the suite's log and report, the agents' logs and flow logs
	if dir == "" {
		dir = t.TempDir()
	}
	defer saveAgentEvidence(t, c, dep, dir)
	// The nodes share this kernel: without SCTP sockets, the SCTP probes
	// of the tests that mix protocols are not run (and reported so);
	// their TCP and UDP probes are.
	var skipSCTP, noSCTP string
	if err := cnpsuite.SCTPSockets(); err != nil {
		noSCTP = err.Error()
		skipSCTP = fmt.Sprintf("%s (%s)", cnpsuite.SCTPReason, noSCTP)
	}
	var lines strings.Builder
	start := time.Now()
	res, err := cnpsuite.Run(ctx, cnpsuite.Options{
		Binary:         bin,
		Kubeconfig:     c.Kubeconfig,
		Dir:            dir,
		SkipSCTPProbes: skipSCTP,
		Run:            os.Getenv("NFQPOLICY_CNP_RUN"), // a subset of the tests, for diagnosis
		Out:            writerFunc(func(p []byte) { os.Stdout.Write(p); lines.Write(p) }),
	})
	if err != nil {
		if res != nil {
			if log, rerr := os.ReadFile(res.Log); rerr == nil {
				t.Logf("suite output:\n%s", log)
			}
		}
		t.Fatal(err)
	}
	wall := time.Since(start).Round(time.Second)
	t.Logf("%s in %v", res.Summary(), wall)
	if os.Getenv("NFQPOLICY_CNP_DOCS") == "1" {
		if err := writeCNPDocs(root, res, lines.String(), time.Now(), wall, watched, noSCTP); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range res.Tests {
		if tc.Status == cnpsuite.Failed {
			t.Errorf("FAIL %s: %s", tc.Name, tc.Reason)
		}
	}
}

// waitCNPWatched waits until the agent on every node reports
// nfqpolicy_cluster_network_policies_watched 1 on its metrics endpoint
// (the health address in deploy/configmap.yaml, on the node's loopback).
func waitCNPWatched(ctx context.Context, c *Cluster, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, n := range c.Nodes {
		for {
			out, err := c.InNode(ctx, n, "curl", "-sf", "--max-time", "5", "http://127.0.0.1:9901/metrics")
			if err == nil && strings.Contains(out, "\nnfqpolicy_cluster_network_policies_watched 1\n") {
				break
			}
			if time.Now().After(deadline) {
				if err == nil {
					err = fmt.Errorf("its metrics say %q", grepLines(out, "nfqpolicy_cluster_network_policies_watched"))
				}
				return fmt.Errorf("the agent on %s does not watch ClusterNetworkPolicies %v after the CRD was installed: %w", n.Name, timeout, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

func grepLines(s, substr string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, substr) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "; ")
}

// saveAgentEvidence copies each agent's log and flow log into dir, where
// the suite's log (time-stamped) lets a failure be read against them.
func saveAgentEvidence(t *testing.T, c *Cluster, dep *Deployment, dir string) {
	ctx := context.Background()
	for _, n := range c.Nodes {
		pod, err := dep.AgentPod(ctx, n.Name)
		if err != nil {
			t.Logf("agent evidence: %v", err)
			continue
		}
		logs, err := c.Kubectl(ctx, "logs", "-n", AgentNamespace, pod)
		if err != nil {
			t.Logf("agent evidence: logs of %s: %v", pod, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "agent-"+n.Name+".log"), []byte(logs), 0o644); err != nil {
			t.Logf("agent evidence: %v", err)
		}
		if flows, err := os.ReadFile(evidenceFile(n.Name, "flows.jsonl")); err == nil {
			if err := os.WriteFile(filepath.Join(dir, "flows-"+n.Name+".jsonl"), flows, 0o644); err != nil {
				t.Logf("agent evidence: %v", err)
			}
		}
	}
}

type writerFunc func([]byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }

// writeCNPDocs writes docs/conformance-cnp.md from a run; noSCTP is why
// this kernel makes no SCTP sockets ("" when it does).
func writeCNPDocs(root string, res *cnpsuite.Result, lines string, at time.Time, wall, watched time.Duration, noSCTP string) error {
	report, err := os.ReadFile(res.Report)
	if err != nil {
		return fmt.Errorf("the suite wrote no report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "docs", "conformance-cnp-report.yaml"), report, 0o644); err != nil {
		return err
	}
	sctp := "SCTP probes: all run (this kernel has SCTP sockets)."
	var notRun strings.Builder
	if noSCTP != "" {
		sctp = fmt.Sprintf(`SCTP probes not run: the suite's SCTP probes inside tests that mix
protocols are not run, because this kernel has no SCTP sockets
(%s). The suite is built
with tools/cnpconformance/sctpprobes.sh, which makes upstream's PokeServer
(the one function every probe of the suite goes through) log such a probe
as not run instead of running it when internal/cnpsuite asks (it does so
only after socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails). Every TCP and
UDP probe of those tests runs: a PASS marked "[N SCTP probes not run]" is a
pass of its TCP and UDP probes only, never of its SCTP ones. The probes not
run, by test, are listed after the results.`, noSCTP)
		for _, tc := range res.Tests {
			if len(tc.SCTPNotRun) == 0 {
				continue
			}
			if notRun.Len() == 0 {
				notRun.WriteString("\n## SCTP probes not run\n\nClient pod -> server address, and what the test expected of the probe.\n")
			}
			fmt.Fprintf(&notRun, "\n%s (%d):\n\n", tc.Name, len(tc.SCTPNotRun))
			for _, p := range tc.SCTPNotRun {
				fmt.Fprintf(&notRun, "    %s\n", p)
			}
		}
	}
	md := fmt.Sprintf(`# network-policy-api v0.3.0 conformance (ClusterNetworkPolicy)

Upstream's conformance suite (sigs.k8s.io/network-policy-api v0.3.0,
package conformance) run on the real two-node cluster (realcluster) with
nfqpolicy enforcing, by

    make image && NFQPOLICY_CNP_CONFORMANCE=1 NFQPOLICY_CNP_DOCS=1 \
      go test -count=1 -timeout 120m -run TestRealClusterCNPConformance -v ./realcluster/

Generated by that test on %s; wall time of the suite %v.
Raw report written by the suite: [conformance-cnp-report.yaml](conformance-cnp-report.yaml).

Setup: CRD from the module's config/crd/experimental (the named-port and
nodes-peer tests need experimental fields), installed after the agents
started; the suite starts once every agent reports
nfqpolicy_cluster_network_policies_watched 1 (here %v after the CRD was
established: the agents watch the CRD object and ask discovery when it
changes). Supported features: the standard ClusterNetworkPolicy profile
plus %s.
The suite's base manifests are upstream's with the changes in
tools/cnpconformance/patch.sh (agnhost 2.66.1 instead of 2.45, no
/bin/bash wrapper, SCTP servers replaced by "agnhost pause").

Upstream's PokeServer retries a probe for up to 10 s until it sees what
the test expects, since a policy change takes a moment to be enforced; %d
probe attempts were retried in this run (the "FAILED Command was" lines
of the suite's log, each followed by a passing attempt when its test
passed).

Skipped tests: %s (%s).

%s

domainNames peers are not enforced by nfqpolicy; v0.3.0's suite has no
test using them.

## Result: %s

%s%s`, at.UTC().Format("2006-01-02 15:04 MST"), wall, watched.Round(time.Millisecond), strings.Join(cnpsuite.Features, " and "),
		res.Retried(), strings.Join(cnpsuite.SCTPTests, ", "), cnpsuite.SCTPReason, sctp, res.Summary(), indent(lines), notRun.String())
	return os.WriteFile(filepath.Join(root, "docs", "conformance-cnp.md"), []byte(md), 0o644)
}

func indent(s string) string {
	var b strings.Builder
	for l := range strings.Lines(s) {
		b.WriteString("    " + l)
	}
	return b.String()
}
