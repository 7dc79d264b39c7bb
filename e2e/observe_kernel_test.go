package e2e

// Kernel proof of the agent's observability: the flow log, the pcapng
// capture, audit mode (per policy, per namespace, agent-wide), loss
// reporting under a slow log sink, and the debug socket (explain, trace),
// all on real packets through `nfqpolicy run` in a node namespace.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/flowlog"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// observeScenario is one node with four pods:
//
//   - x/deny-all isolates every pod of x; x/allow-b-from-y lets y into x/b.
//     So y/c -> x/a is denied ("default deny by isolation of x/a from
//     x/deny-all"), y/c -> x/b allowed by a rule.
//   - y/staged-deny isolates y/c but carries the audit annotation: x/a ->
//     y/c is allowed and would be denied.
//   - namespace z is labelled audit, so z/deny-all is staged: x/a -> z/d is
//     allowed and would be denied.
//
// %s is replaced by y/staged-deny's metadata.annotations (promotion removes
// the annotation).
const observeScenario = `
name: e2e-observe
source: observe_kernel_test.go
objects:
  - {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {ns: x}}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: y, labels: {ns: y}}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: z, labels: {ns: z, nfqpolicy.io/mode: audit}}}
  - {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 192.168.77.1}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, labels: {pod: a}}, spec: {nodeName: node-1, containers: [{name: c}]}, status: {podIPs: [{ip: 10.244.77.10}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, labels: {pod: b}}, spec: {nodeName: node-1, containers: [{name: c}]}, status: {podIPs: [{ip: 10.244.77.11}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, labels: {pod: c}}, spec: {nodeName: node-1, containers: [{name: c}]}, status: {podIPs: [{ip: 10.244.77.12}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: d, namespace: z, labels: {pod: d}}, spec: {nodeName: node-1, containers: [{name: c}]}, status: {podIPs: [{ip: 10.244.77.13}]}}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-all, namespace: x}
    spec: {podSelector: {}, policyTypes: [Ingress]}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: allow-b-from-y, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: b}}
      ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: staged-deny, namespace: y, annotations: %s}
    spec: {podSelector: {}, policyTypes: [Ingress]}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-all, namespace: z}
    spec: {podSelector: {}, policyTypes: [Ingress]}
probes:
  - {from: y/c, to: x/a, port: 80, expect: deny}
  - {from: y/c, to: x/b, port: 80, expect: allow}
  - {from: x/a, to: y/c, port: 80, expect: allow}
  - {from: x/a, to: z/d, port: 80, expect: allow}
`

const (
	stagedAnnotation = `{nfqpolicy.io/mode: audit}`
	promoted         = `{}`
	podA, podB       = "10.244.77.10", "10.244.77.11"
	podC, podD       = "10.244.77.12", "10.244.77.13"
)

// observeCluster is the scenario's topology with servers and one agent.
type observeCluster struct {
	t      testing.TB
	dir    string // flow logs, captures, the debug socket
	top    *topology
	pr     *prober
	p      *prepared
	agents *agentSet
}

func loadObserveScenario(t testing.TB, annotations string) *prepared {
	t.Helper()
	ss, err := scenario.Parse("observe.yaml", []byte(fmt.Sprintf(observeScenario, annotations)))
	if err != nil {
		t.Fatalf("scenario: %v", err)
	}
	p, err := prepare(ss[0])
	if err != nil {
		t.Fatalf("scenario: %v", err)
	}
	return p
}

// startObserveCluster builds the topology, starts the servers and one
// agent with the extra flags args returns (given the test's directory),
// and tears everything down when the test ends.
func startObserveCluster(t testing.TB, bin, name string, args func(dir string) []string) *observeCluster {
	t.Helper()
	return startClusterOf(t, bin, name, loadObserveScenario(t, stagedAnnotation), args)
}

