package integration

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
	"github.com/nfqpolicy/nfqpolicy/probe"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// TestIntegrationConformanceViaAPIServer runs the public reachability
// corpus through the agent's real input path: every scenario's objects are
// written to a kube-apiserver (which defaults and validates them), the
// informer source follows them (transform, coalescing, defaults, policy
// validation), and the probes are decided on what the source published.
// Every probe must get the verdict the scenario expects, as it does when the
// same objects are read from the file. The benchmark workload (1,000 pods)
// runs last, as a bulk load.
func TestIntegrationConformanceViaAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	files, err := filepath.Glob("../testdata/conformance/public/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	// The workload benchmark's 1,000 pods: a bulk load through the
	// informer, not only the corpus's handful of pods.
	files = append(files, "../testdata/bench/knp-workload.yaml")
	scenarios, err := scenario.LoadAll(files...)
	if err != nil {
		t.Fatal(err)
	}
	srv := apiserver.Start(t)
	s := &syncer{client: srv.Client(t), want: map[string]string{}}
	src, err := k8swatch.NewInformerSource(srv.Config, k8swatch.InformerOptions{Quiet: 20 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, src)
	waitSynced(t, src, 15*time.Second)

	probes, start := 0, time.Now()
	for _, sc := range scenarios {
		if err := s.apply(sc.Cluster); err != nil {
			t.Fatalf("%s: writing to the API server: %v", sc.File, err)
		}
		c := s.waitFollowed(t, src, sc.File)
		via := *sc
		via.Cluster = c
		results, err := probe.Scenario(&via, probe.Options{})
		if err != nil {
			t.Fatalf("%s: %v", sc.File, err)
		}
		failed := 0
		for _, r := range results {
			if !r.Pass() {
				failed++
				if failed <= 5 {
					t.Errorf("%s:%d: %s -> %s %s/%d: got %s, want %s (%s)", r.File, r.Line, r.From, r.To, r.Protocol, r.Port, r.Got, r.Expect, r.Reason)
				}
			}
		}
		if failed > 5 {
			t.Errorf("%s: %d more mismatches", sc.File, failed-5)
		}
		probes += len(results)
	}
	t.Logf("%d scenarios, %d probes decided on API-server state in %v", len(scenarios), probes, time.Since(start).Round(time.Millisecond))
}

// syncer makes the API server hold exactly one scenario's objects, writing
// only differences, and remembers the resourceVersion each object must have
// once the informer has caught up.
type syncer struct {
	client kubernetes.Interface
	want   map[string]string // "Kind ns/name" -> resourceVersion
}

var systemNamespaces = map[string]bool{"default": true, "kube-system": true, "kube-public": true, "kube-node-lease": true}

func (s *syncer) apply(c *k8swatch.Cluster) error {
	ctx := context.Background()
	// Deletions first, pods and policies before their namespaces.
	wantPods := map[string]*corev1.Pod{}
	for _, p := range c.Pods {
		wantPods[p.Namespace+"/"+p.Name] = p
	}
	wantPols := map[string]*networkingv1.NetworkPolicy{}
	for _, p := range c.Policies {
		wantPols[p.Namespace+"/"+p.Name] = p
	}
	wantNS := map[string]*corev1.Namespace{}
	for _, n := range c.Namespaces {
		wantNS[n.Name] = n
	}
	wantNodes := map[string]*corev1.Node{}
	for _, n := range c.Nodes {
		wantNodes[n.Name] = n
	}

	pols, err := s.client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pols.Items {
		key := p.Namespace + "/" + p.Name
		w, ok := wantPols[key]
		switch {
		case !ok:
			if err := s.client.NetworkingV1().NetworkPolicies(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			delete(s.want, "NetworkPolicy "+key)
		case !equality.Semantic.DeepEqual(w.Spec, p.Spec) || !maps.Equal(w.Labels, p.Labels) || !maps.Equal(w.Annotations, p.Annotations):
			p.Spec, p.Labels, p.Annotations = w.Spec, w.Labels, w.Annotations
			out, err := s.client.NetworkingV1().NetworkPolicies(p.Namespace).Update(ctx, &p, metav1.UpdateOptions{})
			if err != nil {
				return fmt.Errorf("update policy %s: %w", key, err)
			}
			s.want["NetworkPolicy "+key] = out.ResourceVersion
		}
		delete(wantPols, key)
	}

	pods, err := s.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	zero := int64(0)
	for _, p := range pods.Items {
		key := p.Namespace + "/" + p.Name
		w, ok := wantPods[key]
		if ok && podSpecEqual(w, &p) {
			if err := s.updatePod(ctx, w, &p); err != nil {
				return err
			}
			delete(wantPods, key)
			continue
		}
		// Gone, or a spec the API server does not let us change: delete
		// now (no kubelet to wait for) and create again below if wanted.
		if err := s.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
		delete(s.want, "Pod "+key)
	}

	nss, err := s.client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nss.Items {
		if systemNamespaces[n.Name] {
			delete(wantNS, n.Name)
			continue
		}
		w, ok := wantNS[n.Name]
		switch {
		case !ok:
			if err := s.deleteNamespace(ctx, n.Name); err != nil {
				return err
			}
			delete(s.want, "Namespace "+n.Name)
		case !maps.Equal(withNameLabel(w), n.Labels) || !maps.Equal(w.Annotations, n.Annotations):
			n.Labels, n.Annotations = withNameLabel(w), w.Annotations
			out, err := s.client.CoreV1().Namespaces().Update(ctx, &n, metav1.UpdateOptions{})
			if err != nil {
				return fmt.Errorf("update namespace %s: %w", n.Name, err)
			}
			s.want["Namespace "+n.Name] = out.ResourceVersion
		}
		delete(wantNS, n.Name)
	}

	nodes, err := s.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nodes.Items {
		w, ok := wantNodes[n.Name]
		if !ok {
			if err := s.client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			delete(s.want, "Node "+n.Name)
			continue
		}
		if err := s.updateNode(ctx, w, &n); err != nil {
			return err
		}
		delete(wantNodes, n.Name)
	}

	// Creations: namespaces and nodes before pods and policies.
	for _, n := range sortedValues(wantNS) {
		out, err := s.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, Labels: n.Labels, Annotations: n.Annotations}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", n.Name, err)
		}
		s.want["Namespace "+n.Name] = out.ResourceVersion
	}
	for _, n := range sortedValues(wantNodes) {
		out, err := s.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, Labels: n.Labels, Annotations: n.Annotations}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
		if err := s.updateNode(ctx, n, out); err != nil {
			return err
		}
	}
	for _, p := range sortedValues(wantPods) {
		in := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Annotations: p.Annotations},
			Spec: *p.Spec.DeepCopy()}
		for i := range in.Spec.Containers {
			if in.Spec.Containers[i].Image == "" {
				in.Spec.Containers[i].Image = "registry.invalid/none:1"
			}
		}
		out, err := s.client.CoreV1().Pods(p.Namespace).Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		if err := s.updatePod(ctx, p, out); err != nil {
			return err
		}
	}
	for _, p := range sortedValues(wantPols) {
		out, err := s.client.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Annotations: p.Annotations},
			Spec:       p.Spec}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create policy %s/%s: %w", p.Namespace, p.Name, err)
		}
		s.want["NetworkPolicy "+p.Namespace+"/"+p.Name] = out.ResourceVersion
	}
	return nil
}

