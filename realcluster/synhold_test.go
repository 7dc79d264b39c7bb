package realcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nfqpolicy/nfqpolicy/e2e"
	"github.com/nfqpolicy/nfqpolicy/internal/syntap"
)

// TestRealClusterSynHold is issue 11's item 5: how long a real node holds a
// new connection's SYN with kube-proxy's rules for 1,000 Services present,
// with nfqpolicy enforcing against the benchmark's accept-everything queue
// reader (bench/dataplane) and against no queue at all.
//
// The two nodes are the lanes, measured in alternating rounds: node-1
// keeps its agent (the DaemonSet as deployed, enforcing a policy that
// isolates the server pod and allows the client); node-2's agent is moved
// off the node (NFQPOLICY_SYNHOLD_SWAP=1 swaps the two nodes' roles) (a node affinity on the DaemonSet), its rules removed with
// `nfqpolicy cleanup`, and the accept-all reader answers one `-m conntrack
// --ctstate NEW -j NFQUEUE` rule at the top of FORWARD there, in the
// backend kube-proxy uses; rounds without that rule are the no-queue
// lane. The client is the control plane's namespace (an external host),
// the servers agnhost pods, one per node; packet sockets on the node's
// uplink and on the server pod's link stamp each SYN in and out
// (internal/syntap). At the end the DaemonSet is put back on both nodes.
//
// It is a measurement (minutes, and it moves the shared deployment), so
// it runs only with NFQPOLICY_SYNHOLD=1 (`make bench-realnode`); it fails
// only when the lanes cannot be measured, never on a figure.
func TestRealClusterSynHold(t *testing.T) {
	if os.Getenv("NFQPOLICY_SYNHOLD") != "1" {
		t.Skip("SKIPPED: a measurement of minutes that moves the agent off node-2; set NFQPOLICY_SYNHOLD=1 (make bench-realnode)")
	}
	services, rounds, per := envInt(t, "NFQPOLICY_SYNHOLD_SERVICES", 1000), envInt(t, "NFQPOLICY_SYNHOLD_ROUNDS", 20), envInt(t, "NFQPOLICY_SYNHOLD_CONNS", 300)
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c, dep := agentCluster(t)
	ctx := context.Background()
	bins := t.TempDir()
	agentBin, err := e2e.BuildAgent(ctx, root, bins)
	if err != nil {
		t.Fatal(err)
	}
	readerBin := filepath.Join(bins, "dataplane-bench")
	build := exec.CommandContext(ctx, "go", "build", "-o", readerBin, "./bench/dataplane")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./bench/dataplane: %v: %s", err, out)
	}

	ns := testNamespace(t, c)
	// n1 keeps its agent, n2 gets the accept-all reader;
	// NFQPOLICY_SYNHOLD_SWAP=1 swaps the nodes' roles, to tell the
	// nodes' own difference from the readers'.
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if os.Getenv("NFQPOLICY_SYNHOLD_SWAP") == "1" {
		n1, n2 = n2, n1
	}
	if err := c.Apply(ctx, agnhostPod(ns, "server-1", n1.Name, map[string]string{"app": "server"}, "netexec", "--http-port=8080")+"\n---\n"+
		agnhostPod(ns, "server-2", n2.Name, map[string]string{"app": "server"}, "netexec", "--http-port=8080")); err != nil {
		t.Fatal(err)
	}
	ips := waitPods(t, c, ns, "server-1", "server-2")
	// The server pods are isolated; the client (the control plane's
	// address) is allowed: node-1's agent decides every SYN.
	if err := c.Apply(ctx, ingressFromIPBlock(ns, "allow-client", ControlPlaneIP.String()+"/32", 8080)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := applyServices(ctx, c, ns, services); err != nil {
		t.Fatal(err)
	}
	backend := make([]string, 2)
	for i, n := range []*Node{n1, n2} {
		if backend[i], err = waitKubeProxyServices(ctx, c, n, services); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d Services in kube-proxy's rules on both nodes (iptables-%s) %v after applying them", services, backend[0], time.Since(start).Round(time.Second))

	// node-2 without its agent.
	restore, err := agentOffNode(ctx, c, dep, n2.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := restore(); err != nil {
			t.Errorf("putting the agent back on %s: %v", n2.Name, err)
		}
	})
	if out, err := c.InNode(ctx, n2, agentBin, "cleanup", "--iptables-backend", backend[1]); err != nil {
		t.Fatalf("nfqpolicy cleanup on %s: %v: %s", n2.Name, err, out)
	}
	reader, err := startReader(ctx, c, n2, readerBin)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.stop()
	rule := []string{"FORWARD", "-m", "conntrack", "--ctstate", "NEW", "-j", "NFQUEUE", "--queue-balance", "100:101"}
	ipt := "iptables-" + backend[1]
	ruleIn := false
	setRule := func(on bool) error {
		if on == ruleIn {
			return nil
		}
		args := append([]string{"-w", "-D"}, rule...)
		if on {
			args = append([]string{"-w", "-I"}, append([]string{rule[0], "1"}, rule[1:]...)...)
		}
		if out, err := c.InNode(ctx, n2, ipt, args...); err != nil {
			return fmt.Errorf("%s %s: %v: %s", ipt, strings.Join(args, " "), err, out)
		}
		ruleIn = on
		return nil
	}
	defer func() {
		if err := setRule(false); err != nil {
			t.Error(err)
		}
	}()

	type laneDef struct {
		name   string
		node   *Node
		server string
		rule   bool // node-2: the accept-all rule in place
	}
	lanes := []laneDef{
		{"enforced", n1, ips["server-1"], false},
		{"acceptall", n2, ips["server-2"], true},
		{"norules", n2, ips["server-2"], false},
	}
	links := map[string]string{}
	for _, l := range lanes {
		if links[l.server], err = podLink(ctx, c, l.node, l.server); err != nil {
			t.Fatal(err)
		}
	}
	stop, err := syntap.KeepStamping()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	held := make([][][]time.Duration, len(lanes)) // per lane, per round
	failed := make([]int, len(lanes))
	// One unmeasured round per lane: neighbours, conntrack, the agent's
	// first decision (a cache miss; the rest of its SYNs hit).
	for k := -1; k < rounds; k++ {
		for _, i := range rand.New(rand.NewPCG(uint64(k+1), 11)).Perm(len(lanes)) {
			l := lanes[i]
			if l.node == n2 {
				if err := setRule(l.rule); err != nil {
					t.Fatal(err)
				}
			}
			dst := netip.AddrPortFrom(netip.MustParseAddr(l.server), 8080)
			tap, err := syntap.Open(l.node.NS, "eth0", links[l.server], dst)
			if err != nil {
				t.Fatal(err)
			}
			nf, derr := sequentialConns(c, dst, per)
			h, unmatched, inverted, terr := tap.Close()
			if err := errors.Join(derr, terr); err != nil {
				t.Fatalf("%s: %v", l.name, err)
			}
			if len(h) == 0 {
				t.Fatalf("%s: no SYN seen crossing %s (%d connections failed, %d seen on one link only)", l.name, l.node.Name, nf, unmatched)
			}
			if k < 0 {
				continue
			}
			held[i] = append(held[i], h)
			failed[i] += nf
			if inverted > len(h)/10 {
				t.Logf("%s round %d: %d SYNs stamped late left out", l.name, k, inverted)
			}
		}
	}
	if err := setRule(false); err != nil {
		t.Fatal(err)
	}
	acc, err := reader.stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("accept-all reader on %s: %s", n2.Name, acc)

	p := func(xs []time.Duration, q float64) time.Duration {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[min(len(s)-1, int(q*float64(len(s))))]
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	var report strings.Builder
	fmt.Fprintf(&report, "# real node SYN hold: %d Services in kube-proxy's rules (iptables-%s), %d rounds x %d sequential connections per lane from the control plane's namespace, alternating; load average %s\n",
		services, backend[0], rounds, per, loadAvg())
	p50s := make([][]float64, len(lanes))
	for i, l := range lanes {
		all := slices.Concat(held[i]...)
		for _, r := range held[i] {
			p50s[i] = append(p50s[i], float64(p(r, 0.5)))
		}
		fmt.Fprintf(&report, "realnode_syn_held %-9s %s n=%d p50=%.1fus p90=%.1fus p99=%.1fus failed=%d\n",
			l.name, l.node.Name, len(all), us(p(all, 0.5)), us(p(all, 0.9)), us(p(all, 0.99)), failed[i])
		if failed[i] > rounds*per/10 {
			t.Errorf("%s: %d of %d connections failed", l.name, failed[i], rounds*per)
		}
	}
	ratio := func(a, b int) (p50, p99 float64) {
		var rs []float64
		for k := range p50s[a] {
			rs = append(rs, p50s[a][k]/p50s[b][k])
		}
		slices.Sort(rs)
		return rs[len(rs)/2], float64(p(slices.Concat(held[a]...), 0.99)) / float64(p(slices.Concat(held[b]...), 0.99))
	}
	e50, e99 := ratio(0, 1)
	n50, n99 := ratio(0, 2)
	fmt.Fprintf(&report, "ratio realnode_syn_hold_p50_enforced_vs_acceptall=%.2f (median of rounds)\n", e50)
	fmt.Fprintf(&report, "ratio realnode_syn_hold_p99_enforced_vs_acceptall=%.2f (all rounds' SYNs)\n", e99)
	fmt.Fprintf(&report, "ratio realnode_syn_hold_p50_enforced_vs_norules=%.2f\n", n50)
	fmt.Fprintf(&report, "ratio realnode_syn_hold_p99_enforced_vs_norules=%.2f\n", n99)
	fmt.Print(report.String())
	t.Log("\n" + report.String())
}

// envInt reads a positive integer setting from the environment.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// applyServices creates n ClusterIP Services in ns, all selecting the
// synhold servers: kube-proxy writes a KUBE-SVC and a KUBE-SEP chain per
// Service per endpoint and one rule per Service in KUBE-SERVICES, which
// every new connection through the node walks.
func applyServices(ctx context.Context, c *Cluster, ns string, n int) error {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata:
  name: synhold-%d
  namespace: %s
spec:
  selector: {app: server}
  ports:
  - {protocol: TCP, port: 80, targetPort: 8080}
`, i, ns)
	}
	_, err := c.KubectlIn(ctx, b.String(), "apply", "--server-side", "-f", "-")
	return err
}

// waitKubeProxyServices waits until node n's kube-proxy has a KUBE-SVC
// chain for at least n Services and returns the iptables backend holding
// them (nft or legacy).
func waitKubeProxyServices(ctx context.Context, c *Cluster, n *Node, services int) (string, error) {
	var backend string
	err := waitFor(5*time.Minute, fmt.Sprintf("%d Services in %s's kube-proxy rules", services, n.Name), func() error {
		best := 0
		for _, be := range []string{"nft", "legacy"} {
			out, _ := c.InNode(ctx, n, "iptables-"+be+"-save", "-t", "nat")
			got := strings.Count(out, "\n-A KUBE-SERVICES ")
			if got > best {
				best, backend = got, be
			}
		}
		if best < services {
			return fmt.Errorf("%d rules in KUBE-SERVICES", best)
		}
		return nil
	})
	return backend, err
}

// agentOffNode moves the DaemonSet off node (a required node affinity),
// waits until its pod there is gone and the others are ready, and returns
// how to undo it.
func agentOffNode(ctx context.Context, c *Cluster, dep *Deployment, node string) (func() error, error) {
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/hostname","operator":"NotIn","values":[%q]}]}]}}}}}}}`, node)
	restore := func() error {
		if _, err := c.Kubectl(context.Background(), "-n", AgentNamespace, "patch", "daemonset", AgentDaemonSet, "--type", "merge", "-p", `{"spec":{"template":{"spec":{"affinity":null}}}}`); err != nil {
			return err
		}
		return dep.WaitReady(context.Background(), 3*time.Minute)
	}
	if _, err := c.Kubectl(ctx, "-n", AgentNamespace, "patch", "daemonset", AgentDaemonSet, "--type", "merge", "-p", patch); err != nil {
		return nil, err
	}
	err := waitFor(3*time.Minute, "the agent off "+node+" and ready elsewhere", func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		pods, err := c.Client.CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: AgentLabel, FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d agent pods on %s", len(pods.Items), node)
		}
		ds, err := c.Client.AppsV1().DaemonSets(AgentNamespace).Get(ctx, AgentDaemonSet, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s := ds.Status
		if s.ObservedGeneration < ds.Generation || s.DesiredNumberScheduled != int32(len(c.Nodes)-1) || s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberReady != s.DesiredNumberScheduled {
			return fmt.Errorf("desired %d updated %d ready %d", s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady)
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(err, restore())
	}
	return restore, nil
}

// podLink is the node's link to a pod address: the host side of the pod's
// veth (CNI ptp), where the node's SYNs to it leave.
func podLink(ctx context.Context, c *Cluster, n *Node, podIP string) (string, error) {
	out, err := c.InNode(ctx, n, "ip", "-o", "route", "get", podIP)
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	for i := range len(f) - 1 {
		if f[i] == "dev" {
			return f[i+1], nil
		}
	}
	return "", fmt.Errorf("%s: no link to %s in %q", n.Name, podIP, out)
}

// sequentialConns opens n connections to dst from the control plane's
// namespace, one at a time, each reset at once (SO_LINGER 0: no TIME_WAIT
// to run out of ports), and returns how many failed.
func sequentialConns(c *Cluster, dst netip.AddrPort, n int) (failed int, err error) {
	err = c.CP.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		for range n {
			conn, err := d.Dial("tcp", dst.String())
			if err != nil {
				failed++
				if failed > n/2 {
					return fmt.Errorf("%d of %d connections to %s failed, last: %w", failed, n, dst, err)
				}
				continue
			}
			_ = conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
		return nil
	})
	return failed, err
}