// startClusterOf is startObserveCluster for any one-scenario cluster p.
func startClusterOf(t testing.TB, bin, name string, p *prepared, args func(dir string) []string) *observeCluster {
	t.Helper()
	if deleted, err := SweepStale(); err != nil {
		t.Logf("sweeping stale namespaces: %v", err)
	} else if len(deleted) > 0 {
		t.Logf("deleted namespaces of dead runs: %v", deleted)
	}
	ctx := context.Background()
	c := &observeCluster{t: t, dir: t.TempDir(), p: p}
	g := groupScenarios([]*prepared{c.p}, false)[0]
	prefix := fmt.Sprintf("%s%d-%s-", NamePrefix, os.Getpid(), name)
	top, err := buildTopology(ctx, prefix, g.pl, g.externals)
	if err != nil {
		t.Fatalf("build topology: %v", err)
	}
	c.top = top
	t.Cleanup(func() {
		if err := top.close(); err != nil {
			t.Errorf("tear down topology: %v", err)
		}
		mine := prefix
		entries, _ := os.ReadDir(netnsDir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), mine) {
				t.Errorf("namespace %s left behind", e.Name())
			}
		}
	})
	srv, err := startServers(top, g.servers)
	if err != nil {
		t.Fatalf("servers: %v", err)
	}
	t.Cleanup(srv.close)
	c.pr = newProber(top, srv, g.servers, 2*time.Second)
	if broken := warmUp(ctx, c.pr, g, 8); len(broken) > 0 {
		t.Fatalf("topology self-check failed without an agent: %v", broken)
	}
	c.agents, err = startAgents(ctx, bin, args(c.dir), top, c.p, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range c.agents.agents {
				t.Logf("agent log tail:\n%s", a.logTail())
			}
		}
		if err := c.agents.stop(); err != nil {
			t.Errorf("stop agent: %v", err)
		}
	})
	return c
}

// endpoint resolves "ns/pod" to where the topology put it.
func (c *observeCluster) endpoint(name string) endpoint {
	c.t.Helper()
	e, err := newResolver(c.p.s.Cluster, c.p.pl).resolve(name, 4)
	if err != nil {
		c.t.Fatalf("resolve %s: %v", name, err)
	}
	return e
}

// connect makes one TCP connection attempt from -> to:80.
func (c *observeCluster) connect(from, to string) outcome {
	return c.pr.once(context.Background(), c.endpoint(from), c.endpoint(to), 80, "TCP")
}

func (c *observeCluster) mustConnect(from, to string) {
	c.t.Helper()
	if o := c.connect(from, to); !o.allowed {
		c.t.Fatalf("%s -> %s:80 did not connect: %s %v", from, to, o.detail, o.err)
	}
}

func (c *observeCluster) mustNotConnect(from, to string) {
	c.t.Helper()
	if o := c.connect(from, to); o.allowed || o.err != nil {
		c.t.Fatalf("%s -> %s:80: want a denial, got allowed=%v %s %v", from, to, o.allowed, o.detail, o.err)
	}
}