// withNameLabel is what the API server makes of a namespace's labels.
func withNameLabel(n *corev1.Namespace) map[string]string {
	l := maps.Clone(n.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[corev1.LabelMetadataName] = n.Name
	return l
}

func sortedValues[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

// podSpecEqual compares what the compiler reads of a pod's spec; the rest
// of the spec cannot be updated anyway.
func podSpecEqual(a, b *corev1.Pod) bool {
	if a.Spec.NodeName != b.Spec.NodeName || a.Spec.HostNetwork != b.Spec.HostNetwork || len(a.Spec.Containers) != len(b.Spec.Containers) {
		return false
	}
	for i := range a.Spec.Containers {
		x, y := a.Spec.Containers[i], b.Spec.Containers[i]
		if x.Name != y.Name || !equality.Semantic.DeepEqual(x.Ports, y.Ports) {
			return false
		}
	}
	return true
}

func (s *syncer) updatePod(ctx context.Context, w, cur *corev1.Pod) error {
	key := cur.Namespace + "/" + cur.Name
	s.want["Pod "+key] = cur.ResourceVersion
	if !maps.Equal(w.Labels, cur.Labels) || !maps.Equal(w.Annotations, cur.Annotations) {
		cur.Labels, cur.Annotations = w.Labels, w.Annotations
		out, err := s.client.CoreV1().Pods(cur.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update pod %s: %w", key, err)
		}
		cur = out
		s.want["Pod "+key] = out.ResourceVersion
	}
	ws, cs := w.Status, cur.Status
	if ws.Phase != cs.Phase || ws.PodIP != cs.PodIP || ws.HostIP != cs.HostIP ||
		!equality.Semantic.DeepEqual(ws.PodIPs, cs.PodIPs) || !equality.Semantic.DeepEqual(ws.HostIPs, cs.HostIPs) {
		cur.Status.Phase, cur.Status.PodIP, cur.Status.PodIPs = ws.Phase, ws.PodIP, ws.PodIPs
		cur.Status.HostIP, cur.Status.HostIPs = ws.HostIP, ws.HostIPs
		out, err := s.client.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update pod %s status: %w", key, err)
		}
		s.want["Pod "+key] = out.ResourceVersion
	}
	return nil
}

func (s *syncer) updateNode(ctx context.Context, w, cur *corev1.Node) error {
	s.want["Node "+cur.Name] = cur.ResourceVersion
	if !maps.Equal(w.Labels, cur.Labels) {
		cur.Labels = w.Labels
		out, err := s.client.CoreV1().Nodes().Update(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update node %s: %w", cur.Name, err)
		}
		cur = out
		s.want["Node "+cur.Name] = out.ResourceVersion
	}
	if !equality.Semantic.DeepEqual(w.Status.Addresses, cur.Status.Addresses) {
		cur.Status.Addresses = w.Status.Addresses
		out, err := s.client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update node %s status: %w", cur.Name, err)
		}
		s.want["Node "+cur.Name] = out.ResourceVersion
	}
	return nil
}

