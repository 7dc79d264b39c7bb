package k8swatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nfqpolicy/nfqpolicy/cluster"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func fullPod() *corev1.Pod {
	port := intstr.FromInt32(8080)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-0", Namespace: "shop", UID: "u1", ResourceVersion: "7",
			Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{
				"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 4096),
				"nfqpolicy.io/audit": "true",
			},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
			OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web"}},
		},
		Spec: corev1.PodSpec{
			NodeName:    "node-a",
			HostNetwork: false,
			DNSPolicy:   corev1.DNSClusterFirst,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "nginx:1.27",
				Env:   []corev1.EnvVar{{Name: "SECRET", Value: "s"}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Port: port}}},
			}},
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox"}},
			Volumes:        []corev1.Volume{{Name: "data"}},
		},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			PodIP:             "10.0.0.5",
			PodIPs:            []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}},
			HostIP:            "192.168.1.10",
			HostIPs:           []corev1.HostIP{{IP: "192.168.1.10"}},
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true, RestartCount: 3}},
		},
	}
}

func TestStripPod(t *testing.T) {
	got, err := stripObject(fullPod())
	if err != nil {
		t.Fatal(err)
	}
	p := got.(*corev1.Pod)
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-0", Namespace: "shop", UID: "u1", ResourceVersion: "7",
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{"nfqpolicy.io/audit": "true"},
		},
		Spec: corev1.PodSpec{
			NodeName:  "node-a",
			DNSPolicy: corev1.DNSClusterFirst,
			Containers: []corev1.Container{{
				Name:  "app",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			}},
		},
		Status: corev1.PodStatus{
			Phase:   corev1.PodRunning,
			PodIP:   "10.0.0.5",
			PodIPs:  []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}},
			HostIP:  "192.168.1.10",
			HostIPs: []corev1.HostIP{{IP: "192.168.1.10"}},
		},
	}
	if d := diffJSON(t, want, p); d != "" {
		t.Fatalf("stripped pod differs:\n%s", d)
	}
	again, _ := stripObject(p)
	if d := diffJSON(t, p, again); d != "" {
		t.Fatalf("transform is not idempotent:\n%s", d)
	}
}

func TestStripOthers(t *testing.T) {
	meta := func(ns string) metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name: "n", Namespace: ns, ResourceVersion: "3", Labels: map[string]string{"k": "v"},
			Annotations:   map[string]string{"a": "b", "nfqpolicy.io/x": "y"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "m"}},
		}
	}
	keptMeta := func(ns string, labels map[string]string) metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name: "n", Namespace: ns, ResourceVersion: "3", Labels: labels,
			Annotations: map[string]string{"nfqpolicy.io/x": "y"},
		}
	}
	kv := map[string]string{"k": "v"}
	tcp := corev1.ProtocolTCP
	spec := networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}}}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
	}
	tests := []struct {
		name    string
		in, out any
	}{{
		name: "node keeps only addresses and pod CIDRs",
		in: &corev1.Node{ObjectMeta: meta(""),
			Spec: corev1.NodeSpec{PodCIDR: "10.0.0.0/24", PodCIDRs: []string{"10.0.0.0/24", "fd00::/64"}, ProviderID: "cloud://x", Unschedulable: true},
			Status: corev1.NodeStatus{
				Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.1.10"}},
				Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady}},
				Images:     []corev1.ContainerImage{{Names: []string{"big"}}},
			}},
		out: &corev1.Node{ObjectMeta: keptMeta("", kv),
			Spec:   corev1.NodeSpec{PodCIDR: "10.0.0.0/24", PodCIDRs: []string{"10.0.0.0/24", "fd00::/64"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.1.10"}}}},
	}, {
		name: "namespace keeps metadata only, defaulted",
		in:   &corev1.Namespace{ObjectMeta: meta(""), Spec: corev1.NamespaceSpec{Finalizers: []corev1.FinalizerName{"kubernetes"}}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}},
		out:  &corev1.Namespace{ObjectMeta: keptMeta("", map[string]string{"k": "v", "kubernetes.io/metadata.name": "n"})},
	}, {
		name: "policy keeps its spec",
		in:   &networkingv1.NetworkPolicy{ObjectMeta: meta("db"), Spec: spec},
		out:  &networkingv1.NetworkPolicy{ObjectMeta: keptMeta("db", kv), Spec: spec},
	}, {
		name: "policy gets the API defaults",
		in: &networkingv1.NetworkPolicy{ObjectMeta: meta("db"), Spec: networkingv1.NetworkPolicySpec{
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{}}}}}},
		out: &networkingv1.NetworkPolicy{ObjectMeta: keptMeta("db", kv), Spec: networkingv1.NetworkPolicySpec{
			Egress:      []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}}}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}},
	}, {
		name: "tombstone passes through",
		in:   cache.DeletedFinalStateUnknown{Key: "a/b"},
		out:  cache.DeletedFinalStateUnknown{Key: "a/b"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := stripObject(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if d := diffJSON(t, tc.out, got); d != "" {
				t.Fatalf("differs:\n%s", d)
			}
		})
	}
}