// metrics scrapes the agent's /metrics and returns every sample by its
// full name with labels, e.g. `nfqpolicy_verdicts_total{mode="audit",verdict="deny"}`.
func (c *observeCluster) metrics() map[string]float64 {
	c.t.Helper()
	body, code, err := c.agents.agents[0].get(context.Background(), "/metrics")
	if err != nil || code != 200 {
		c.t.Fatalf("/metrics: HTTP %d %v", code, err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			c.t.Fatalf("/metrics line %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

// nfqpolicy runs the CLI and returns its stdout, stderr and exit code.
func runCLI(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("nfqpolicy %v: %v", args, err)
	return "", "", 0
}

// readFlowLog parses every complete line of a flow log file.
func readFlowLog(t *testing.T, path string) []flowlog.Entry {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []flowlog.Entry
	for _, l := range strings.SplitAfter(string(data), "\n") {
		if !strings.HasSuffix(l, "\n") {
			break // being written
		}
		var e flowlog.Entry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("flow log line %q: %v", l, err)
		}
		out = append(out, e)
	}
	return out
}

// waitFlow waits (the writer flushes every 10ms) for a flow log record
// matching src, dst and dport, and returns it with the raw line.
func waitFlow(t *testing.T, path, src, dst string, match func(*flowlog.Entry) bool) flowlog.Entry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, e := range readFlowLog(t, path) {
			if e.Src == src && e.Dst == dst && e.DstPort == 80 && (match == nil || match(&e)) {
				return e
			}
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(path)
			t.Fatalf("no flow log record %s -> %s:80 in %s within 5s; the log:\n%s", src, dst, path, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rawLine(t *testing.T, path string, seq uint64) string {
	data, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, fmt.Sprintf(`"seq":%d,`, seq)) {
			return l
		}
	}
	return ""
}

// TestObserveKernel proves the flow log, capture, audit modes, loss
// reporting and the debug socket on real packets: one agent per subtest
// in a one-node namespace cluster.
func TestObserveKernel(t *testing.T) {
	requireKernel(t, "iptables", "ipset")
	bin := agentBinary(t)
	t.Run("denied-flow-in-flow-log-and-capture", func(t *testing.T) { testDeniedFlowLogged(t, bin) })
	t.Run("audit-per-policy-and-namespace", func(t *testing.T) { testStagedAudit(t, bin) })
	t.Run("audit-agent-wide", func(t *testing.T) { testAgentAudit(t, bin) })
	t.Run("slow-sink-loss-reported", func(t *testing.T) { testSlowSink(t, bin) })
	t.Run("explain-and-trace-agent", func(t *testing.T) { testExplainTrace(t, bin) })
}

// testDeniedFlowLogged: a denied probe is in the flow log with its reason
// and in the capture with the verdict and reason as the packet's comment,
// read back by tshark; an allowed flow is in neither (both select denied).
func testDeniedFlowLogged(t *testing.T, bin string) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Skip("SKIP KERNEL TEST: tshark not in PATH (apt-get install tshark)")
	}
	var flows, pcap string
	c := startObserveCluster(t, bin, "deny", func(dir string) []string {
		flows, pcap = filepath.Join(dir, "flows.jsonl"), filepath.Join(dir, "capture.pcapng")
		return []string{"--flow-log", flows, "--capture", pcap, "--debug-socket", filepath.Join(dir, "debug.sock")}
	})
	c.mustConnect("y/c", "x/b")
	c.mustNotConnect("y/c", "x/a")

	const reason = "default deny by isolation of x/a from x/deny-all"
	e := waitFlow(t, flows, podC, podA, nil)
	t.Logf("flow log: %s", rawLine(t, flows, e.Seq))
	if e.Verdict != "deny" || e.Mode != "enforce" || e.Proto != "tcp" || e.SrcPod != "y/c" || e.DstPod != "x/a" ||
		!strings.Contains(e.Reason, "ingress: "+reason) || e.Ingress == nil || e.Ingress.Decision != "denied-isolated" || e.Node != "node-1" {
		t.Errorf("denied flow logged as %+v, want verdict deny, mode enforce, y/c -> x/a, ingress denied-isolated, reason %q", e, reason)
	}
	for _, e := range readFlowLog(t, flows) {
		if e.Dst == podB {
			t.Errorf("allowed flow y/c -> x/b logged with --flow-log-select denied: %+v", e)
		}
	}

	// The capture is flushed every time its writer drains (10ms).
	var lines []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := exec.Command(tshark, "-r", pcap, "-T", "fields", "-E", "separator=/t", "-E", "aggregator=|",
			"-e", "ip.src", "-e", "ip.dst", "-e", "tcp.dstport", "-e", "tcp.flags.syn", "-e", "frame.comment").Output()
		lines = nil
		if err == nil {
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if l != "" {
					lines = append(lines, l)
				}
			}
		}
		if len(lines) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("tshark -r capture.pcapng -T fields -e ip.src -e ip.dst -e tcp.dstport -e tcp.flags.syn -e frame.comment:\n%s", strings.Join(lines, "\n"))
	if len(lines) == 0 {
		t.Fatal("tshark read no packet from the capture")
	}
	// A dropped SYN may be retransmitted within the probe's timeout: every
	// packet must be that flow's SYN, denied for that reason.
	for _, l := range lines {
		cols := strings.Split(l, "\t")
		if len(cols) != 5 {
			t.Fatalf("tshark line %q: want 5 columns", l)
		}
		if cols[0] != podC || cols[1] != podA || cols[2] != "80" || (cols[3] != "1" && cols[3] != "True") {
			t.Errorf("captured %q, want only the denied SYN %s -> %s:80", l, podC, podA)
		}
		if !strings.Contains(cols[4], "nfqpolicy verdict=deny") || !strings.Contains(cols[4], "reason: deny: ") || !strings.Contains(cols[4], reason) {
			t.Errorf("packet comment %q lacks verdict=deny and reason %q", cols[4], reason)
		}
	}
}

