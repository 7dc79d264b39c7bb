package realcluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// Real-node checks: what only kubelet, a CNI plugin and kube-proxy in
// front of the agent can show.

// connectsFrom reports whether a TCP connection from ns to addr completes
// within timeout.
func connectsFrom(ns *netns.NS, addr string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := DialFrom(ctx, ns, addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// eventuallyFrom polls connectsFrom until it reports want, failing after
// 20 s.
func eventuallyFrom(t *testing.T, what string, ns *netns.NS, addr string, want bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for connectsFrom(ns, addr, 2*time.Second) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s from %s: connected=%v, want %v", what, addr, ns.Name, !want, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func ingressFromIPBlock(ns, name, cidr string, port int) string {
	return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: %s
  namespace: %s
spec:
  podSelector:
    matchLabels: {app: server}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock: {cidr: %s}
    ports:
    - {protocol: TCP, port: %d}
`, name, ns, cidr, port)
}

// TestRealClusterProbesUnderDefaultDeny: kubelet's readiness and liveness
// probes reach a pod whose namespace denies all ingress and egress, and keep
// it Ready and unrestarted, while other pods are cut off from it.
func TestRealClusterProbesUnderDefaultDeny(t *testing.T) {
	c, _ := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	if err := c.Apply(ctx, fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
  namespace: %s
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
`, ns)); err != nil {
		t.Fatal(err)
	}
	pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: probed
  namespace: %s
  labels: {app: server}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: %s
    args: ["netexec", "--http-port=8080"]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
      failureThreshold: 2
`, ns, AgnhostImage)
	if err := c.Apply(ctx, pod); err != nil {
		t.Fatal(err)
	}
	ips := waitPods(t, c, ns, "probed")
	// The policy is in force: the control plane cannot reach the pod.
	eventuallyFrom(t, "default-deny-all", c.CP, ips["probed"]+":8080", false)
	// 15 probe periods later the pod is still Ready and never restarted.
	time.Sleep(15 * time.Second)
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, "probed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	restarts := p.Status.ContainerStatuses[0].RestartCount
	if !ready || restarts != 0 {
		t.Fatalf("under default-deny: pod Ready=%v restarts=%d, want Ready and 0 restarts (kubelet probes must pass)", ready, restarts)
	}
	if connectsFrom(c.CP, ips["probed"]+":8080", 2*time.Second) {
		t.Fatal("default-deny-all: the control plane reached the pod")
	}
}

// TestRealClusterNodePortAndHostPort: a NodePort Service (kube-proxy DNAT)
// and a hostPort (CNI portmap DNAT) are decided on the pod and its
// containerPort: a policy naming the node port denies, one naming the
// containerPort allows.
func TestRealClusterNodePortAndHostPort(t *testing.T) {
	c, _ := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	const hostPort, nodePort = 30081, 30082
	if err := c.Apply(ctx, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: %[1]s
  labels: {app: server}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: %[2]s
    args: ["netexec", "--http-port=8080"]
    ports:
    - {containerPort: 8080, hostPort: %[3]d, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: %[1]s
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: server}
  ports:
  - {port: 80, targetPort: 8080, nodePort: %[4]d, protocol: TCP}
`, ns, AgnhostImage, hostPort, nodePort)); err != nil {
		t.Fatal(err)
	}
	waitPods(t, c, ns, "server")
	node2 := c.Nodes[1].IP.String()
	hp := net.JoinHostPort(node2, strconv.Itoa(hostPort))
	np := net.JoinHostPort(node2, strconv.Itoa(nodePort))
	// No policy yet: both paths work (so a later failure is the policy's).
	eventuallyFrom(t, "no policy, hostPort", c.CP, hp, true)
	eventuallyFrom(t, "no policy, NodePort", c.CP, np, true)
	cp := ControlPlaneIP.String() + "/32"
	// Allowing the outside ports does not open the pod: the agent sees
	// the packet after DNAT, at the containerPort.
	if err := c.Apply(ctx, ingressFromIPBlock(ns, "allow", cp, hostPort)); err != nil {
		t.Fatal(err)
	}
	eventuallyFrom(t, "policy on the hostPort number, hostPort", c.CP, hp, false)
	if err := c.Apply(ctx, ingressFromIPBlock(ns, "allow", cp, nodePort)); err != nil {
		t.Fatal(err)
	}
	eventuallyFrom(t, "policy on the nodePort number, NodePort", c.CP, np, false)
	if connectsFrom(c.CP, hp, 2*time.Second) {
		t.Fatal("policy on the nodePort number: hostPort connected")
	}
	// Allowing the containerPort opens both.
	if err := c.Apply(ctx, ingressFromIPBlock(ns, "allow", cp, 8080)); err != nil {
		t.Fatal(err)
	}
	eventuallyFrom(t, "policy on the containerPort, hostPort", c.CP, hp, true)
	eventuallyFrom(t, "policy on the containerPort, NodePort", c.CP, np, true)
}