// readerProc is bench/dataplane's accept-all reader running in a node.
type readerProc struct {
	cmd     *exec.Cmd
	lines   chan string
	done    chan error
	stopped bool
}

// startReader starts the accept-all reader on queues 100 and 101 (the
// agent's) in node n and waits until it has bound them.
func startReader(ctx context.Context, c *Cluster, n *Node, bin string) (*readerProc, error) {
	r := &readerProc{cmd: n.NS.Command(ctx, bin, "__acceptall", "100", "2", "accept"), lines: make(chan string, 4), done: make(chan error, 1)}
	var stderr strings.Builder
	r.cmd.Stderr = &stderr
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("accept-all reader: %w", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
		r.done <- r.cmd.Wait()
	}()
	select {
	case l := <-r.lines:
		if l == "ready" {
			return r, nil
		}
		_, _ = r.stop()
		return nil, fmt.Errorf("accept-all reader did not start (%q): %s", l, stderr.String())
	case <-time.After(10 * time.Second):
		_, _ = r.stop()
		return nil, errors.New("accept-all reader: not ready in 10s")
	}
}

// stop ends the reader and returns its last line (its counts). Safe to
// call twice.
func (r *readerProc) stop() (string, error) {
	if r.stopped {
		return "", nil
	}
	r.stopped = true
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	var last string
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, ok := <-r.lines:
			if ok {
				last = l
				continue
			}
			return last, <-r.done
		case <-timeout:
			_ = r.cmd.Process.Kill()
			return last, errors.New("accept-all reader ignored SIGTERM for 5s and was killed")
		}
	}
}
