package apiserver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// Loader makes the API server hold exactly the objects of a
// cluster.Cluster (a scenario, a snapshot), writing only differences, as a
// kubelet, the scheduler and users would have: pods are created, then
// their status (IPs, phase) is written through the status subresource, and
// nodes get their addresses the same way. It remembers the resourceVersion
// each object must have once a watcher has caught up (see Diff).
//
// Namespaces are deleted and finalized by hand and pods deleted without
// grace, since no namespace controller or kubelet runs.
type Loader struct {
	client kubernetes.Interface
	want   map[string]string // "Kind ns/name" -> resourceVersion
}

// isSystemNamespace says whether the API server creates the namespace
// itself; Load leaves those alone.
func isSystemNamespace(name string) bool {
	switch name {
	case "default", "kube-system", "kube-public", "kube-node-lease":
		return true
	}
	return false
}

// NewLoader returns a loader writing through client.
func NewLoader(client kubernetes.Interface) *Loader {
	return &Loader{client: client, want: map[string]string{}}
}

// Load writes c's objects and removes every other (non-system) object. A
// Loader is not safe for concurrent use.
func (l *Loader) Load(ctx context.Context, c *cluster.Cluster) error {
	if c == nil {
		return errors.New("apiserver: Load of a nil cluster")
	}
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

	pols, err := l.client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pols.Items {
		key := p.Namespace + "/" + p.Name
		w, ok := wantPols[key]
		switch {
		case !ok:
			if err := l.client.NetworkingV1().NetworkPolicies(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			delete(l.want, "NetworkPolicy "+key)
		case !equality.Semantic.DeepEqual(w.Spec, p.Spec) || !maps.Equal(w.Labels, p.Labels) || !maps.Equal(w.Annotations, p.Annotations):
			p.Spec, p.Labels, p.Annotations = w.Spec, w.Labels, w.Annotations
			out, err := l.client.NetworkingV1().NetworkPolicies(p.Namespace).Update(ctx, &p, metav1.UpdateOptions{})
			if err != nil {
				return fmt.Errorf("update policy %s: %w", key, err)
			}
			l.want["NetworkPolicy "+key] = out.ResourceVersion
		}
		delete(wantPols, key)
	}

	pods, err := l.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	zero := int64(0)
	for _, p := range pods.Items {
		key := p.Namespace + "/" + p.Name
		w, ok := wantPods[key]
		if ok && podSpecEqual(w, &p) {
			if err := l.updatePod(ctx, w, &p); err != nil {
				return err
			}
			delete(wantPods, key)
			continue
		}
		// Gone, or a spec the API server does not let us change: delete
		// now (no kubelet to wait for) and create again below if wanted.
		if err := l.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
		delete(l.want, "Pod "+key)
	}

	nss, err := l.client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nss.Items {
		if isSystemNamespace(n.Name) {
			delete(wantNS, n.Name)
			continue
		}
		w, ok := wantNS[n.Name]
		switch {
		case !ok:
			if err := l.deleteNamespace(ctx, n.Name); err != nil {
				return err
			}
			delete(l.want, "Namespace "+n.Name)
		case !maps.Equal(withNameLabel(w), n.Labels) || !maps.Equal(w.Annotations, n.Annotations):
			n.Labels, n.Annotations = withNameLabel(w), w.Annotations
			out, err := l.client.CoreV1().Namespaces().Update(ctx, &n, metav1.UpdateOptions{})
			if err != nil {
				return fmt.Errorf("update namespace %s: %w", n.Name, err)
			}
			l.want["Namespace "+n.Name] = out.ResourceVersion
		}
		delete(wantNS, n.Name)
	}

	nodes, err := l.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nodes.Items {
		w, ok := wantNodes[n.Name]
		if !ok {
			if err := l.client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			delete(l.want, "Node "+n.Name)
			continue
		}
		if err := l.updateNode(ctx, w, &n); err != nil {
			return err
		}
		delete(wantNodes, n.Name)
	}

	// Creations: namespaces and nodes before pods and policies.
	for _, n := range sortedValues(wantNS) {
		out, err := l.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, Labels: n.Labels, Annotations: n.Annotations}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", n.Name, err)
		}
		l.want["Namespace "+n.Name] = out.ResourceVersion
	}
	for _, n := range sortedValues(wantNodes) {
		out, err := l.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, Labels: n.Labels, Annotations: n.Annotations}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
		if err := l.updateNode(ctx, n, out); err != nil {
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
		out, err := l.client.CoreV1().Pods(p.Namespace).Create(ctx, in, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		if err := l.updatePod(ctx, p, out); err != nil {
			return err
		}
	}
	for _, p := range sortedValues(wantPols) {
		out, err := l.client.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Annotations: p.Annotations},
			Spec:       p.Spec}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create policy %s/%s: %w", p.Namespace, p.Name, err)
		}
		l.want["NetworkPolicy "+p.Namespace+"/"+p.Name] = out.ResourceVersion
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