// TestRealClusterClusterIPAfterDNAT: a Service's ClusterIP flow is decided
// after kube-proxy's DNAT, on the backend pod and its targetPort.
func TestRealClusterClusterIPAfterDNAT(t *testing.T) {
	c, _ := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	if err := c.Apply(ctx, agnhostPod(ns, "server", "node-2", map[string]string{"app": "server"}, "netexec", "--http-port=8080")+"\n---\n"+
		agnhostPod(ns, "client", "node-1", map[string]string{"app": "client"}, "pause")+fmt.Sprintf(`
---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: %s
spec:
  selector: {app: server}
  ports:
  - {port: 80, targetPort: 8080, protocol: TCP}
`, ns)); err != nil {
		t.Fatal(err)
	}
	waitPods(t, c, ns, "server", "client")
	svc, err := c.Client.CoreV1().Services(ns).Get(ctx, "server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	eventually(t, c, ns, "client", addr, true)
	policy := func(port int) string {
		return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-client
  namespace: %s
spec:
  podSelector:
    matchLabels: {app: server}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: client}
    ports:
    - {protocol: TCP, port: %d}
`, ns, port)
	}
	// The Service port is not what the agent sees.
	if err := c.Apply(ctx, policy(80)); err != nil {
		t.Fatal(err)
	}
	eventually(t, c, ns, "client", addr, false)
	if err := c.Apply(ctx, policy(8080)); err != nil {
		t.Fatal(err)
	}
	eventually(t, c, ns, "client", addr, true)
}

// TestRealClusterNewPodEnforcedFromFirstPacket: pods created after the
// policy, whose very first action is to connect, never get through (the
// agent may not have synced them yet: the node's real podCIDR diverts them
// and they are denied as unknown pods), while a pod the policy allows does
// connect once known.
func TestRealClusterNewPodEnforcedFromFirstPacket(t *testing.T) {
	c, _ := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	if err := c.Apply(ctx, agnhostPod(ns, "server", "node-2", map[string]string{"app": "server"}, "netexec", "--http-port=8080")); err != nil {
		t.Fatal(err)
	}
	ip := waitPods(t, c, ns, "server")["server"]
	if err := c.Apply(ctx, fmt.Sprintf(defaultDenyIngress, ns)+"---\n"+fmt.Sprintf(allowFromClient, ns)); err != nil {
		t.Fatal(err)
	}
	// The policy is compiled on node-2 before the new pods exist.
	eventuallyFrom(t, "default-deny", c.CP, ip+":8080", false)
	var pods strings.Builder
	const intruders = 4
	for i := range intruders {
		node := nodeNames[i%2]
		fmt.Fprintf(&pods, `apiVersion: v1
kind: Pod
metadata:
  name: intruder-%d
  namespace: %s
  labels: {app: intruder}
spec:
  nodeName: %s
  restartPolicy: Never
  containers:
  - name: c
    image: %s
    args: ["connect", "%s:8080", "--timeout=3s"]
---
`, i, ns, node, AgnhostImage, ip)
	}
	fmt.Fprintf(&pods, `apiVersion: v1
kind: Pod
metadata:
  name: late-client
  namespace: %s
  labels: {app: client}
spec:
  nodeName: node-1
  restartPolicy: OnFailure
  containers:
  - name: c
    image: %s
    args: ["connect", "%s:8080", "--timeout=3s"]
`, ns, AgnhostImage, ip)
	if err := c.Apply(ctx, pods.String()); err != nil {
		t.Fatal(err)
	}
	phases := map[string]corev1.PodPhase{}
	deadline := time.Now().Add(90 * time.Second)
	for {
		list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, p := range list.Items {
			phases[p.Name] = p.Status.Phase
			if p.Name != "server" && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
				done++
			}
		}
		if done == intruders+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods did not finish: %v", phases)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i := range intruders {
		name := fmt.Sprintf("intruder-%d", i)
		if phases[name] != corev1.PodFailed {
			logs, _ := c.Kubectl(ctx, "logs", "-n", ns, name)
			t.Errorf("%s (created after the policy, connects at start): %s, want Failed (its connection denied): %s", name, phases[name], logs)
		}
	}
	if phases["late-client"] != corev1.PodSucceeded {
		t.Errorf("late-client (allowed by the policy): %s, want Succeeded", phases["late-client"])
	}
}

// evidenceFile is a file the agent on node wrote under deploy/'s hostPath
// /var/log/nfqpolicy/<node> (the image has no cat to read it through
// kubectl exec; its own nfqpolicy reads it there, see below).
func evidenceFile(node, name string) string { return "/var/log/nfqpolicy/" + node + "/" + name }

// TestRealClusterObserveFromAgentPod: `nfqpolicy trace --agent` streams a
// denied cross-node flow from inside the agent's pod (kubectl exec), the
// flow log holds its record (summarised by `nfqpolicy audit report` run in
// the pod) and the capture its packet. The client's node decides the flow
// (the agent there evaluates both sides and drops it at the source), so
// that node's agent is the one observed.
func TestRealClusterObserveFromAgentPod(t *testing.T) {
	c, dep := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	if err := c.Apply(ctx, agnhostPod(ns, "server", "node-2", map[string]string{"app": "server"}, "netexec", "--http-port=8080")+"\n---\n"+
		agnhostPod(ns, "client", "node-1", map[string]string{"app": "client"}, "pause")+"\n---\n"+fmt.Sprintf(defaultDenyIngress, ns)); err != nil {
		t.Fatal(err)
	}
	ips := waitPods(t, c, ns, "server", "client")
	addr := ips["server"] + ":8080"
	eventually(t, c, ns, "client", addr, false)
	agent, err := dep.AgentPod(ctx, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	cmd := exec.CommandContext(tctx, c.Bins.Kubectl, "--kubeconfig", c.Kubeconfig, "exec", "-n", AgentNamespace, agent, "--",
		"nfqpolicy", "trace", "--agent", "/run/nfqpolicy/debug.sock", "--to", ips["server"])
	cmd.Env = c.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var traced string
	var seen []string
	for traced == "" {
		_, _ = connects(ctx, c, ns, "client", addr)
	drain:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("trace ended without the denied flow (stderr %q, lines %q)", stderr.String(), seen)
				}
				seen = append(seen, l)
				if strings.Contains(l, "DENY") && strings.Contains(l, "("+ips["client"]+")") && strings.Contains(l, "("+ips["server"]+"):8080/TCP") {
					traced = l
					break drain
				}
			case <-time.After(time.Second):
				break drain
			case <-tctx.Done():
				t.Fatalf("trace showed no denied flow from the client within 40 s (stderr %q, lines %q)", stderr.String(), seen)
			}
		}
	}
	t.Logf("trace --agent in %s: %s", agent, traced)

	// The flow log, read by the agent image's own nfqpolicy in the pod.
	out, err := c.Exec(ctx, AgentNamespace, agent, "nfqpolicy", "audit", "report", "-o", "json", "/var/log/nfqpolicy/flows.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var report struct {
		Records int      `json:"records"`
		Nodes   []string `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil || report.Records == 0 || len(report.Nodes) != 1 || report.Nodes[0] != "node-1" {
		t.Fatalf("audit report in the agent pod: %+v (err %v):\n%s", report, err, out)
	}
	// The same file on the node holds the flow's denied record...
	data, err := os.ReadFile(evidenceFile("node-1", "flows.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, `"src":"`+ips["client"]+`"`) && strings.Contains(l, `"verdict":"deny"`) && strings.Contains(l, `"dst_port":8080`) {
			found = true
			break
		}
	}
	if !found {
		t.Fatalf("node-1's flow log has no denied record for %s -> %s:\n%s", ips["client"], addr, tail(string(data), 2000))
	}
	// ...and the capture a pcapng section with the denied packet.
	capture, err := os.ReadFile(evidenceFile("node-1", "denied.pcapng"))
	if err != nil {
		t.Fatal(err)
	}
	ip4 := net.ParseIP(ips["client"]).To4()
	if !bytes.HasPrefix(capture, []byte{0x0a, 0x0d, 0x0d, 0x0a}) || !bytes.Contains(capture, ip4) {
		t.Fatalf("node-1's capture (%d bytes) is not a pcapng holding %s", len(capture), ips["client"])
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestRealClusterAgentRulesBesideKubeProxy: on every node the agent's
// chains land in the same iptables backend as kube-proxy's (a mismatch
// would split the node's rules between two rule sets, each blind to the
// other), and none in the other backend.
func TestRealClusterAgentRulesBesideKubeProxy(t *testing.T) {
	c, _ := agentCluster(t)
	ctx := context.Background()
	for _, n := range c.Nodes {
		save := map[string]string{}
		for _, backend := range []string{"nft", "legacy"} {
			// A backend the kernel lacks fails to list: it holds no rules.
			out, _ := c.InNode(ctx, n, "iptables-"+backend+"-save")
			save[backend] = out
		}
		var kubeProxy, agent []string
		for backend, out := range save {
			if strings.Contains(out, ":KUBE-SERVICES") {
				kubeProxy = append(kubeProxy, backend)
			}
			if strings.Contains(out, ":NFQPOLICY") {
				agent = append(agent, backend)
			}
		}
		if len(kubeProxy) != 1 || len(agent) != 1 || kubeProxy[0] != agent[0] {
			t.Fatalf("%s: kube-proxy's chains in %v, the agent's in %v; want both in one and the same backend", n.Name, kubeProxy, agent)
		}
		t.Logf("%s: kube-proxy and nfqpolicy both in iptables-%s", n.Name, agent[0])
	}
}