func TestSameStripped(t *testing.T) {
	base := func() *corev1.Pod {
		p, _ := stripObject(fullPod())
		return p.(*corev1.Pod)
	}
	tests := []struct {
		name   string
		change func(p *corev1.Pod)
		same   bool
	}{
		{"resync of the same version", func(p *corev1.Pod) {}, true},
		{"status churn we strip", func(p *corev1.Pod) { p.ResourceVersion = "8" }, true},
		{"label change", func(p *corev1.Pod) { p.ResourceVersion = "8"; p.Labels = map[string]string{"app": "api"} }, false},
		{"new pod IP", func(p *corev1.Pod) { p.ResourceVersion = "8"; p.Status.PodIP = "10.0.0.6" }, false},
		{"phase change", func(p *corev1.Pod) { p.ResourceVersion = "8"; p.Status.Phase = corev1.PodSucceeded }, false},
		{"kept annotation change", func(p *corev1.Pod) {
			p.ResourceVersion = "8"
			p.Annotations = map[string]string{"nfqpolicy.io/audit": "false"}
		}, false},
		{"deletion starts", func(p *corev1.Pod) {
			p.ResourceVersion = "8"
			now := metav1.Now()
			p.DeletionTimestamp = &now
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old, updated := base(), base()
			tc.change(updated)
			if got := sameStripped(old, updated); got != tc.same {
				t.Fatalf("sameStripped = %v, want %v", got, tc.same)
			}
		})
	}
}

// TestInformerCoalescesStorm drives 10,000 pod updates through client-go's
// informer machinery (fake clientset) and counts rebuilds.
func TestInformerCoalescesStorm(t *testing.T) {
	updates := 10000
	if s := os.Getenv("STORM"); s != "" {
		fmt.Sscan(s, &updates)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"gen": "0"}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"},
	}
	// NewClientset tracks managed fields (8ms per update here), too slow
	// for a 10,000-update storm; the simple one is deprecated but fast.
	client := fake.NewSimpleClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}},
		pod,
	)
	opts := InformerOptions{Quiet: 150 * time.Millisecond, MaxDelay: time.Second}
	src, err := NewInformerSourceForClient(client, nil, opts, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := src.Current(); ok {
		t.Fatal("Current is ok before Run")
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
	c := waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Pods) == 1 })
	if len(c.Namespaces) != 1 || len(c.Nodes) != 1 || len(c.Policies) != 0 {
		t.Fatalf("first sync: %d namespaces %d nodes %d policies", len(c.Namespaces), len(c.Nodes), len(c.Policies))
	}
	if !src.Connected() {
		t.Fatal("Connected is false after sync")
	}
	before := src.Rebuilds()

	start := time.Now()
	lister := src.pods.GetStore()
	for i := 1; i <= updates; i++ {
		p := pod.DeepCopy()
		p.Labels = map[string]string{"gen": fmt.Sprint(i)}
		if _, err := client.CoreV1().Pods("ns").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		// The fake watcher panics when its 100-event buffer is full; let
		// the informer catch up every 50 updates. The pause also stretches
		// the storm past several MaxDelays while keeping every gap far
		// below Quiet, so that only MaxDelay can cause a rebuild mid-storm.
		if i%50 == 0 {
			time.Sleep(20 * time.Millisecond)
			want := fmt.Sprint(i)
			for deadline := time.Now().Add(5 * time.Second); ; {
				obj, ok, _ := lister.GetByKey("ns/p")
				if ok && obj.(*corev1.Pod).Labels["gen"] == want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("informer did not see update %d", i)
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
	storm := time.Since(start)
	last := fmt.Sprint(updates)
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Pods) == 1 && c.Pods[0].Labels["gen"] == last })
	rebuilds := src.Rebuilds() - before
	// One rebuild per MaxDelay while the storm lasts, plus the final one.
	// Fewer than one per MaxDelay would mean changes waited longer than
	// MaxDelay (one missing is allowed for scheduling slack).
	limit := uint64(storm/opts.MaxDelay) + 2
	floor := max(uint64(storm/opts.MaxDelay), 2) - 1
	t.Logf("%d updates in %v caused %d rebuilds (want %d..%d)", updates, storm.Round(time.Millisecond), rebuilds, floor, limit)
	if rebuilds < floor || rebuilds > limit {
		t.Fatalf("%d rebuilds for %d updates in %v, want %d..%d", rebuilds, updates, storm, floor, limit)
	}
}