// testStagedAudit: a policy staged by its annotation and one staged by its
// namespace's label let the traffic through, the flow log says would-deny
// and names them, the audit report calls them not safe to promote, and
// promoting one (removing the annotation) makes it deny.
func testStagedAudit(t *testing.T, bin string) {
	var flows string
	c := startObserveCluster(t, bin, "staged", func(dir string) []string {
		flows = filepath.Join(dir, "flows.jsonl")
		return []string{"--flow-log", flows, "--debug-socket", filepath.Join(dir, "debug.sock")}
	})
	c.mustConnect("x/a", "y/c")
	c.mustConnect("x/a", "z/d")
	c.mustConnect("y/c", "x/b") // no staged policy changes it: not logged

	for _, tc := range []struct{ dst, dstPod, policy string }{
		{podC, "y/c", "y/staged-deny"}, // annotation
		{podD, "z/d", "z/deny-all"},    // namespace label
	} {
		e := waitFlow(t, flows, podA, tc.dst, nil)
		t.Logf("flow log: %s", rawLine(t, flows, e.Seq))
		want := "default deny by isolation of " + tc.dstPod + " from " + tc.policy
		if e.Verdict != "allow" || e.Mode != "enforce" || e.AuditVerdict != "would-deny" || !e.AuditDiffers ||
			!slices.Equal(e.StagedPolicies, []string{tc.policy}) || !strings.Contains(e.AuditReason, want) {
			t.Errorf("x/a -> %s logged as %+v, want allow, would-deny by [%s] (%q)", tc.dstPod, e, tc.policy, want)
		}
	}
	for _, e := range readFlowLog(t, flows) {
		if e.Dst == podB {
			t.Errorf("flow no staged policy changes was logged with --flow-log-select denied: %+v", e)
		}
	}
	stats := c.metrics()
	for _, p := range []string{"y/staged-deny", "z/deny-all"} {
		if k := `nfqpolicy_audit_verdicts_total{audit_verdict="would-deny",policy="` + p + `"}`; stats[k] < 1 {
			t.Errorf("%s = %v, want >= 1", k, stats[k])
		}
	}

	out, stderr, code := runCLI(t, bin, "audit", "report", flows)
	t.Logf("nfqpolicy audit report flows.jsonl (exit %d):\n%s%s", code, out, stderr)
	if code != 1 {
		t.Errorf("audit report exit %d, want 1 (a staged policy would cut traffic)", code)
	}
	for _, p := range []string{"y/staged-deny", "z/deny-all"} {
		if !strings.Contains(out, p+": NOT safe to promote: would cut 1 allowed flow(s)") {
			t.Errorf("audit report does not call %s not safe to promote", p)
		}
	}
	js, _, _ := runCLI(t, bin, "audit", "report", "-o", "json", flows)
	var rep struct {
		Complete bool `json:"complete"`
		Policies []struct {
			Policy   string `json:"policy"`
			WouldCut int    `json:"would_cut"`
			Safe     bool   `json:"safe_to_promote"`
		} `json:"staged_policies"`
	}
	if err := json.Unmarshal([]byte(js), &rep); err != nil {
		t.Fatalf("audit report -o json: %v\n%s", err, js)
	}
	if !rep.Complete || len(rep.Policies) != 2 {
		t.Errorf("audit report %+v: want a complete log and two staged policies", rep)
	}
	for _, p := range rep.Policies {
		if p.Safe || p.WouldCut != 1 {
			t.Errorf("audit report: %+v, want not safe, 1 flow cut", p)
		}
	}

	// Promote y/staged-deny: without the annotation it is enforced.
	if err := c.agents.load(context.Background(), loadObserveScenario(t, promoted)); err != nil {
		t.Fatalf("reload: %v", err)
	}
	c.mustNotConnect("x/a", "y/c")
	e := waitFlow(t, flows, podA, podC, func(e *flowlog.Entry) bool { return e.Verdict == "deny" })
	t.Logf("after promotion: %s", rawLine(t, flows, e.Seq))
	if !strings.Contains(e.Reason, "default deny by isolation of y/c from y/staged-deny") || e.AuditDiffers {
		t.Errorf("after promotion x/a -> y/c logged as %+v, want an enforced denial by y/staged-deny", e)
	}
	c.mustConnect("x/a", "z/d") // z is still audited
}

