package k8swatch

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// servedVersions is a discovery that serves the ClusterNetworkPolicy
// resource in the versions a test sets, safely for the watcher's goroutine.
type servedVersions struct {
	discovery.DiscoveryInterface
	mu       sync.Mutex
	versions []string
}

func (d *servedVersions) set(v ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.versions = v
}

func (d *servedVersions) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.versions {
		if gv == cluster.CNPGroup+"/"+v {
			return &metav1.APIResourceList{GroupVersion: gv, APIResources: []metav1.APIResource{{Name: cnpResource, Kind: "ClusterNetworkPolicy"}}}, nil
		}
	}
	return nil, &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: http.StatusNotFound, Reason: metav1.StatusReasonNotFound}}
}

func cnpGVR(v string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: cluster.CNPGroup, Version: v, Resource: cnpResource}
}

func cnpObject(version, name string, priority int64, extraEgress ...any) *unstructured.Unstructured {
	egress := []any{map[string]any{"name": "no-metadata", "action": "Deny", "to": []any{map[string]any{"networks": []any{"169.254.169.254/32"}}}}}
	egress = append(egress, extraEgress...)
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": cluster.CNPGroup + "/" + version,
		"kind":       "ClusterNetworkPolicy",
		// The fake tracker sets no resourceVersion; the source re-checks a
		// policy when it changes, as it does on a real API server.
		"metadata": map[string]any{"name": name, "resourceVersion": fmt.Sprint(priority), "annotations": map[string]any{"kubectl.kubernetes.io/last-applied-configuration": "{}", "nfqpolicy.io/mode": "audit"}},
		"spec": map[string]any{
			"tier": "Admin", "priority": priority,
			"subject": map[string]any{"namespaces": map[string]any{}},
			"egress":  egress,
		},
		"status": map[string]any{"conditions": []any{}},
	}}
}

