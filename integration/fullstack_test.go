package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
)

// Addresses inside the test's namespaces only: a routed node with two pods.
const (
	nodeName   = "fs-node"
	podAAddr   = "10.99.1.2"
	podBAddr   = "10.99.2.2"
	nodeAAddr  = "10.99.1.1" // node side of pod a's veth
	nodeBAddr  = "10.99.2.1"
	echoPort   = "8080"
	apiInNode  = "127.0.0.1:6443" // the API server as the agent sees it
	healthAddr = "127.0.0.1:9901"
)

// fullStack is one node namespace with two pod namespaces, an agent in the
// node fed by the real API server, and an echo server in pod b.
type fullStack struct {
	srv          *apiserver.Server
	client       kubernetes.Interface
	node, a, b   *netns
	agentBin     string
	agentArgs    []string
	dir          string
	agent        *exec.Cmd
	agentDone    chan struct{}
	health       *http.Client
	probeTimeout time.Duration
	// target is where new connections from pod a go (default pod b's
	// echo server).
	target string
}

// TestFullStackAPIServer runs `nfqpolicy run --kubeconfig` in a node
// namespace against a real kube-apiserver and checks real TCP connections
// between two pod namespaces follow policy changes made through the API:
// create, update (policy spec and pod labels), delete. Then it kills the
// agent: the established connection must keep working and new ones must
// not (fail closed) until a new agent is ready.
func TestFullStackAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("kernel and kube-apiserver test")
	}
	requireKernel(t, "conntrack")
	sweepNamespaces(t)
	fs := newFullStack(t)
	ctx := context.Background()

	fs.expect(t, true, "no policy")

	_, err := fs.client.NetworkingV1().NetworkPolicies("fs").Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "fs", Name: "deny-all"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fs.expect(t, false, "deny-all created")

	patch := `{"spec":{"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"a"}}}],"ports":[{"port":"echo"}]}]}}`
	if _, err := fs.client.NetworkingV1().NetworkPolicies("fs").Patch(ctx, "deny-all", "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	fs.expect(t, true, "policy updated to allow app=a on the named port")

	if _, err := fs.client.CoreV1().Pods("fs").Patch(ctx, "a", "application/merge-patch+json", []byte(`{"metadata":{"labels":{"app":"other"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	fs.expect(t, false, "pod a relabelled out of the rule")

	if err := fs.client.NetworkingV1().NetworkPolicies("fs").Delete(ctx, "deny-all", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	fs.expect(t, true, "policy deleted")

	// Agent failure: an established connection survives, new ones wait.
	conn, err := fs.a.dial(ctx, net.JoinHostPort(podBAddr, echoPort), fs.probeTimeout)
	if err != nil {
		t.Fatalf("opening the long-lived connection: %v", err)
	}
	defer conn.Close()
	roundTrip(t, conn, "before")
	fs.killAgent(t)
	roundTrip(t, conn, "agent down")
	if fs.connects(ctx) {
		t.Fatal("a new connection was allowed while no agent listens (default is fail closed)")
	}
	fs.startAgent(t)
	roundTrip(t, conn, "new agent")
	fs.expect(t, true, "new agent ready")
}

func roundTrip(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	msg := "ping " + what + "\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("%s: established connection write: %v", what, err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("%s: established connection read %q, %v; want %q", what, got, err, msg)
	}
}

func newFullStack(t *testing.T) *fullStack {
	t.Helper()
	fs := &fullStack{dir: t.TempDir(), probeTimeout: 700 * time.Millisecond, target: net.JoinHostPort(podBAddr, echoPort)}
	fs.srv = apiserver.Start(t)
	fs.client = fs.srv.Client(t)
	fs.seedCluster(t)

	fs.agentBin = filepath.Join(fs.dir, "nfqpolicy")
	if out, err := exec.Command("go", "build", "-o", fs.agentBin, "../cmd/nfqpolicy").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	fs.node = newNetns(t, "node")
	fs.a = newNetns(t, "a")
	fs.b = newNetns(t, "b")
	for _, p := range []struct {
		pod                 *netns
		hostIf, addr, gwCID string
	}{{fs.a, "va", podAAddr, nodeAAddr + "/24"}, {fs.b, "vb", podBAddr, nodeBAddr + "/24"}} {
		// Created inside the node namespace, the peer moved straight into
		// the pod's: no link ever exists in the root namespace.
		fs.node.ip(t, fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.hostIf, p.pod.name))
		fs.node.ip(t, fmt.Sprintf("addr add %s dev %s", p.gwCID, p.hostIf))
		fs.node.ip(t, fmt.Sprintf("link set %s up", p.hostIf))
		p.pod.ip(t, fmt.Sprintf("addr add %s/24 dev eth0", p.addr))
		p.pod.ip(t, "link set eth0 up")
		gw, _, _ := strings.Cut(p.gwCID, "/")
		p.pod.ip(t, "route add default via "+gw)
	}
	fs.node.exec(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

	echo(t, fs.b.listen(t, net.JoinHostPort(podBAddr, echoPort)))
	forward(t, fs.node.listen(t, apiInNode), strings.TrimPrefix(fs.srv.URL, "https://"))

	kubeconfig := filepath.Join(fs.dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + apiInNode, CertificateAuthority: fs.srv.Config.TLSClientConfig.CAFile}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: fs.srv.Config.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	fs.agentArgs = []string{"run", "--node-name", nodeName, "--kubeconfig", kubeconfig,
		"--queues", "1", "--health-addr", healthAddr, "--log-level", "debug"}
	fs.health = &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			derr := fs.node.do(func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return nil
			})
			if derr != nil {
				return nil, derr
			}
			return c, err
		},
	}}
	fs.startAgent(t)
	return fs
}

// seedCluster creates what a kubelet and the scheduler would have: the
// node with its address, and two running pods with their IPs.
func (fs *fullStack) seedCluster(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c := fs.client
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fs"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeAAddr}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ name, ip string }{{"a", podAAddr}, {"b", podBAddr}} {
		pod, err := c.CoreV1().Pods("fs").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "fs", Name: p.name, Labels: map[string]string{"app": p.name}},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{
				Name: "c", Image: "registry.invalid/none:1",
				Ports: []corev1.ContainerPort{{Name: "echo", ContainerPort: 8080}},
			}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}},
			HostIP: nodeAAddr, HostIPs: []corev1.HostIP{{IP: nodeAAddr}}}
		if _, err := c.CoreV1().Pods("fs").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func (fs *fullStack) startAgent(t *testing.T) {
	t.Helper()
	logPath := filepath.Join(fs.dir, "agent.log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", fs.node.name, fs.agentBin}, fs.agentArgs...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); lf.Close(); close(done) }()
	fs.agent, fs.agentDone = cmd, done
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				if len(lines) > 40 {
					lines = lines[len(lines)-40:]
				}
				t.Logf("agent log (last lines):\n%s", strings.Join(lines, "\n"))
			}
		}
		fs.stopAgent(syscall.SIGTERM)
		// The agent leaves its rules on purpose; the node namespace's
		// deletion removes them with it.
	})
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		select {
		case <-done:
			t.Fatalf("agent exited before ready (log %s)", logPath)
		default:
		}
		resp, err := fs.health.Get("http://" + healthAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("agent ready after %v", time.Since(start).Round(time.Millisecond))
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready within 30s (last: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (fs *fullStack) stopAgent(sig syscall.Signal) {
	select {
	case <-fs.agentDone:
		return
	default:
	}
	_ = fs.agent.Process.Signal(sig)
	select {
	case <-fs.agentDone:
	case <-time.After(10 * time.Second):
		_ = fs.agent.Process.Kill()
		<-fs.agentDone
	}
}

// killAgent kills the agent outright, as an OOM kill or a node problem
// would: it gets no chance to clean up.
func (fs *fullStack) killAgent(t *testing.T) {
	t.Helper()
	fs.stopAgent(syscall.SIGKILL)
}

// connects reports whether a new TCP connection from pod a to fs.target
// completes a round trip.
func (fs *fullStack) connects(ctx context.Context) bool {
	c, err := fs.a.dial(ctx, fs.target, fs.probeTimeout)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(fs.probeTimeout))
	if _, err := c.Write([]byte("x\n")); err != nil {
		return false
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && got == "x\n"
}

// expect polls until new connections are allowed (or denied) as want; the
// change went API server → informer → compile → engine, so allow a few
// seconds.
func (fs *fullStack) expect(t *testing.T, allow bool, why string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	start := time.Now()
	for {
		got := fs.connects(ctx)
		if got == allow {
			// Confirm: a stale cached verdict could flip back.
			if fs.connects(ctx) == allow {
				t.Logf("%s: allow=%v after %v", why, allow, time.Since(start).Round(time.Millisecond))
				return
			}
		}
		if time.Now().After(deadline) {
			fs.dumpNode(t)
			t.Fatalf("%s: new connections allow=%v, want %v, 10s after the change", why, got, allow)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dumpNode logs the node namespace's rules with counters and its conntrack
// table, for failures.
func (fs *fullStack) dumpNode(t *testing.T) {
	for _, args := range [][]string{{"iptables-save", "-c"}, {"conntrack", "-L"}, {"ipset", "list"}} {
		out, err := exec.Command("ip", append([]string{"netns", "exec", fs.node.name}, args...)...).CombinedOutput()
		t.Logf("%s (err %v):\n%s", strings.Join(args, " "), err, out)
	}
}

// TestFullStackHostPort checks what docs/kubernetes.md says of hostPort: the
// CNI's DNAT (here a portmap-style rule in the node namespace) happens
// before the agent decides, so policies see the destination pod and its
// containerPort, never the hostPort.
func TestFullStackHostPort(t *testing.T) {
	if testing.Short() {
		t.Skip("kernel and kube-apiserver test")
	}
	requireKernel(t, "conntrack")
	sweepNamespaces(t)
	fs := newFullStack(t)
	ctx := context.Background()
	const hostPort = "30080"
	// What the portmap plugin installs for hostPort 30080 -> b:8080.
	fs.node.exec(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", nodeAAddr, "--dport", hostPort,
		"-j", "DNAT", "--to-destination", net.JoinHostPort(podBAddr, echoPort))
	viaHostPort := net.JoinHostPort(nodeAAddr, hostPort)
	fs.target = viaHostPort
	fs.expect(t, true, "hostPort, no policy")

	allowOnly := func(port string) {
		t.Helper()
		spec := fmt.Sprintf(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"only","namespace":"fs"},`+
			`"spec":{"podSelector":{"matchLabels":{"app":"b"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"a"}}}],"ports":[{"port":%s}]}]}}`, port)
		_, err := fs.client.NetworkingV1().NetworkPolicies("fs").Patch(ctx, "only", "application/apply-patch+yaml", []byte(spec),
			metav1.PatchOptions{FieldManager: "test", Force: boolPtr(true)})
		if err != nil {
			t.Fatal(err)
		}
	}
	allowOnly(hostPort)
	fs.expect(t, false, "policy allows only the hostPort number: the pod is reached on its containerPort, so denied")
	allowOnly(echoPort)
	fs.expect(t, true, "policy allows the containerPort: allowed through the hostPort")
	allowOnly(hostPort) // back to denied, so that the next step is a change
	fs.expect(t, false, "policy allows only the hostPort number again")
	allowOnly(`"echo"`)
	fs.expect(t, true, "policy allows the containerPort by name: allowed through the hostPort")
}

func boolPtr(b bool) *bool { return &b }
