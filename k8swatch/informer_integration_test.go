package k8swatch_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

// follow bounds how long a change may take to reach Current.
const follow = 5 * time.Second

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func startSource(t *testing.T, cfg *rest.Config, opts k8swatch.InformerOptions) *k8swatch.InformerSource {
	t.Helper()
	src, err := k8swatch.NewInformerSource(cfg, opts, zerolog.New(testLogWriter{t}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return src
}

// eventually polls the source until cond holds for its Cluster.
func eventually(t *testing.T, src k8swatch.Source, what string, cond func(*cluster.Cluster) bool) {
	t.Helper()
	deadline := time.Now().Add(follow)
	for {
		if c, ok := src.Current(); ok && cond(c) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("within %v: %s", follow, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func findPod(c *cluster.Cluster, ns, name string) *corev1.Pod {
	for _, p := range c.Pods {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

func findNamespace(c *cluster.Cluster, name string) *corev1.Namespace {
	for _, n := range c.Namespaces {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func findPolicy(c *cluster.Cluster, ns, name string) *networkingv1.NetworkPolicy {
	for _, p := range c.Policies {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

// agentLoop does what the node agent does with a source: on every change,
// compile and swap the engine's ruleset.
type agentLoop struct {
	mu      sync.Mutex
	engine  *filter.Engine
	lastErr error
}

func runAgentLoop(t *testing.T, src k8swatch.Source) *agentLoop {
	t.Helper()
	a := &agentLoop{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if c, ok := src.Current(); ok {
				rs, err := filter.Compile(c)
				a.mu.Lock()
				a.lastErr = err
				if err == nil {
					if a.engine == nil {
						a.engine = filter.NewEngine(rs, 1024)
					} else {
						a.engine.Swap(rs)
					}
				}
				a.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-src.Changed():
			case <-time.After(time.Second): // Changed before the first sync is not guaranteed to repeat
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

func (a *agentLoop) decide(f filter.Flow) (filter.Verdict, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.engine == nil {
		return filter.Verdict{}, false, a.lastErr
	}
	return a.engine.Decide(f), true, a.lastErr
}

func (a *agentLoop) expect(t *testing.T, f filter.Flow, allow bool, why string) {
	t.Helper()
	deadline := time.Now().Add(follow)
	for {
		v, ok, err := a.decide(f)
		if ok && v.Allow == allow {
			return
		}
		if time.Now().After(deadline) {
			desc := "no ruleset"
			if ok {
				desc = v.Ruleset.Describe(v)
			}
			t.Fatalf("%s: flow %v→%v:%d allow=%v within %v, want %v (%s; compile error %v)", why, f.Src, f.Dst, f.DstPort, v.Allow, follow, allow, desc, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func setPodStatus(t *testing.T, client kubernetes.Interface, p *corev1.Pod, ip string) *corev1.Pod {
	t.Helper()
	p = p.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	p.Status.HostIP = "192.168.50.1"
	p.Status.HostIPs = []corev1.HostIP{{IP: "192.168.50.1"}}
	out, err := client.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("pod %s status: %v", p.Name, err)
	}
	return out
}

func newPod(ns, name string, labels map[string]string, port int32) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: "node-a",
			Containers: []corev1.Container{{
				Name: "c", Image: "registry.invalid/none:1",
				Ports: []corev1.ContainerPort{{Name: "svc", ContainerPort: port, Protocol: corev1.ProtocolTCP}},
			}},
		},
	}
}

// TestInformerIntegration runs the informer source against a real
// kube-apiserver and follows every kind of change into Current and into
// compiled verdicts.
func TestInformerIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	srv := apiserver.Start(t)
	ctx := context.Background()
	client := srv.Client(t)

	src := startSource(t, srv.Config, k8swatch.InformerOptions{Quiet: 50 * time.Millisecond})
	start := time.Now()
	eventually(t, src, "first sync", func(*cluster.Cluster) bool { return true })
	t.Logf("first sync after %v", time.Since(start).Round(time.Millisecond))
	if !src.Connected() {
		t.Fatal("synced but not Connected")
	}
	agent := runAgentLoop(t, src)

	// Namespaces: add, relabel.
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "namespace shop appears with team=a and the metadata.name label", func(c *cluster.Cluster) bool {
		n := findNamespace(c, "shop")
		return n != nil && n.Labels["team"] == "a" && n.Labels[corev1.LabelMetadataName] == "shop"
	})

	// Nodes: add, then addresses through the status subresource.
	node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.50.1"}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "node-a with its InternalIP", func(c *cluster.Cluster) bool {
		return len(c.Nodes) == 1 && len(c.Nodes[0].Status.Addresses) == 1 && c.Nodes[0].Status.Addresses[0].Address == "192.168.50.1"
	})

	// Pods: created (no IP yet), then running with IPs.
	web, err := client.CoreV1().Pods("shop").Create(ctx, newPod("shop", "web", map[string]string{"app": "web"}, 8080), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	db, err := client.CoreV1().Pods("shop").Create(ctx, newPod("shop", "db", map[string]string{"app": "db"}, 5432), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web = setPodStatus(t, client, web, "10.244.0.10")
	setPodStatus(t, client, db, "10.244.0.11")
	eventually(t, src, "both pods running with IPs, stripped", func(c *cluster.Cluster) bool {
		w, d := findPod(c, "shop", "web"), findPod(c, "shop", "db")
		return w != nil && d != nil && w.Status.PodIP == "10.244.0.10" && d.Status.PodIP == "10.244.0.11" &&
			w.Status.Phase == corev1.PodRunning && w.ManagedFields == nil && w.Spec.Containers[0].Image == "" &&
			w.Spec.Containers[0].Ports[0].Name == "svc"
	})

	webToDB := filter.Flow{Src: netip.MustParseAddr("10.244.0.10"), Dst: netip.MustParseAddr("10.244.0.11"), SrcPort: 40000, DstPort: 5432, Proto: filter.ProtoTCP}
	agent.expect(t, webToDB, true, "no policy")

	// Policies: deny-all makes the flow denied...
	denyAll := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "deny-all"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	pol, err := client.NetworkingV1().NetworkPolicies("shop").Create(ctx, denyAll, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "policy deny-all appears", func(c *cluster.Cluster) bool { return findPolicy(c, "shop", "deny-all") != nil })
	agent.expect(t, webToDB, false, "deny-all created")

	// ...a spec update that allows app=web on the named port lets it through...
	named := intstr.FromString("svc")
	pol.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
		Ports: []networkingv1.NetworkPolicyPort{{Port: &named}},
	}}
	if _, err := client.NetworkingV1().NetworkPolicies("shop").Update(ctx, pol, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "policy spec update", func(c *cluster.Cluster) bool {
		p := findPolicy(c, "shop", "deny-all")
		return p != nil && len(p.Spec.Ingress) == 1
	})
	agent.expect(t, webToDB, true, "rule allows app=web to the named port")

	// ...a pod label update takes the source out of the rule...
	web.Labels = map[string]string{"app": "other"}
	if _, err := client.CoreV1().Pods("shop").Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "pod relabelled", func(c *cluster.Cluster) bool {
		p := findPod(c, "shop", "web")
		return p != nil && p.Labels["app"] == "other"
	})
	agent.expect(t, webToDB, false, "source no longer app=web")

	// ...and a namespace label change does nothing here, but is followed.
	ns, err := client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["team"] = "b"
	if _, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "namespace relabelled", func(c *cluster.Cluster) bool {
		n := findNamespace(c, "shop")
		return n != nil && n.Labels["team"] == "b"
	})

	// Deleting the policy allows again.
	if err := client.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "deny-all", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "policy deleted", func(c *cluster.Cluster) bool { return findPolicy(c, "shop", "deny-all") == nil })
	agent.expect(t, webToDB, true, "deny-all deleted")

	// Pod and node deletion (no kubelet: delete at once).
	zero := int64(0)
	if err := client.CoreV1().Pods("shop").Delete(ctx, "db", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "pod db deleted", func(c *cluster.Cluster) bool { return findPod(c, "shop", "db") == nil })
	if err := client.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "node deleted", func(c *cluster.Cluster) bool { return len(c.Nodes) == 0 })

	// Namespace deletion: with no namespace controller running, finalize
	// it by hand once its pods are gone, as the controller would.
	if err := client.CoreV1().Pods("shop").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Namespaces().Delete(ctx, "shop", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ns, err = client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Spec.Finalizers = nil
	if _, err := client.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, src, "namespace shop deleted", func(c *cluster.Cluster) bool { return findNamespace(c, "shop") == nil && len(c.Pods) == 0 })

}

// TestInformerIntegrationStorm: a burst of pod updates against the real
// server costs a handful of rebuilds, bounded by MaxDelay.
func TestInformerIntegrationStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	const pods, rounds = 20, 50 // 1,000 updates
	srv := apiserver.Start(t)
	ctx := context.Background()
	client := srv.Client(t)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "storm"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range pods {
		if _, err := client.CoreV1().Pods("storm").Create(ctx, newPod("storm", fmt.Sprint("p", i), map[string]string{"gen": "0"}, 80), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	opts := k8swatch.InformerOptions{Quiet: 150 * time.Millisecond, MaxDelay: time.Second}
	src := startSource(t, srv.Config, opts)
	eventually(t, src, "sync with all pods", func(c *cluster.Cluster) bool { return len(c.Pods) == pods })
	before := src.Rebuilds()

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, pods)
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprint("p", i)
			for r := 1; r <= rounds; r++ {
				patch := fmt.Sprintf(`{"metadata":{"labels":{"gen":"%d"}}}`, r)
				if _, err := client.CoreV1().Pods("storm").Patch(ctx, name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
					errs <- fmt.Errorf("patch %s round %d: %w", name, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	storm := time.Since(start)
	eventually(t, src, "every pod at the last generation", func(c *cluster.Cluster) bool {
		for _, p := range c.Pods {
			if p.Labels["gen"] != fmt.Sprint(rounds) {
				return false
			}
		}
		return len(c.Pods) == pods
	})
	// Every coalescing round lasts at least Quiet, so that bounds the
	// rebuilds over the time the updates took to arrive (the watch lags
	// the writes on a loaded machine, and delivers them in bursts, so a
	// bound of one rebuild per MaxDelay of the writes alone flaked).
	window := time.Since(start)
	rebuilds := src.Rebuilds() - before
	limit := uint64(window/opts.Quiet) + 2
	t.Logf("%d updates in %v, seen by %v: %d rebuilds (limit %d)", pods*rounds, storm.Round(time.Millisecond), window.Round(time.Millisecond), rebuilds, limit)
	if rebuilds < 1 || rebuilds > limit || rebuilds > pods*rounds/10 {
		t.Fatalf("%d rebuilds for %d updates seen in %v, want 1..%d and at most a tenth of the updates", rebuilds, pods*rounds, window, limit)
	}
}

// TestInformerIntegrationNotReadyBeforeSync: a source that cannot reach its
// server never reports a state (the agent's /readyz stays false) and says
// why; one that can, does.
func TestInformerIntegrationNotReadyBeforeSync(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	srv := apiserver.Start(t)
	src, err := k8swatch.NewInformerSource(srv.Config, k8swatch.InformerOptions{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := src.Current(); ok || src.Connected() {
		t.Fatal("a source that has not run reports a state or a connection")
	}

	// Same server, wrong port: nothing listens there.
	wrong := rest.CopyConfig(srv.Config)
	wrong.Host = "https://127.0.0.1:1"
	unreachable := startSource(t, wrong, k8swatch.InformerOptions{})
	time.Sleep(2 * time.Second)
	if _, ok := unreachable.Current(); ok {
		t.Fatal("unreachable server, yet Current is ok")
	}
	st := unreachable.Status()
	if st.Synced || st.Connected || !strings.Contains(st.LastError, "connection refused") || st.Rebuilds != 0 {
		t.Fatalf("unreachable: status %+v, want not synced, not connected, connection refused, no rebuilds", st)
	}
}

// TestInformerIntegrationServerRestart: when the API server goes away the
// source keeps its last state and reports the loss; when it is back, the
// source reconnects and follows changes again.
func TestInformerIntegrationServerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	srv := apiserver.Start(t)
	ctx := context.Background()
	client := srv.Client(t)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "before"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	src := startSource(t, srv.Config, k8swatch.InformerOptions{Quiet: 50 * time.Millisecond})
	eventually(t, src, "namespace before", func(c *cluster.Cluster) bool { return findNamespace(c, "before") != nil })
	kept, _ := src.Current()

	srv.StopAPIServer()
	deadline := time.Now().Add(15 * time.Second)
	for src.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("still Connected 15s after the API server stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("disconnected: %v", src.LastError())
	if c, ok := src.Current(); !ok || c != kept {
		t.Fatal("the last state was not kept while the server is away")
	}

	srv.RestartAPIServer(t)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "after"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// client-go's relist backoff grows to 30s; allow for one full step.
	deadline = time.Now().Add(45 * time.Second)
	for {
		c, _ := src.Current()
		if findNamespace(c, "after") != nil && src.Connected() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not back 45s after restart: Connected=%v LastError=%v", src.Connected(), src.LastError())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
