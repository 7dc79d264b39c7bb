package scale

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// nsStem prefixes every namespace the harness creates (with its pid, so a
// later run sweeps what a killed one left).
const nsStem = "nfqscale-"

const (
	apiInNode  = "127.0.0.1:6443" // the API server as an agent sees it
	healthAddr = "127.0.0.1:9901"
	probePort  = 8080
)

// nodeNS is one node stand-in: a network namespace with an agent fed by
// the API server through a relay that counts the bytes each way.
type nodeNS struct {
	ns    *netns.NS
	index int

	relay   *relay
	agent   *exec.Cmd
	done    chan struct{}
	logPath string
	http    *http.Client
}

func nsName(suffix string) string { return fmt.Sprintf("%s%d-%s", nsStem, os.Getpid(), suffix) }

// newNS creates a namespace with lo up; cleanup deletes it.
func newNS(ctx context.Context, suffix string, cleanup func(func())) (*netns.NS, error) {
	ns, err := netns.Create(ctx, nsName(suffix), netns.Replace())
	if err != nil {
		return nil, err
	}
	cleanup(func() { _ = ns.Delete() })
	if err := ns.IPBatch(ctx, []string{"link set lo up"}); err != nil {
		return nil, err
	}
	return ns, nil
}

// startNode creates node k's namespace, the relay to the API server and
// the agent.
func startNode(ctx context.Context, k int, bin, dir string, cfg *rest.Config, extraArgs []string, cleanup func(func())) (*nodeNS, error) {
	ns, err := newNS(ctx, fmt.Sprintf("node%d", k), cleanup)
	if err != nil {
		return nil, err
	}
	n := &nodeNS{ns: ns, index: k, done: make(chan struct{})}
	if _, err := ns.Exec(ctx, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
		return nil, err
	}
	var l net.Listener
	if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", apiInNode); return err }); err != nil {
		return nil, fmt.Errorf("relay listener in %s: %w", ns.Name, err)
	}
	n.relay = newRelay(l, strings.TrimPrefix(cfg.Host, "https://"))
	cleanup(n.relay.close)

	kubeconfig := filepath.Join(dir, fmt.Sprintf("kubeconfig-%d", k))
	kc := clientcmdapi.NewConfig()
	kc.Clusters["scale"] = &clientcmdapi.Cluster{Server: "https://" + apiInNode, CertificateAuthority: cfg.TLSClientConfig.CAFile}
	kc.AuthInfos["scale"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["scale"] = &clientcmdapi.Context{Cluster: "scale", AuthInfo: "scale"}
	kc.CurrentContext = "scale"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		return nil, err
	}
	n.logPath = filepath.Join(dir, fmt.Sprintf("agent-%d.log", k))
	lf, err := os.Create(n.logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"netns", "exec", ns.Name, bin, "run", "--node-name", nodeName(k), "--kubeconfig", kubeconfig,
		"--queues", "1", "--health-addr", healthAddr, "--deny-action", "reject", "--ip-families", "ipv4", "--pprof"}, extraArgs...)
	// ip netns exec execs the agent in place: the pid is the agent's.
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start agent: %w", err)
	}
	n.agent = cmd
	go func() { _ = cmd.Wait(); lf.Close(); close(n.done) }()
	cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-n.done
		}
		// The agent leaves its rules in place on purpose; the namespace
		// deletion removes them with everything else.
	})
	n.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			derr := ns.Do(func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return nil
			})
			if derr != nil {
				return nil, derr
			}
			return c, err
		},
	}}
	return n, nil
}

// waitReady waits until the agent enforces.
func (n *nodeNS) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-n.done:
			return fmt.Errorf("agent %d exited:\n%s", n.index, tail(n.logPath))
		default:
		}
		resp, err := n.http.Get("http://" + healthAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %d not ready after %v:\n%s", n.index, timeout, tail(n.logPath))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// metrics scrapes the agent's counters we report.
func (n *nodeNS) metrics() (map[string]float64, error) {
	resp, err := n.http.Get("http://" + healthAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	want := map[string]bool{
		"nfqpolicy_watch_events_total": true, "nfqpolicy_watch_events_relevant_total": true,
		"nfqpolicy_cluster_rebuilds_total":       true,
		"nfqpolicy_compile_duration_seconds_sum": true, "nfqpolicy_compile_duration_seconds_count": true,
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !want[name] {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = f
		}
	}
	return out, sc.Err()
}

// profile saves the agent's CPU profile over d to path.
func (n *nodeNS) profile(d time.Duration, path string) error {
	return n.save(fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())), path)
}

// save writes what the agent serves at urlPath to path.
func (n *nodeNS) save(urlPath, path string) error {
	resp, err := n.http.Get("http://" + healthAddr + urlPath)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// usage is a process's CPU time so far and its resident set.
type usage struct {
	at  time.Time
	cpu time.Duration
	rss int64 // bytes
}

// procUsage reads /proc/pid/stat (utime+stime) and /proc/pid/status.
func procUsage(pid int) (usage, error) {
	u := usage{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return u, errors.New("malformed /proc/pid/stat")
	}
	f := strings.Fields(string(stat[i+2:]))
	// Fields after the name start at field 3 (state); utime and stime are
	// fields 14 and 15, cutime and cstime (the children it waited for:
	// the agent's ipset and iptables runs, which are its cost too) 16
	// and 17.
	if len(f) < 15 {
		return u, errors.New("short /proc/pid/stat")
	}
	var ticks int64
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return u, fmt.Errorf("/proc/pid/stat: %w", err)
		}
		ticks += n
	}
	u.cpu = time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			u.rss = kb << 10
		}
	}
	return u, nil
}

func cores(a, b usage) float64 {
	wall := b.at.Sub(a.at)
	if wall <= 0 {
		return 0
	}
	return float64(b.cpu-a.cpu) / float64(wall)
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// relay accepts connections in a node namespace and forwards each to the
// API server in the harness's own namespace, counting the bytes: what the
// API server sends this agent (down) and receives from it (up). It is how
// an agent in a namespace reaches the loopback-only API server without a
// link or address in the root namespace.
type relay struct {
	l        net.Listener
	target   string
	up, down atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

func newRelay(l net.Listener, target string) *relay {
	r := &relay{l: l, target: target, conns: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.serve()
	return r
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", r.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns[c], r.conns[up] = true, true
		r.mu.Unlock()
		r.wg.Add(2)
		go func() {
			defer r.wg.Done()
			n, _ := io.Copy(up, c)
			r.up.Add(n)
			up.Close()
		}()
		go func() {
			defer r.wg.Done()
			n, _ := io.Copy(countingWriter{c, &r.down}, up)
			_ = n
			c.Close()
		}()
	}
}

// countingWriter counts as it goes, so that a long watch stream's bytes
// are seen while it runs, not when it ends.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (cw countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n.Add(int64(n))
	return n, err
}

func (r *relay) close() {
	r.l.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