// TestInformerQuietRebuild checks the publication delay of a lone change:
// after Quiet, well before MaxDelay, and announced on Changed.
func TestInformerQuietRebuild(t *testing.T) {
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	src, err := NewInformerSourceForClient(client, nil, InformerOptions{Quiet: 50 * time.Millisecond, MaxDelay: 5 * time.Second}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = src.Run(ctx) }() // returns nil on cancel; checked in the storm test
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Namespaces) == 1 })
	select { // drain the first sync's notification
	case <-src.Changed():
	default:
	}
	start := time.Now()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-src.Changed():
	case <-time.After(3 * time.Second):
		t.Fatal("no Changed notification within 3s")
	}
	took := time.Since(start)
	c, _ := src.Current()
	if len(c.Namespaces) != 2 || c.Namespaces[0].Name != "ns" || c.Namespaces[1].Name != "other" {
		t.Fatalf("namespaces after create: %v", names(c.Namespaces))
	}
	if took < 50*time.Millisecond || took > 2*time.Second {
		t.Fatalf("published after %v, want between Quiet (50ms) and well under MaxDelay", took)
	}
}

func TestInformerRunTwice(t *testing.T) {
	src, err := NewInformerSourceForClient(fake.NewClientset(), nil, InformerOptions{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	waitFor(t, src, 5*time.Second, func(*cluster.Cluster) bool { return true })
	if err := src.Run(ctx); err == nil {
		t.Fatal("second Run did not fail")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

func TestNewInformerSourceBadInput(t *testing.T) {
	if _, err := NewInformerSource(nil, InformerOptions{}, zerolog.Nop()); err == nil {
		t.Error("nil config accepted")
	}
	if _, err := NewInformerSourceForClient(nil, nil, InformerOptions{}, zerolog.Nop()); err == nil {
		t.Error("nil client accepted")
	}
}

func TestRESTConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "config")
	const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: abc}
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`
	if err := os.WriteFile(good, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	// Not in a pod: the in-cluster step must be skipped, not fail.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	t.Setenv("HOME", dir) // no ~/.kube/config here

	cfg, err := RESTConfig(good)
	if err != nil || cfg.Host != "https://127.0.0.1:6443" || cfg.BearerToken != "abc" {
		t.Fatalf("explicit path: cfg=%+v err=%v", cfg, err)
	}
	if _, err := RESTConfig(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing explicit file: err=%v", err)
	}
	t.Setenv("KUBECONFIG", good)
	if cfg, err := RESTConfig(""); err != nil || cfg.Host != "https://127.0.0.1:6443" {
		t.Fatalf("$KUBECONFIG: cfg=%+v err=%v", cfg, err)
	}
	t.Setenv("KUBECONFIG", "")
	if _, err := RESTConfig(""); !errors.Is(err, ErrNoKubeconfig) {
		t.Fatalf("nothing configured: err=%v, want %v", err, ErrNoKubeconfig)
	}
}

func waitFor(t *testing.T, src Source, timeout time.Duration, cond func(*cluster.Cluster) bool) *cluster.Cluster {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if c, ok := src.Current(); ok && cond(c) {
			return c
		}
		if time.Now().After(deadline) {
			c, ok := src.Current()
			if c != nil && len(c.Pods) > 0 {
				t.Logf("pod labels %v", c.Pods[0].Labels)
			}
			t.Fatalf("condition not met within %v (ok=%v, cluster=%s)", timeout, ok, summary(c))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func summary(c *cluster.Cluster) string {
	if c == nil {
		return "nil"
	}
	return fmt.Sprintf("namespaces=%v nodes=%d pods=%d policies=%d", names(c.Namespaces), len(c.Nodes), len(c.Pods), len(c.Policies))
}

func names[T metav1.Object](objs []T) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.GetName()
	}
	return out
}

// diffJSON compares through JSON so that nil and empty collections the API
// treats alike compare alike, and prints both sides when they differ.
func diffJSON(t *testing.T, want, got any) string {
	t.Helper()
	w, err := json.MarshalIndent(want, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	g, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if string(w) == string(g) {
		return ""
	}
	return "want:\n" + string(w) + "\ngot:\n" + string(g)
}

// TestInformerDropsInvalidPolicy: a policy the API server would reject (a
// fake clientset validates nothing) is left out and logged once per
// version, however many rebuilds follow.
func TestInformerDropsInvalidPolicy(t *testing.T) {
	bad := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "ns", ResourceVersion: "1"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}}}}}},
	}
	good := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "good", Namespace: "ns"}}
	client := fake.NewSimpleClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}, bad, good)
	var logs informerLogBuffer
	src, err := NewInformerSourceForClient(client, nil, InformerOptions{Quiet: 10 * time.Millisecond}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = src.Run(ctx) }() // returns nil on cancel; checked in the storm test
	c := waitFor(t, src, 5*time.Second, func(*cluster.Cluster) bool { return true })
	if got := names(c.Policies); len(got) != 1 || got[0] != "good" {
		t.Fatalf("policies = %v, want [good]", got)
	}
	for i := range 3 { // more rebuilds must not log again
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("x", i)}}
		if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Namespaces) == i+2 })
	}
	if n := strings.Count(logs.String(), "ignoring invalid NetworkPolicy"); n != 1 {
		t.Fatalf("invalid policy logged %d times, want once; logs:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"policy":"ns/bad"`) || !strings.Contains(logs.String(), "spec.ingress[0].from[0].ipBlock.cidr") {
		t.Fatalf("log does not name the policy and field:\n%s", logs.String())
	}
	fixed := bad.DeepCopy()
	fixed.ResourceVersion = "2"
	fixed.Spec.Ingress[0].From[0].IPBlock.CIDR = "10.0.0.0/8"
	if _, err := client.NetworkingV1().NetworkPolicies("ns").Update(ctx, fixed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Policies) == 2 })
}

