package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/scenario"
)

const (
	publicCorpus = "../testdata/conformance/public"
	cnpCorpus    = "../testdata/conformance/public-cnp"
	// ownScenarios cover shapes the public corpus lacks: pods without a
	// node, IPv6 node addresses, IPv6 externals.
	ownScenarios = "testdata"
)

// requireKernel skips, loudly, where namespaces cannot be built.
func requireKernel(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP KERNEL TEST: needs root to create network namespaces")
	}
	for _, tool := range append([]string{"ip", "sysctl"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP KERNEL TEST: %s not in PATH", tool)
		}
	}
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).With().Timestamp().Logger()
}

// assertNoLeftovers fails if a namespace of this process survived Run.
func assertNoLeftovers(t *testing.T) {
	t.Helper()
	entries, _ := os.ReadDir(netnsDir)
	mine := fmt.Sprintf("%s%d-", NamePrefix, os.Getpid())
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), mine) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}

func reportMismatches(t *testing.T, rep *Report, limit int) {
	t.Helper()
	n := 0
	for _, r := range rep.Results {
		if r.Pass() {
			continue
		}
		if r.Skipped() {
			t.Log(FormatMismatch(r))
			continue
		}
		if n++; n <= limit {
			t.Error(FormatMismatch(r))
		}
	}
	if n > limit {
		t.Errorf("... and %d more mismatches", n-limit)
	}
}