// deleteNamespace deletes and, with no namespace controller running,
// finalizes a namespace whose content is already gone.
func (s *syncer) deleteNamespace(ctx context.Context, name string) error {
	if err := s.client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	n, err := s.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	n.Spec.Finalizers = nil
	if _, err := s.client.CoreV1().Namespaces().Finalize(ctx, n, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("finalize namespace %s: %w", name, err)
	}
	return nil
}

// waitFollowed waits until the source publishes exactly the written
// objects at exactly their last written versions.
func (s *syncer) waitFollowed(t *testing.T, src k8swatch.Source, what string) *k8swatch.Cluster {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, ok := src.Current()
		var diff string
		if ok {
			diff = s.diff(c)
			if diff == "" {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the source did not follow the API server within 10s: %s", what, diff)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *syncer) diff(c *k8swatch.Cluster) string {
	got := map[string]string{}
	for _, n := range c.Namespaces {
		if !systemNamespaces[n.Name] {
			got["Namespace "+n.Name] = n.ResourceVersion
		}
	}
	for _, n := range c.Nodes {
		got["Node "+n.Name] = n.ResourceVersion
	}
	for _, p := range c.Pods {
		got["Pod "+p.Namespace+"/"+p.Name] = p.ResourceVersion
	}
	for _, p := range c.Policies {
		got["NetworkPolicy "+p.Namespace+"/"+p.Name] = p.ResourceVersion
	}
	var d []string
	for k, v := range s.want {
		if got[k] != v {
			d = append(d, fmt.Sprintf("%s at %q, want %q", k, got[k], v))
		}
	}
	for k := range got {
		if _, ok := s.want[k]; !ok {
			d = append(d, k+" should be gone")
		}
	}
	slices.Sort(d)
	return strings.Join(d, "; ")
}