// informerLogBuffer is a bytes.Buffer safe for the logger's goroutine and the test.
type informerLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *informerLogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *informerLogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestKlogLogger(t *testing.T) {
	tests := []struct {
		name  string
		level zerolog.Level
		log   func(l logr.Logger)
		want  []string // substrings of the output; nil: no output
	}{
		{"info with values", zerolog.InfoLevel, func(l logr.Logger) {
			l.WithName("reflector").WithValues("type", "*v1.Pod").Info("Caches populated", "count", 3)
		}, []string{`"level":"info"`, `"component":"client-go"`, `"logger":"reflector"`, `"type":"*v1.Pod"`, `"count":3`, `"message":"Caches populated"`}},
		{"verbose hidden at info", zerolog.InfoLevel, func(l logr.Logger) { l.V(2).Info("noise") }, nil},
		{"verbose shown at debug", zerolog.DebugLevel, func(l logr.Logger) { l.V(2).Info("detail") }, []string{`"level":"debug"`, `"message":"detail"`}},
		{"error", zerolog.InfoLevel, func(l logr.Logger) {
			l.Error(errors.New("boom"), "watch failed", "cause", errors.New("eof"))
		}, []string{`"level":"error"`, `"error":"boom"`, `"cause":"eof"`}},
		{"malformed pairs", zerolog.InfoLevel, func(l logr.Logger) { l.Info("odd", 42, "v", "dangling") }, []string{`"42":"v"`, `"dangling":"(MISSING)"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tc.log(KlogLogger(zerolog.New(&buf).Level(tc.level)))
			out := buf.String()
			if tc.want == nil && out != "" {
				t.Fatalf("want no output, got %s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %s lacks %s", out, w)
				}
			}
			if out != "" && !json.Valid([]byte(strings.TrimSpace(out))) {
				t.Errorf("not one JSON line: %s", out)
			}
		})
	}
}