// TestInformerClusterPolicies follows the CRD's life: absent at start (the
// agent runs, says so once), installed later serving only v1alpha2 (the
// policies appear as v1beta1), upgraded to serve v1beta1 (the informer
// switches), objects updated and deleted, and the CRD removed.
func TestInformerClusterPolicies(t *testing.T) {
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		cnpGVR("v1beta1"): "ClusterNetworkPolicyList", cnpGVR("v1alpha2"): "ClusterNetworkPolicyList",
		crdGVR: "CustomResourceDefinitionList",
	})
	var logs informerLogBuffer
	src, err := NewInformerSourceForClient(client, dyn, InformerOptions{Quiet: 10 * time.Millisecond, CRDCheck: 20 * time.Millisecond}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	disco := &servedVersions{}
	src.cnp.disco = disco
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Namespaces) == 1 })
	time.Sleep(100 * time.Millisecond) // several discovery checks
	if n := strings.Count(logs.String(), "CRD (clusternetworkpolicies.policy.networking.k8s.io) is not installed"); n != 1 {
		t.Fatalf("absent CRD reported %d times, want once:\n%s", n, logs.String())
	}

	// Installed later, serving v1alpha2 only.
	if _, err := dyn.Resource(cnpGVR("v1alpha2")).Create(ctx, cnpObject("v1alpha2", "alpha", 5), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	disco.set("v1alpha2")
	c := waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.ClusterPolicies) == 1 })
	p := c.ClusterPolicies[0]
	if p.Name != "alpha" || p.APIVersion != "policy.networking.k8s.io/v1beta1" || p.Spec.Tier != cnpv1beta1.AdminTier || p.Spec.Priority != 5 ||
		len(p.Spec.Egress) != 1 || p.Spec.Egress[0].To[0].Networks[0] != "169.254.169.254/32" {
		t.Fatalf("v1alpha2 object read as %+v", p)
	}
	if len(p.Annotations) != 1 || p.Annotations["nfqpolicy.io/mode"] != "audit" {
		t.Errorf("annotations not stripped to nfqpolicy.io/: %v", p.Annotations)
	}

	// Upgraded: v1beta1 served too (the API server converts; the fake
	// keeps versions apart, so the object is created in v1beta1 as well).
	if _, err := dyn.Resource(cnpGVR("v1beta1")).Create(ctx, cnpObject("v1beta1", "alpha", 6), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	disco.set("v1alpha2", "v1beta1")
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool {
		return len(c.ClusterPolicies) == 1 && c.ClusterPolicies[0].Spec.Priority == 6
	})

	// A domainNames rule is logged once; an update is followed.
	domains := map[string]any{"action": "Accept", "to": []any{map[string]any{"domainNames": []any{"example.com"}}}}
	if _, err := dyn.Resource(cnpGVR("v1beta1")).Update(ctx, cnpObject("v1beta1", "alpha", 7, domains), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool {
		return len(c.ClusterPolicies) == 1 && c.ClusterPolicies[0].Spec.Priority == 7
	})
	if _, err := dyn.Resource(cnpGVR("v1beta1")).Update(ctx, cnpObject("v1beta1", "alpha", 8, domains), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool {
		return len(c.ClusterPolicies) == 1 && c.ClusterPolicies[0].Spec.Priority == 8
	})
	if n := strings.Count(logs.String(), "has domainNames peers, which nfqpolicy does not enforce"); n != 1 {
		t.Errorf("domainNames rule logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `"rules":"egress[1] (Accept): example.com"`) {
		t.Errorf("domainNames log does not name the rule:\n%s", logs.String())
	}

	// An object a newer CRD allows (an unknown peer) is kept, reported:
	// the compiler fails closed on the peer it cannot read.
	newer := cnpObject("v1beta1", "newer", 9, map[string]any{"action": "Deny", "to": []any{map[string]any{"serviceAccounts": map[string]any{}}}})
	if _, err := dyn.Resource(cnpGVR("v1beta1")).Create(ctx, newer, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.ClusterPolicies) == 2 })
	if !strings.Contains(logs.String(), "serviceAccounts") || !strings.Contains(logs.String(), "spec.egress[1].to[0]: required value") {
		t.Errorf("the newer object's problems are not logged:\n%s", logs.String())
	}

	if err := dyn.Resource(cnpGVR("v1beta1")).Delete(ctx, "alpha", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool {
		return len(c.ClusterPolicies) == 1 && c.ClusterPolicies[0].Name == "newer"
	})

	// The CRD removed: nothing left to enforce, said once.
	disco.set()
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.ClusterPolicies) == 0 })
	if n := strings.Count(logs.String(), "ClusterNetworkPolicy CRD removed"); n != 1 {
		t.Errorf("CRD removal logged %d times, want once", n)
	}
}

