package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/dataplane/agent"
	"github.com/nfqpolicy/nfqpolicy/dataplane/internal/nstest"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
)

// snapshot is the cluster of the test: pods a and b on node1 (the node
// namespace), b isolated for ingress and open to a on the given TCP ports.
func snapshot(r *nstest.Routed, ports ...int) string {
	var ps []string
	for _, p := range ports {
		ps = append(ps, fmt.Sprintf("    - {protocol: TCP, port: %d}", p))
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {kubernetes.io/metadata.name: demo}}
---
apiVersion: v1
kind: Node
metadata: {name: node1}
status: {addresses: [{type: InternalIP, address: %s}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: a}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: %s, podIPs: [{ip: %s}, {ip: %s}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: b}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: %s, podIPs: [{ip: %s}, {ip: %s}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: demo}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports:
%s
`, r.GwA4, r.A4, r.A4, r.A6, r.B4, r.B4, r.B6, strings.Join(ps, "\n"))
}

// buildBinary builds cmd/nfqpolicy once per test binary.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "nfqpolicy-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nfqpolicy")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/nfqpolicy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/nfqpolicy: %w: %s", err, out)
	}
	return bin, nil
})

// syncBuffer collects the agent's stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan error
}

func startAgent(t *testing.T, r *nstest.Routed, bin string, args ...string) *running {
	t.Helper()
	argv := append([]string{"netns", "exec", r.Node.Name, bin, "run"}, args...)
	cmd := exec.Command("ip", argv...)
	logs := &syncBuffer{}
	cmd.Stderr, cmd.Stdout = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &running{cmd: cmd, logs: logs, done: make(chan error, 1)}
	go func() { a.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	return a
}

// stop sends SIGTERM and returns the exit error (nil for status 0).
func (a *running) stop(t *testing.T) error {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not exit within 10s of SIGTERM")
	}
	return nil
}

// httpInNode is an HTTP client whose connections are opened inside the
// node namespace, where the agent's health endpoint listens.
func httpInNode(r *nstest.Routed) *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := r.Node.Do(func() error {
				var err error
				c, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

func waitReady(t *testing.T, cl *http.Client, a *running) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-a.done:
			t.Fatalf("agent exited before ready: %v\n%s", err, a.logs.String())
		default:
		}
		resp, err := cl.Get("http://127.0.0.1:9901/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("agent not ready within 15s\n%s", a.logs.String())
}

func counters(t *testing.T, cl *http.Client) agent.Status {
	t.Helper()
	resp, err := cl.Get("http://127.0.0.1:9901/debug/counters")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s agent.Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func queued(t *testing.T, r *nstest.Routed) uint64 {
	t.Helper()
	st, err := dataplane.ParseQueueStats(strings.NewReader(r.Node.Run("cat", dataplane.ProcQueuePath)))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, s := range st {
		n += uint64(s.IDSequence)
	}
	return n
}

// TestAgentBinary runs `nfqpolicy run` inside the node namespace on a
// snapshot file, and checks policy enforcement (both families), the fast
// path, a policy change, SIGTERM with an established flow, restart, and
// `nfqpolicy cleanup`.
func TestAgentBinary(t *testing.T) {
	nstest.Require(t, append(iptables.Tools(iptables.Auto), "go")...)
	nstest.Sweep(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	r := nstest.NewRouted(t)
	snap := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(snap, []byte(snapshot(r, 8080)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []netip.Addr{r.B4, r.B6} {
		r.B.ServeEcho(t, addr, 8080)
		r.B.ServeEcho(t, addr, 8081)
	}
	r.A.ServeEcho(t, r.A4, 9000)
	args := []string{"--node-name", "node1", "--snapshot", snap, "--snapshot-poll", "100ms",
		"--queues", "2", "--deny-action", "reject", "--health-addr", "127.0.0.1:9901"}
	ag := startAgent(t, r, bin, args...)
	cl := httpInNode(r)
	waitReady(t, cl, ag)

	for _, addr := range []netip.Addr{r.B4, r.B6} {
		before := queued(t, r)
		c, err := r.A.Dial(addr, 8080, 2*time.Second)
		if err != nil {
			t.Fatalf("a -> %s:8080 (allowed by b-from-a): %v", addr, err)
		}
		for i := range 50 {
			if err := nstest.Echo(c, fmt.Sprint("m", i)); err != nil {
				t.Fatalf("a -> %s:8080 round trip %d: %v", addr, i, err)
			}
		}
		c.Close()
		if d := queued(t, r) - before; d != 1 {
			t.Errorf("a -> %s:8080: %d packets queued for connect + 50 round trips, want 1", addr, d)
		}
		start := time.Now()
		if c, err := r.A.Dial(addr, 8081, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("a -> %s:8081 succeeded; b-from-a allows only 8080", addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("a -> %s:8081: %v, want ECONNREFUSED (--deny-action reject)", addr, err)
		} else {
			t.Logf("a -> %s:8081 refused in %v", addr, time.Since(start).Round(time.Microsecond))
		}
	}
	// The node itself (kubelet probes) reaches b on a port a may not use:
	// OUTPUT is never diverted.
	before := queued(t, r)
	if c, err := r.Node.Dial(r.B4, 8081, 2*time.Second); err != nil {
		t.Errorf("node -> b:8081 (kubelet probe path): %v", err)
	} else {
		c.Close()
	}
	if d := queued(t, r) - before; d != 0 {
		t.Errorf("node -> b queued %d packets, want 0", d)
	}
	// b -> a: a is not isolated, b's egress is not either.
	if c, err := r.B.Dial(r.A4, 9000, 2*time.Second); err != nil {
		t.Errorf("b -> a:9000 (nothing isolates it): %v", err)
	} else {
		c.Close()
	}

	// Policy change: 8081 opens once the agent has recompiled.
	if err := os.WriteFile(snap, []byte(snapshot(r, 8080, 8081)), 0o644); err != nil {
		t.Fatal(err)
	}
	opened := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := r.A.Dial(r.B4, 8081, time.Second); err == nil {
			c.Close()
			opened = true
			break
		}
	}
	if !opened {
		t.Fatal("a -> b:8081 still denied 10s after the policy allowed it")
	}
	// Verdicts are counted after they are sent, so the last one may lag
	// the connection it let through by a moment.
	st := counters(t, cl)
	for deadline := time.Now().Add(2 * time.Second); (st.Total.Allowed < 4 || st.Total.Denied < 2) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		st = counters(t, cl)
	}
	t.Logf("counters after the policy change: allowed=%d denied=%d malformed=%d compiles=%d local_addrs=%d cache hits/misses=%d/%d",
		st.Total.Allowed, st.Total.Denied, st.Total.Malformed, st.Compiles, st.LocalAddrs, st.CacheHits, st.CacheMisses)
	if st.Compiles < 2 || st.Total.Allowed < 4 || st.Total.Denied < 2 || st.LocalAddrs != 4 || len(st.Queues) != 2 {
		t.Errorf("counters do not add up: %+v", st)
	}

	resp, err := cl.Get("http://127.0.0.1:9901/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`nfqpolicy_verdicts_total{mode="enforce",verdict="allow"}`, `nfqpolicy_compiles_total{result="ok"} 2`} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// SIGTERM with an established connection: it keeps flowing.
	c, err := r.A.Dial(r.B4, 8080, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := ag.stop(t); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v, want status 0", err)
	}
	for i := range 10 {
		if err := nstest.Echo(c, fmt.Sprint("down", i)); err != nil {
			t.Fatalf("established connection broke with the agent stopped: %v", err)
		}
	}
	if c2, err := r.A.Dial(r.B4, 8080, time.Second); err == nil {
		c2.Close()
		t.Error("new connection passed with no agent and no --fail-open")
	}
	for line := range strings.Lines(ag.logs.String()) {
		if !json.Valid([]byte(line)) {
			t.Errorf("agent log line is not JSON: %q", line)
		}
	}

	// Restart: rules are re-installed idempotently, both flows work.
	ag = startAgent(t, r, bin, args...)
	waitReady(t, cl, ag)
	if err := nstest.Echo(c, "after restart"); err != nil {
		t.Fatalf("established connection broke across the restart: %v", err)
	}
	if c3, err := r.A.Dial(r.B4, 8080, 2*time.Second); err != nil {
		t.Errorf("new connection after restart: %v", err)
	} else {
		c3.Close()
	}
	if n := strings.Count(r.Node.Run("iptables-save", "-t", "filter"), "-j NFQPOLICY-FORWARD"); n != 1 {
		t.Errorf("%d jumps to NFQPOLICY-FORWARD after a restart, want 1", n)
	}
	if err := ag.stop(t); err != nil {
		t.Fatalf("second agent exit: %v", err)
	}

	// Cleanup, twice: nothing of ours remains.
	for i := range 2 {
		out, err := r.Node.Try(bin, "cleanup")
		if err != nil {
			t.Fatalf("cleanup #%d: %v", i+1, err)
		}
		t.Logf("cleanup #%d: %s", i+1, strings.TrimSpace(out))
	}
	all := r.Node.Run("iptables-save") + r.Node.Run("ip6tables-save") + r.Node.Run("ipset", "list", "-n")
	if strings.Contains(all, "NFQPOLICY") {
		t.Errorf("NFQPOLICY left after cleanup:\n%s", all)
	}
}

// TestRunRefusesBadFlags checks flag validation without touching any
// kernel state.
func TestRunRefusesBadFlags(t *testing.T) {
	nstest.Require(t, "go")
	nstest.Sweep(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	// In a namespace of its own, and with a snapshot that does not exist,
	// so that even a case that wrongly passed validation could change
	// nothing anywhere.
	ns := nstest.New(t, "flags")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--node-name", "n", "--mark-bits", "0x4000,0x8000/0xc000"}, "overlaps kube-proxy"},
		{[]string{"--node-name", "n", "--deny-action", "accept"}, "want drop or reject"},
		{[]string{"--node-name", "n", "--invalid", "accept"}, "want drop or pass"},
		{[]string{"--node-name", "n", "--established", "forget"}, "want keep or recheck"},
		{[]string{"--node-name", "n", "--queues", "0"}, "--queues 0"},
		{[]string{"--node-name", "n", "--queue-num", "65535", "--queues", "2"}, "end at 65535"},
		{[]string{"--mark-bits", "0x1,0x2/0x3"}, "--node-name (or NODE_NAME) is required"},
		{[]string{"--node-name", "n", "--log-level", "loud"}, "--log-level"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			argv := append([]string{"netns", "exec", ns.Name, bin, "run", "--snapshot", "/nonexistent", "--health-addr", ""}, tt.args...)
			cmd := exec.Command("ip", argv...)
			cmd.Env = append(os.Environ(), "NODE_NAME=")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; output %s", err, out)
			}
			if !bytes.Contains(out, []byte(tt.want)) {
				t.Fatalf("output lacks %q:\n%s", tt.want, out)
			}
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				if line := sc.Bytes(); !json.Valid(line) && !bytes.HasPrefix(line, []byte("nfqpolicy run:")) {
					t.Errorf("not a JSON log line: %s", line)
				}
			}
		})
	}
}

// TestPreflight: without CAP_NET_ADMIN, or without the iptables and ipset
// binaries, run and cleanup refuse up front with a clear message (status
// 2) instead of failing half-installed.
func TestPreflight(t *testing.T) {
	nstest.Require(t, "go", "setpriv")
	nstest.Sweep(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ns := nstest.New(t, "preflight")
	run := []string{"run", "--node-name", "n", "--snapshot", "/nonexistent", "--health-addr", ""}
	tests := []struct {
		name string
		pre  []string // between `ip netns exec NS` and the binary
		env  []string
		args []string
		want string
	}{
		{"run without CAP_NET_ADMIN", []string{"setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"}, nil, run, "missing CAP_NET_ADMIN"},
		{"cleanup without CAP_NET_ADMIN", []string{"setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"}, nil, []string{"cleanup"}, "missing CAP_NET_ADMIN"},
		{"run without iptables", nil, []string{"PATH=/nonexistent"}, run, "missing iptables-legacy-save, iptables-legacy-restore, ip6tables-legacy-save, ip6tables-legacy-restore, " +
			"iptables-nft-save, iptables-nft-restore, ip6tables-nft-save, ip6tables-nft-restore, ipset in PATH"},
		{"cleanup without iptables", nil, []string{"PATH=/nonexistent"}, []string{"cleanup"}, "missing iptables-legacy-save"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			argv := append(append(append([]string{"netns", "exec", ns.Name}, tt.pre...), bin), tt.args...)
			cmd := exec.Command("ip", argv...)
			cmd.Env = append(os.Environ(), tt.env...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; output %s", err, out)
			}
			if !bytes.Contains(out, []byte(tt.want)) {
				t.Fatalf("output lacks %q:\n%s", tt.want, out)
			}
			t.Logf("%s", bytes.TrimSpace(out))
		})
	}
	if out := ns.Run("iptables-save"); strings.Contains(out, "NFQPOLICY") {
		t.Errorf("a refused run changed the namespace:\n%s", out)
	}
}

// TestPrintRules: --print-rules prints exactly what install renders for a
// clean node, both families, and nothing else.
func TestPrintRules(t *testing.T) {
	nstest.Require(t, "go")
	nstest.Sweep(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	ns := nstest.New(t, "print") // should the flag ever fall through to running
	out := ns.Run(bin, "run", "--node-name", "n", "--print-rules", "--queues", "3", "--queue-num", "7",
		"--fail-open", "--deny-action", "reject", "--mark-bits", "0x100000,0x200000/0x300000", "--health-addr", "")
	c := iptables.Config{Marks: iptables.Marks{Allow: 0x100000, Deny: 0x200000, Mask: 0x300000}, QueueBase: 7, Queues: 3, FailOpen: true, Deny: iptables.Reject}
	want := "# ipv4: iptables-restore --noflush\n" + iptables.RenderInstall(c, iptables.IPv4, "") +
		"# ipv6: ip6tables-restore --noflush\n" + iptables.RenderInstall(c, iptables.IPv6, "")
	if out != want {
		t.Errorf("--print-rules printed\n%s\nwant\n%s", out, want)
	}
	if !strings.Contains(out, "-j NFQUEUE --queue-balance 7:9 --queue-bypass") {
		t.Errorf("queue options missing from\n%s", out)
	}
}

// TestAgentRecheck: with --established recheck, a connection a policy
// change denies is cut (conntrack entry deleted; its next packet is NEW
// again, queued, denied and answered with a reset), while with keep (the
// default, TestAgentBinary) it would go on.
func TestAgentRecheck(t *testing.T) {
	nstest.Require(t, append(iptables.Tools(iptables.Auto), "go", "conntrack")...)
	nstest.Sweep(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	r := nstest.NewRouted(t)
	snap := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(snap, []byte(snapshot(r, 8080, 8081)), 0o644); err != nil {
		t.Fatal(err)
	}
	r.B.ServeEcho(t, r.B4, 8080)
	r.B.ServeEcho(t, r.B4, 8081)
	ag := startAgent(t, r, bin, "--node-name", "node1", "--snapshot", snap, "--snapshot-poll", "100ms",
		"--queues", "1", "--deny-action", "reject", "--established", "recheck", "--health-addr", "127.0.0.1:9901")
	cl := httpInNode(r)
	waitReady(t, cl, ag)

	kept, err := r.A.Dial(r.B4, 8080, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	cut, err := r.A.Dial(r.B4, 8081, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	for _, c := range []net.Conn{kept, cut} {
		if err := nstest.Echo(c, "before"); err != nil {
			t.Fatal(err)
		}
	}
	// 8081 no longer allowed.
	if err := os.WriteFile(snap, []byte(snapshot(r, 8080)), 0o644); err != nil {
		t.Fatal(err)
	}
	var cutErr error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if cutErr = nstest.Echo(cut, "x"); cutErr != nil {
			break
		}
	}
	if cutErr == nil {
		t.Fatalf("connection to 8081 still flows 10s after the policy stopped allowing it\n%s", ag.logs.String())
	}
	t.Logf("connection to the now-denied port: %v", cutErr)
	if err := nstest.Echo(kept, "still allowed"); err != nil {
		t.Errorf("connection to the still-allowed port broke: %v", err)
	}
	if err := ag.stop(t); err != nil {
		t.Errorf("agent exit: %v", err)
	}
}
