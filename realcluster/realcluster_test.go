package realcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// One cluster serves every test of the package: bringing one up costs
// tens of seconds, and the tests use their own Kubernetes namespaces.
var shared struct {
	once sync.Once
	c    *Cluster
	dep  *Deployment
	skip string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		if shared.dep != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if err := shared.dep.Delete(ctx); err != nil {
				fmt.Fprintf(os.Stderr, "realcluster: kubectl delete -k: %v\n", err)
				code = 1
			}
			cancel()
		}
		if err := shared.c.Down(); err != nil {
			fmt.Fprintf(os.Stderr, "realcluster: teardown: %v\n", err)
			code = 1
		}
	}
	if err := RemoveBase(); err != nil {
		fmt.Fprintf(os.Stderr, "realcluster: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

// agentCluster returns the shared cluster with nfqpolicy deployed from
// deploy/, bringing it up on first use.
func agentCluster(t *testing.T) (*Cluster, *Deployment) {
	t.Helper()
	if testing.Short() {
		t.Skip("SKIPPED in -short: brings up a real cluster")
	}
	shared.once.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			shared.err = err
			return
		}
		tar := filepath.Join(root, NFQPolicyImageTar)
		if err := CanRun(); err != nil {
			shared.skip = err.Error()
			return
		}
		if _, err := os.Stat(tar); err != nil {
			shared.skip = fmt.Sprintf("nfqpolicy image (make image): %v", err)
			return
		}
		images, _ := ImageTarballs()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		logf := func(format string, a ...any) {
			fmt.Fprintf(os.Stderr, "realcluster: %s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
		}
		start := time.Now()
		c, err := Up(ctx, Options{Images: append(images, tar), Logf: logf})
		if err != nil {
			shared.err = err
			return
		}
		shared.c = c
		shared.dep, shared.err = c.Deploy(ctx, filepath.Join(root, "deploy"), NFQPolicyImage)
		rss, procs := c.RSS()
		logf("nfqpolicy deployed on both nodes, %v after start; cluster RSS %d MiB in %d processes", time.Since(start).Round(time.Millisecond), rss>>20, procs)
	})
	if shared.skip != "" {
		if Required() {
			t.Fatalf("realcluster: %s (NFQPOLICY_REQUIRE_CLUSTER=1)", shared.skip)
		}
		t.Skipf("SKIPPED, NO REAL CLUSTER: %s", shared.skip)
	}
	if shared.err != nil {
		t.Fatalf("realcluster: %v", shared.err)
	}
	return shared.c, shared.dep
}

// testNamespace creates a namespace for one test and deletes it after.
func testNamespace(t *testing.T, c *Cluster) string {
	t.Helper()
	ns := "rc-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 60 {
		ns = ns[:60]
	}
	ctx := context.Background()
	if _, err := c.Kubectl(ctx, "create", "namespace", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := c.Kubectl(context.Background(), "delete", "namespace", ns, "--wait=false"); err != nil {
			t.Errorf("delete namespace: %v", err)
		}
	})
	return ns
}

// agnhostPod is an agnhost pod pinned to node; args after the image's
// entrypoint (/agnhost).
func agnhostPod(ns, name, node string, labels map[string]string, args ...string) string {
	var l strings.Builder
	for k, v := range labels {
		fmt.Fprintf(&l, "    %s: %q\n", k, v)
	}
	var a strings.Builder
	for _, s := range args {
		fmt.Fprintf(&a, "    - %q\n", s)
	}
	// A server is Ready once it listens, not when its process starts
	// (kubelet's probes come from the node, which policies never cut).
	if len(args) > 0 && args[0] == "netexec" {
		a.WriteString("    readinessProbe:\n      tcpSocket: {port: 8080}\n      periodSeconds: 1\n")
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels:
%s
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: %s
    imagePullPolicy: IfNotPresent
    args:
%s`, name, ns, l.String(), node, AgnhostImage, a.String())
}

// waitPods waits until the named pods are Ready and returns their IPs.
func waitPods(t *testing.T, c *Cluster, ns string, names ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"wait", "-n", ns, "--for=condition=Ready", "--timeout=110s"}
	for _, n := range names {
		args = append(args, "pod/"+n)
	}
	if _, err := c.Kubectl(ctx, args...); err != nil {
		out, _ := c.Kubectl(ctx, "describe", "pods", "-n", ns)
		t.Fatalf("%v\n%s", err, out)
	}
	ips := map[string]string{}
	for _, n := range names {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ips[n] = p.Status.PodIP
	}
	return ips
}

// connects reports whether pod connects to addr over TCP within 2 s
// (agnhost connect, exec'd through the API server as upstream's e2e does).
func connects(ctx context.Context, c *Cluster, ns, pod, addr string) (bool, string) {
	out, err := c.Exec(ctx, ns, pod, "/agnhost", "connect", addr, "--timeout=2s")
	return err == nil, strings.TrimSpace(out)
}

// eventually polls connects until it reports want (policies take effect
// after the agents compile them), failing after 20 s.
func eventually(t *testing.T, c *Cluster, ns, pod, addr string, want bool) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, out := connects(ctx, c, ns, pod, addr)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s -> %s: connected=%v, want %v (last output %q)", ns, pod, addr, got, want, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

const defaultDenyIngress = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: %s
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

const allowFromClient = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-client
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
    - {protocol: TCP, port: 8080}
`

// TestRealClusterEnforcement: nfqpolicy deployed from deploy/ as users do
// cuts a cross-node pod connection under a default-deny policy and
// restores it under an allow policy, as seen by kubectl exec.
func TestRealClusterEnforcement(t *testing.T) {
	c, _ := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	if err := c.Apply(ctx, agnhostPod(ns, "server", "node-2", map[string]string{"app": "server"}, "netexec", "--http-port=8080")+"\n---\n"+
		agnhostPod(ns, "client", "node-1", map[string]string{"app": "client"}, "pause")); err != nil {
		t.Fatal(err)
	}
	ips := waitPods(t, c, ns, "server", "client")
	addr := ips["server"] + ":8080"
	// Before any policy the path works (so a later failure is the policy's).
	eventually(t, c, ns, "client", addr, true)
	if err := c.Apply(ctx, fmt.Sprintf(defaultDenyIngress, ns)); err != nil {
		t.Fatal(err)
	}
	eventually(t, c, ns, "client", addr, false)
	// Denied stays denied (not a flap of the first probe).
	for range 3 {
		if ok, out := connects(ctx, c, ns, "client", addr); ok {
			t.Fatalf("default-deny: client -> server %s connected: %s", addr, out)
		}
	}
	if err := c.Apply(ctx, fmt.Sprintf(allowFromClient, ns)); err != nil {
		t.Fatal(err)
	}
	eventually(t, c, ns, "client", addr, true)
}