// TestInformerClusterPoliciesFollowCRD: with the periodic check an hour
// away, installing the CRD is still followed within seconds, because the
// CRD object's events trigger discovery, and again when discovery answers
// some time after the CRD object appears (as the API server's does).
// Removing the CRD is followed the same way.
func TestInformerClusterPoliciesFollowCRD(t *testing.T) {
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		cnpGVR("v1beta1"): "ClusterNetworkPolicyList", cnpGVR("v1alpha2"): "ClusterNetworkPolicyList",
		crdGVR: "CustomResourceDefinitionList",
	})
	var logs informerLogBuffer
	src, err := NewInformerSourceForClient(client, dyn, InformerOptions{Quiet: 10 * time.Millisecond, CRDCheck: time.Hour}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	disco := &servedVersions{}
	src.cnp.disco = disco
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Namespaces) == 1 })
	if v := src.ClusterPolicyVersion(); v != "" {
		t.Fatalf("ClusterPolicyVersion() = %q without the CRD", v)
	}
	if _, err := dyn.Resource(cnpGVR("v1beta1")).Create(ctx, cnpObject("v1beta1", "guard", 5), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": cnpCRDName},
	}}
	start := time.Now()
	if _, err := dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * crdSettle / 2) // discovery lags the CRD object
	disco.set("v1beta1")
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.ClusterPolicies) == 1 })
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("CRD installed: followed in %v, want a few seconds (periodic check: 1h)", d)
	}
	if v := src.ClusterPolicyVersion(); v != "policy.networking.k8s.io/v1beta1" {
		t.Errorf("ClusterPolicyVersion() = %q once synced", v)
	}
	if st := src.Status(); st.ClusterPolicies != "policy.networking.k8s.io/v1beta1" {
		t.Errorf("Status().ClusterPolicies = %q", st.ClusterPolicies)
	}
	if !strings.Contains(logs.String(), "ClusterNetworkPolicies synced: enforced from now on") {
		t.Errorf("no log says the ClusterNetworkPolicies are enforced:\n%s", logs.String())
	}

	disco.set()
	if err := dyn.Resource(crdGVR).Delete(ctx, cnpCRDName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.ClusterPolicies) == 0 })
	if v := src.ClusterPolicyVersion(); v != "" {
		t.Errorf("ClusterPolicyVersion() = %q after the CRD was removed", v)
	}
}

// TestInformerClusterPoliciesCRDWatchForbidden: without RBAC to watch
// CRDs the agent says so once and still finds the CRD by its periodic
// discovery check.
func TestInformerClusterPoliciesCRDWatchForbidden(t *testing.T) {
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}})
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		cnpGVR("v1beta1"): "ClusterNetworkPolicyList", crdGVR: "CustomResourceDefinitionList",
	})
	var crdLists atomic.Int32
	dyn.PrependReactor("list", "customresourcedefinitions", func(k8stesting.Action) (bool, runtime.Object, error) {
		crdLists.Add(1)
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"}, "", fmt.Errorf("RBAC"))
	})
	var logs informerLogBuffer
	src, err := NewInformerSourceForClient(client, dyn, InformerOptions{Quiet: 10 * time.Millisecond, CRDCheck: 300 * time.Millisecond}, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	disco := &servedVersions{}
	src.cnp.disco = disco
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.Namespaces) == 1 })
	if _, err := dyn.Resource(cnpGVR("v1beta1")).Create(ctx, cnpObject("v1beta1", "guard", 5), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	disco.set("v1beta1")
	waitFor(t, src, 5*time.Second, func(c *cluster.Cluster) bool { return len(c.ClusterPolicies) == 1 })
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "cannot watch the ClusterNetworkPolicy CRD") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // client-go would have retried the list by now (backoff starts at 800ms)
	if n := strings.Count(logs.String(), "cannot watch the ClusterNetworkPolicy CRD"); n != 1 {
		t.Errorf("forbidden CRD watch logged %d times, want once:\n%s", n, logs.String())
	}
	if n := crdLists.Load(); n != 1 {
		t.Errorf("CRDs listed %d times, want once (no retries once forbidden)", n)
	}
}

func TestStripClusterPolicy(t *testing.T) {
	out, err := stripClusterPolicy(cnpObject("v1alpha2", "a", 3))
	if err != nil {
		t.Fatal(err)
	}
	e, ok := out.(*cnpEntry)
	if !ok || e.problem != "" || e.unreadable || e.Spec.Priority != 3 || e.APIVersion != "policy.networking.k8s.io/v1beta1" {
		t.Fatalf("stripped to %#v", out)
	}
	if again, _ := stripClusterPolicy(e); again != any(e) {
		t.Error("transform is not idempotent")
	}
	bad := cnpObject("v1beta1", "b", 3)
	bad.Object["spec"].(map[string]any)["priority"] = "high"
	out, _ = stripClusterPolicy(bad)
	if e := out.(*cnpEntry); !e.unreadable || e.Name != "b" {
		t.Fatalf("unconvertible object stripped to %#v", e)
	}
}