// testAgentAudit: with --mode audit a flow an enforced policy denies still
// connects, and the log and metrics say mode audit, verdict deny.
func testAgentAudit(t *testing.T, bin string) {
	var flows string
	c := startObserveCluster(t, bin, "audit", func(dir string) []string {
		flows = filepath.Join(dir, "flows.jsonl")
		return []string{"--mode", "audit", "--flow-log", flows, "--debug-socket", filepath.Join(dir, "debug.sock")}
	})
	c.mustConnect("y/c", "x/a")
	e := waitFlow(t, flows, podC, podA, nil)
	t.Logf("flow log: %s", rawLine(t, flows, e.Seq))
	if e.Verdict != "deny" || e.Mode != "audit" || !strings.Contains(e.Reason, "default deny by isolation of x/a from x/deny-all") {
		t.Errorf("audited flow logged as %+v, want verdict deny, mode audit, reason naming x/deny-all", e)
	}
	if v := c.metrics()[`nfqpolicy_verdicts_total{mode="audit",verdict="deny"}`]; v < 1 {
		t.Errorf(`nfqpolicy_verdicts_total{mode="audit",verdict="deny"} = %v, want >= 1`, v)
	}
}

// slowReader reads a FIFO a little at a time, sleeping in between, until
// catchUp is closed; then at full speed.
type slowReader struct {
	r       io.Reader
	catchUp chan struct{}
}

func (s *slowReader) Read(p []byte) (int, error) {
	select {
	case <-s.catchUp:
	default:
		time.Sleep(50 * time.Millisecond)
		p = p[:min(len(p), 2048)]
	}
	return s.r.Read(p)
}