// TestTopologyNoAgent runs the whole public corpus with no agent: nothing
// polices the traffic, so every probe, whatever the scenario expects, must
// be allowed. It proves that every pod, node and external address of every
// scenario is wired and served, for TCP, UDP and SCTP over both families.
func TestTopologyNoAgent(t *testing.T) {
	requireKernel(t)
	scenarios, err := scenario.LoadAll(publicCorpus, ownScenarios)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range scenarios {
		total += len(s.Probes)
	}
	rep, err := Run(context.Background(), scenarios, Options{Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	if len(rep.Results) != total {
		t.Fatalf("%d results for %d probes", len(rep.Results), total)
	}
	bad := 0
	for _, r := range rep.Results {
		if r.Got != "allow" {
			if bad++; bad <= 20 {
				t.Errorf("no agent, yet %s: %s -> %s %d/%s IPv%d got %s (%s)", r.Scenario, r.Probe.From, r.Probe.To, r.Probe.Port, r.Probe.Protocol, r.Probe.Family, r.Got, r.Detail)
			}
		}
	}
	t.Logf("%d probes of %d scenarios in %d topologies, all allowed without an agent, in %s", total, len(scenarios), rep.Topologies, rep.Elapsed.Round(time.Millisecond))
}

// TestProbesSeeDropAndReject installs iptables rules in every node
// namespace (no agent) and checks that the probes report what the rules
// do: a DROP is a denial by timeout, a REJECT a denial by refusal, and
// everything else still passes, for pods, nodes, a hostNetwork pod and
// external addresses, over IPv4 and IPv6.
func TestProbesSeeDropAndReject(t *testing.T) {
	requireKernel(t, "iptables", "ip6tables")
	base, err := scenario.LoadAll(filepath.Join(publicCorpus, "seed-6-hostnetwork-and-node-traffic.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := &scenario.Scenario{Name: "drop-and-reject", File: base[0].File, Cluster: base[0].Cluster}
	ends := map[int][]string{
		4: {"app/web", "app/db", "app/client", "app/hn", "node/node-1", "node/node-2", "203.0.113.10"},
		6: {"app/web", "app/db", "app/client", "2001:db8::10"},
	}
	type rule struct {
		proto  string
		port   int
		expect string
		detail string
	}
	cases := []rule{
		{"TCP", 80, "allow", "connected"},
		{"TCP", 81, "deny", "timeout"}, // DROP
		{"TCP", 82, "deny", "refused"}, // REJECT with a TCP reset
		{"UDP", 80, "allow", "echoed"}, //
		{"UDP", 81, "deny", "refused"}, // REJECT, ICMP port unreachable
		{"UDP", 82, "deny", "timeout"}, // DROP
		{"SCTP", 80, "allow", "INIT arrived"},
		{"SCTP", 81, "deny", "timeout"}, // DROP
	}
	want := map[string]string{}
	for fam, list := range ends {
		for _, from := range list {
			for _, to := range list {
				if from == to || (strings.Contains(from, ".") || strings.Contains(from, ":")) && (strings.Contains(to, ".") || strings.Contains(to, ":")) {
					continue
				}
				if (from == "app/hn" && to == "node/node-1") || (from == "node/node-1" && to == "app/hn") {
					continue // one address
				}
				for _, c := range cases {
					p := scenario.Probe{From: from, To: to, Port: c.port, Protocol: c.proto, Family: fam, Expect: c.expect}
					s.Probes = append(s.Probes, p)
					detail := c.detail
					if c.expect == "deny" && c.proto != "TCP" && (strings.HasPrefix(from, "node/") || from == "app/hn") {
						// The node's own datagrams meet the rule in OUTPUT,
						// which fails the send itself.
						detail = "blocked locally"
					}
					want[fmt.Sprint(len(s.Probes)-1)] = detail
				}
			}
		}
	}
	rules := func(ipt string) [][]string {
		var out [][]string
		for _, chain := range []string{"FORWARD", "INPUT", "OUTPUT"} {
			icmp := "icmp-port-unreachable"
			if ipt == "ip6tables" {
				icmp = "icmp6-port-unreachable"
			}
			out = append(out,
				[]string{ipt, "-w", "-A", chain, "-p", "tcp", "--dport", "81", "-j", "DROP"},
				[]string{ipt, "-w", "-A", chain, "-p", "tcp", "--dport", "82", "-j", "REJECT", "--reject-with", "tcp-reset"},
				[]string{ipt, "-w", "-A", chain, "-p", "udp", "--dport", "81", "-j", "REJECT", "--reject-with", icmp},
				[]string{ipt, "-w", "-A", chain, "-p", "udp", "--dport", "82", "-j", "DROP"},
				[]string{ipt, "-w", "-A", chain, "-p", "sctp", "--dport", "81", "-j", "DROP"})
		}
		return out
	}
	opts := Options{Log: testLogger(t), beforeProbes: func(top *topology) error {
		for _, ns := range top.nodes {
			for _, r := range append(rules("iptables"), rules("ip6tables")...) {
				if _, err := ns.Exec(context.Background(), r[0], r[1:]...); err != nil {
					return err
				}
			}
		}
		return nil
	}}
	rep, err := Run(context.Background(), []*scenario.Scenario{s}, opts)
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	reportMismatches(t, rep, 30)
	for _, r := range rep.Results {
		if r.Pass() && r.Detail != want[fmt.Sprint(r.Index)] {
			t.Errorf("%s -> %s %d/%s IPv%d: %s by %q, want by %q", r.Probe.From, r.Probe.To, r.Probe.Port, r.Probe.Protocol, r.Probe.Family, r.Got, r.Detail, want[fmt.Sprint(r.Index)])
		}
	}
	t.Logf("%d probes, %d passed, in %s", len(rep.Results), rep.Passed, rep.Elapsed.Round(time.Millisecond))
}

// agentBinary builds ./cmd/nfqpolicy for a kernel test, skipping loudly
// when it does not build or has no working `run`.
func agentBinary(t *testing.T) string {
	t.Helper()
	bin, err := BuildAgent(context.Background(), "", t.TempDir())
	if err != nil {
		t.Skipf("SKIP KERNEL TEST: the nfqpolicy agent does not build: %v", err)
	}
	if out, err := exec.Command(bin, "run", "-h").CombinedOutput(); err != nil {
		t.Skipf("SKIP KERNEL TEST: `nfqpolicy run -h` fails (%v): %s", err, out)
	}
	return bin
}

// TestPublicCorpusKernel runs every public scenario through real agents:
// one `nfqpolicy run` per node namespace, every probe sent as real
// traffic. Scenarios sharing a topology are run one after the other by
// swapping the agents' snapshot, so this also exercises reloading.
func TestPublicCorpusKernel(t *testing.T) {
	requireKernel(t, "iptables", "ipset")
	bin := agentBinary(t)
	scenarios, err := scenario.LoadAll(publicCorpus)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), scenarios, Options{Agent: bin, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	reportMismatches(t, rep, 50)
	// The verdicts must be the agents': they saw first packets and denied
	// some, and none was lost in the queue.
	a := rep.Agents
	if a.Allowed == 0 || a.Denied == 0 || a.Malformed != 0 || a.VerdictErrors != 0 || a.NoBufs != 0 {
		t.Errorf("agents' counters %+v: want allowed and denied packets and no malformed, verdict errors or ENOBUFS", a)
	}
	t.Logf("agents decided %d packets allowed, %d denied", a.Allowed, a.Denied)
	t.Logf("%d passed, %d failed, %d scenarios in %d topologies, in %s", rep.Passed, rep.Failed, len(scenarios), rep.Topologies, rep.Elapsed.Round(time.Millisecond))
}

// cnpKernel is the part of the ClusterNetworkPolicy corpus sent as real
// traffic: every scenario transcribed from upstream's conformance tests
// (both tiers, Pass, named ports, port ranges, networks and node peers
// with hostNetwork pods, IPv6, TCP, UDP and SCTP) and two generated full
// matrices (node peers over both families, an Admin Pass into
// NetworkPolicy isolation).
var cnpKernel = []string{"cnp-admin-tier-*.yaml", "cnp-baseline-tier-*.yaml", "cnp-gen-peer-egress-nodes-all.yaml", "cnp-gen-np-admin-pass-then-np-isolation.yaml"}

// TestClusterNetworkPolicyKernel runs cnpKernel through real agents and
// checks that it covers what it claims to.
func TestClusterNetworkPolicyKernel(t *testing.T) {
	requireKernel(t, "iptables", "ipset")
	bin := agentBinary(t)
	var files []string
	for _, g := range cnpKernel {
		m, err := filepath.Glob(filepath.Join(cnpCorpus, g))
		if err != nil || len(m) == 0 {
			t.Fatalf("%s: no scenario (%v)", g, err)
		}
		files = append(files, m...)
	}
	scenarios, err := scenario.LoadAll(files...)
	if err != nil {
		t.Fatal(err)
	}
	cover := map[string]int{}
	for _, s := range scenarios {
		if len(s.Cluster.ClusterPolicies) == 0 {
			t.Errorf("%s: no ClusterNetworkPolicy", s.File)
		}
		hostNet := map[string]bool{}
		for _, p := range s.Cluster.Pods {
			if p.Spec.HostNetwork {
				hostNet[p.Namespace+"/"+p.Name] = true
			}
		}
		for _, p := range s.Probes {
			cover[p.Protocol]++
			cover[fmt.Sprintf("IPv%d", p.Family)]++
			if hostNet[p.To] || strings.HasPrefix(p.To, "node/") {
				cover["to a node or hostNetwork pod"]++
			}
		}
		for _, cnp := range s.Cluster.ClusterPolicies {
			cover[string(cnp.Spec.Tier)]++
			for _, r := range cnp.Spec.Egress {
				cover[string(r.Action)]++
				for _, to := range r.To {
					if to.Nodes != nil {
						cover["nodes peer"]++
					}
					if len(to.Networks) > 0 {
						cover["networks peer"]++
					}
				}
			}
			for _, r := range cnp.Spec.Ingress {
				cover[string(r.Action)]++
			}
		}
	}
	for _, want := range []string{"TCP", "UDP", "SCTP", "IPv4", "IPv6", "Admin", "Baseline", "Accept", "Deny", "Pass", "nodes peer", "networks peer", "to a node or hostNetwork pod"} {
		if cover[want] == 0 {
			t.Errorf("the kernel part of the corpus has no %s", want)
		}
	}
	rep, err := Run(context.Background(), scenarios, Options{Agent: bin, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	reportMismatches(t, rep, 50)
	if rep.Skipped > 0 {
		t.Errorf("%d probes skipped", rep.Skipped)
	}
	a := rep.Agents
	if a.Allowed == 0 || a.Denied == 0 || a.Malformed != 0 || a.VerdictErrors != 0 || a.NoBufs != 0 {
		t.Errorf("agents' counters %+v: want allowed and denied packets and no malformed, verdict errors or ENOBUFS", a)
	}
	t.Logf("coverage %v", cover)
	t.Logf("%d passed, %d failed, %d scenarios in %d topologies, in %s", rep.Passed, rep.Failed, len(scenarios), rep.Topologies, rep.Elapsed.Round(time.Millisecond))
}

// TestRunCleansUpWhenCancelled cancels a run once its topology is built
// (as a signal would) and checks that Run reports it and deletes every
// namespace.
func TestRunCleansUpWhenCancelled(t *testing.T) {
	requireKernel(t)
	scenarios, err := scenario.LoadAll(filepath.Join(publicCorpus, "seed-1-docs-test-network-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	built := 0
	opts := Options{Log: testLogger(t), beforeProbes: func(top *topology) error {
		built = len(top.all())
		cancel()
		return nil
	}}
	_, err = Run(ctx, scenarios, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancel: %v, want context.Canceled", err)
	}
	if built == 0 {
		t.Fatal("the topology was never built")
	}
	assertNoLeftovers(t)
}

// TestSweepStale checks that a namespace named for a dead pid is swept and
// one named for a live pid is left alone.
func TestSweepStale(t *testing.T) {
	requireKernel(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadName := fmt.Sprintf("%s%d-sweeptest", NamePrefix, dead.Process.Pid)
	liveName := fmt.Sprintf("%s%d-sweeptest", NamePrefix, os.Getpid())
	for _, n := range []string{deadName, liveName} {
		ns, err := addNS(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.del()
	}
	if _, err := SweepStale(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, deadName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace of dead pid %d not swept (stat: %v)", dead.Process.Pid, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, liveName)); err != nil {
		t.Errorf("namespace of this live process was swept: %v", err)
	}
}

// TestOwnScenariosKernel runs this package's own scenarios (their
// expectations agree with `nfqpolicy test`) through real agents.
func TestOwnScenariosKernel(t *testing.T) {
	requireKernel(t, "iptables", "ipset")
	bin := agentBinary(t)
	scenarios, err := scenario.LoadAll(ownScenarios)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), scenarios, Options{Agent: bin, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	reportMismatches(t, rep, 50)
	if rep.Skipped > 0 {
		t.Errorf("%d probes skipped", rep.Skipped)
	}
	t.Logf("%d passed, %d failed in %s", rep.Passed, rep.Failed, rep.Elapsed.Round(time.Millisecond))
}