func (l *Loader) updatePod(ctx context.Context, w, cur *corev1.Pod) error {
	key := cur.Namespace + "/" + cur.Name
	l.want["Pod "+key] = cur.ResourceVersion
	if !maps.Equal(w.Labels, cur.Labels) || !maps.Equal(w.Annotations, cur.Annotations) {
		cur.Labels, cur.Annotations = w.Labels, w.Annotations
		out, err := l.client.CoreV1().Pods(cur.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update pod %s: %w", key, err)
		}
		cur = out
		l.want["Pod "+key] = out.ResourceVersion
	}
	ws, cs := w.Status, cur.Status
	if ws.Phase != cs.Phase || ws.PodIP != cs.PodIP || ws.HostIP != cs.HostIP ||
		!equality.Semantic.DeepEqual(ws.PodIPs, cs.PodIPs) || !equality.Semantic.DeepEqual(ws.HostIPs, cs.HostIPs) {
		cur.Status.Phase, cur.Status.PodIP, cur.Status.PodIPs = ws.Phase, ws.PodIP, ws.PodIPs
		cur.Status.HostIP, cur.Status.HostIPs = ws.HostIP, ws.HostIPs
		out, err := l.client.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update pod %s status: %w", key, err)
		}
		l.want["Pod "+key] = out.ResourceVersion
	}
	return nil
}

func (l *Loader) updateNode(ctx context.Context, w, cur *corev1.Node) error {
	l.want["Node "+cur.Name] = cur.ResourceVersion
	if !maps.Equal(w.Labels, cur.Labels) {
		cur.Labels = w.Labels
		out, err := l.client.CoreV1().Nodes().Update(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update node %s: %w", cur.Name, err)
		}
		cur = out
		l.want["Node "+cur.Name] = out.ResourceVersion
	}
	if !equality.Semantic.DeepEqual(w.Status.Addresses, cur.Status.Addresses) {
		cur.Status.Addresses = w.Status.Addresses
		out, err := l.client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update node %s status: %w", cur.Name, err)
		}
		l.want["Node "+cur.Name] = out.ResourceVersion
	}
	return nil
}

// deleteNamespace deletes and, with no namespace controller running,
// finalizes a namespace whose content is already gone.
func (l *Loader) deleteNamespace(ctx context.Context, name string) error {
	if err := l.client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	n, err := l.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	n.Spec.Finalizers = nil
	if _, err := l.client.CoreV1().Namespaces().Finalize(ctx, n, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("finalize namespace %s: %w", name, err)
	}
	return nil
}

// Diff says how c differs from what was loaded: objects missing, extra or
// at another resourceVersion ("" when c shows exactly the loaded objects).
// System namespaces are ignored.
func (l *Loader) Diff(c *cluster.Cluster) string {
	got := map[string]string{}
	for _, n := range c.Namespaces {
		if !isSystemNamespace(n.Name) {
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
	for k, v := range l.want {
		if got[k] != v {
			d = append(d, fmt.Sprintf("%s at %q, want %q", k, got[k], v))
		}
	}
	for k := range got {
		if _, ok := l.want[k]; !ok {
			d = append(d, k+" should be gone")
		}
	}
	slices.Sort(d)
	return strings.Join(d, "; ")
}