// testSlowSink: the flow log goes to a FIFO whose reader sleeps. The
// verdict path must not wait for it: every connection completes, the log
// loses records, reports the loss in the log itself, and written + lost
// equals the flows decided.
func testSlowSink(t *testing.T, bin string) {
	const conns, parallel = 6000, 16
	var fifo string
	var rd *os.File
	c := startObserveCluster(t, bin, "slow", func(dir string) []string {
		fifo = filepath.Join(dir, "flows.fifo")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		// Open the read side first, non-blocking: the agent's open for
		// writing then succeeds at once.
		var err error
		if rd, err = os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rd.Close() })
		return []string{"--flow-log", fifo, "--flow-log-select", "all", "--flow-log-rate", "0", "--flow-log-max-bytes", "0",
			"--debug-socket", filepath.Join(dir, "debug.sock")}
	})
	sr := &slowReader{r: rd, catchUp: make(chan struct{})}
	type tally struct {
		records, summaries int
		carried, inSummary uint64
		lines              []string
	}
	var mu sync.Mutex
	var got tally
	readDone := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(sr, 64<<10)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				readDone <- err
				return
			}
			var e flowlog.Entry
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				readDone <- fmt.Errorf("flow log line %q: %w", l, err)
				return
			}
			mu.Lock()
			if e.IsSummary() {
				got.summaries++
				got.inSummary += e.Lost
				got.lines = append(got.lines, strings.TrimSpace(l))
			} else {
				got.records++
				got.carried += e.Lost
				if e.Lost > 0 && len(got.lines) < 3 {
					got.lines = append(got.lines, strings.TrimSpace(l))
				}
			}
			mu.Unlock()
		}
	}()

	from, to := c.endpoint("y/c"), c.endpoint("x/b")
	start := time.Now()
	var failed atomic.Int64
	var wg sync.WaitGroup
	work := make(chan struct{})
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				if o := c.pr.once(context.Background(), from, to, 80, "TCP"); !o.allowed {
					if failed.Add(1) <= 5 {
						t.Errorf("connection failed: %s %v", o.detail, o.err)
					}
				}
			}
		}()
	}
	for range conns {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	took := time.Since(start)
	before := c.metrics()
	mu.Lock()
	readSoFar := got.records
	mu.Unlock()
	t.Logf("%d connections in %s (%.0f/s) while the flow log reader sleeps, %d failed", conns, took.Round(time.Millisecond), conns/took.Seconds(), failed.Load())
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d connections failed: the slow log sink delayed verdicts", n, conns)
	}
	if d := before[`nfqpolicy_queue_dropped_total{queue="100"}`] + before[`nfqpolicy_queue_user_dropped_total{queue="100"}`]; d > 0 {
		t.Errorf("the kernel dropped %v queued packets", d)
	}
	// Had the verdicts waited for the sink, they could not have got
	// further ahead of the reader than the buffers hold.
	decidedSoFar := before[`nfqpolicy_verdicts_total{mode="enforce",verdict="allow"}`]
	t.Logf("when the last connection completed: %v flows decided, %d records read by the sleeping reader", decidedSoFar, readSoFar)
	if decidedSoFar < conns || readSoFar > conns/2 {
		t.Errorf("decided %v flows while the reader had %d records: want every flow decided well ahead of the reader", decidedSoFar, readSoFar)
	}
	if lost := before[`nfqpolicy_flowlog_records_total{result="lost"}`]; lost == 0 {
		t.Errorf("no flow log record lost with a sleeping reader: the test did not load the sink")
	}

	// Let the reader catch up, then wait for the totals to settle: every
	// decided flow written or lost, every loss reported in the log.
	close(sr.catchUp)
	var m map[string]float64
	deadline := time.Now().Add(20 * time.Second)
	for {
		m = c.metrics()
		decided := m[`nfqpolicy_verdicts_total{mode="enforce",verdict="allow"}`] + m[`nfqpolicy_verdicts_total{mode="enforce",verdict="deny"}`]
		written, lost := m[`nfqpolicy_flowlog_records_total{result="written"}`], m[`nfqpolicy_flowlog_records_total{result="lost"}`]
		mu.Lock()
		g := got
		mu.Unlock()
		settled := written+lost == decided && float64(g.records) == written && float64(g.carried+g.inSummary) == lost
		if settled || time.Now().After(deadline) {
			t.Logf("decided %v flows; flow log written %v, lost %v, rate_limited %v; the reader saw %d records, loss carried by records %d, by %d summary lines %d",
				decided, written, lost, m[`nfqpolicy_flowlog_records_total{result="rate_limited"}`], g.records, g.carried, g.summaries, g.inSummary)
			for _, l := range g.lines {
				t.Logf("loss reported: %s", l)
			}
			if !settled {
				t.Errorf("totals did not settle in 20s: want written + lost == decided, records read == written, lost reported == lost")
			}
			if decided < conns {
				t.Errorf("decided %v flows for %d connections", decided, conns)
			}
			if lost == 0 || g.carried+g.inSummary == 0 {
				t.Errorf("no loss reported")
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case err := <-readDone:
		t.Errorf("flow log reader stopped early: %v", err)
	default:
	}
}

// testExplainTrace: `explain --agent` and `trace --agent` answer from the
// running agent's live state and decisions; after a reload explain
// follows the new state.
func testExplainTrace(t *testing.T, bin string) {
	var sock string
	c := startObserveCluster(t, bin, "debug", func(dir string) []string {
		sock = filepath.Join(dir, "debug.sock")
		return []string{"--debug-socket", sock}
	})

	out, stderr, code := runCLI(t, bin, "explain", "--agent", sock, "--from", "y/c", "--to", "x/a", "--port", "80/TCP")
	t.Logf("nfqpolicy explain --agent SOCK --from y/c --to x/a --port 80/TCP (exit %d):\n%s%s", code, out, stderr)
	if code != 0 || !strings.Contains(out, "verdict: DENY") || !strings.Contains(out, "policy x/deny-all") {
		t.Errorf("explain y/c -> x/a: want DENY naming x/deny-all")
	}
	out, _, code = runCLI(t, bin, "explain", "--agent", sock, "--from", "y/c", "--to", "x/b", "--port", "80/TCP")
	if code != 0 || !strings.Contains(out, "verdict: ALLOW") || !strings.Contains(out, "policy x/allow-b-from-y") || !strings.Contains(out, "MATCH") {
		t.Errorf("explain y/c -> x/b (exit %d): want ALLOW with a MATCH in x/allow-b-from-y:\n%s", code, out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := exec.CommandContext(ctx, bin, "trace", "--agent", sock, "--from", "y/c")
	pipe, err := tr.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var trErr strings.Builder
	tr.Stderr = &trErr
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	defer tr.Wait()
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// The trace subscribes asynchronously: connect until it shows a
	// decision, then deny one flow and wait for it.
	waitLine := func(want string, poke func()) string {
		deadline := time.After(10 * time.Second)
		for {
			if poke != nil {
				poke()
			}
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("trace ended: %s", trErr.String())
				}
				if strings.Contains(l, want) {
					return l
				}
			case <-time.After(200 * time.Millisecond):
			case <-deadline:
				t.Fatalf("trace printed no line with %q in 10s (stderr %q)", want, trErr.String())
			}
		}
	}
	allow := waitLine("x/b ("+podB+"):80/TCP", func() { c.mustConnect("y/c", "x/b") })
	t.Logf("nfqpolicy trace --agent SOCK --from y/c: %s", allow)
	if !strings.Contains(allow, " ALLOW ") || !strings.Contains(allow, "allowed by x/allow-b-from-y ingress[0]") {
		t.Errorf("trace line %q: want ALLOW by x/allow-b-from-y", allow)
	}
	denied := make(chan outcome, 1)
	from, to := c.endpoint("y/c"), c.endpoint("x/a")
	go func() { denied <- c.pr.once(context.Background(), from, to, 80, "TCP") }()
	deny := waitLine("x/a ("+podA+"):80/TCP", nil)
	if o := <-denied; o.allowed {
		t.Errorf("y/c -> x/a connected while x/deny-all isolates x/a")
	}
	t.Logf("nfqpolicy trace --agent SOCK --from y/c: %s", deny)
	if !strings.Contains(deny, " DENY ") || !strings.Contains(deny, "default deny by isolation of x/a from x/deny-all") {
		t.Errorf("trace line %q: want DENY by isolation from x/deny-all", deny)
	}
	cancel()

	// Live state: promote nothing, but drop x/deny-all and explain again.
	p := loadObserveScenario(t, stagedAnnotation)
	var pols = p.s.Cluster.Policies[:0]
	for _, pol := range p.s.Cluster.Policies {
		if pol.Namespace+"/"+pol.Name != "x/deny-all" {
			pols = append(pols, pol)
		}
	}
	p.s.Cluster.Policies = pols
	if err := c.agents.load(context.Background(), p); err != nil {
		t.Fatalf("reload: %v", err)
	}
	out, _, code = runCLI(t, bin, "explain", "--agent", sock, "--from", "y/c", "--to", "x/a", "--port", "80/TCP")
	t.Logf("after deleting x/deny-all, explain --agent:\n%s", out)
	if code != 0 || !strings.Contains(out, "verdict: ALLOW") || strings.Contains(out, "x/deny-all") {
		t.Errorf("explain after the reload (exit %d): want ALLOW without x/deny-all", code)
	}
	c.mustConnect("y/c", "x/a")
}
