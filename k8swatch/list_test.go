package k8swatch

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

func listObjects() []runtime.Object {
	noProto := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-web", Namespace: "shop", ResourceVersion: "3"},
		Spec: networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{}}}},
		},
	}
	bad := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "bad-cidr", Namespace: "shop"},
		Spec: networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}}}}},
		},
	}
	return []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: corev1.NodeSpec{PodCIDR: "10.0.0.0/24"}},
		fullPod(),
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a-first", Namespace: "shop"}},
		noProto, bad,
	}
}

func TestListClient(t *testing.T) {
	client := fake.NewClientset(listObjects()...)
	c, err := ListClient(context.Background(), client, nil)
	var ve *cluster.ValidationError
	if !errors.As(err, &ve) || len(ve.Errors) != 1 || !strings.Contains(ve.Errors[0].Error(), "shop/bad-cidr") {
		t.Fatalf("err = %v, want one validation error naming shop/bad-cidr", err)
	}
	if c == nil {
		t.Fatal("no cluster returned with the validation error")
	}
	if len(c.Namespaces) != 2 || c.Namespaces[0].Name != "default" {
		t.Errorf("namespaces not read sorted: %v", c.Namespaces)
	}
	if got := c.Namespaces[1].Labels[corev1.LabelMetadataName]; got != "shop" {
		t.Errorf("namespace not defaulted like the informer's: label %q", got)
	}
	if len(c.Nodes) != 1 || c.Nodes[0].Spec.PodCIDR != "10.0.0.0/24" {
		t.Errorf("nodes: %v", c.Nodes)
	}
	if len(c.Pods) != 2 || c.Pods[0].Name != "a-first" || c.Pods[1].Name != "web-0" {
		t.Fatalf("pods not read sorted: %d", len(c.Pods))
	}
	web := c.Pods[1]
	if web.Spec.Containers[0].Image != "" || len(web.Annotations) != 1 || web.Status.PodIP != "10.0.0.5" {
		t.Errorf("pod not stripped like the informer's cache: %+v", web)
	}
	if len(c.Policies) != 1 || c.Policies[0].Name != "allow-web" {
		t.Fatalf("policies: %v", c.Policies)
	}
	p := c.Policies[0]
	if len(p.Spec.PolicyTypes) != 1 || *p.Spec.Ingress[0].Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("policy not defaulted: %+v", p.Spec)
	}
}

func TestListClientPages(t *testing.T) {
	client := fake.NewClientset()
	calls := 0
	client.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		calls++
		opts := a.(k8stesting.ListActionImpl).ListOptions
		if opts.Limit != listPage {
			t.Errorf("list without a page limit: %+v", opts)
		}
		l := &corev1.PodList{}
		switch opts.Continue {
		case "":
			l.Items = []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "p2", Namespace: "x"}}}
			l.Continue = "next"
		case "next":
			l.Items = []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "p1", Namespace: "x"}}}
		default:
			t.Errorf("continue %q", opts.Continue)
		}
		return true, l, nil
	})
	c, err := ListClient(context.Background(), client, nil)
	if err != nil {
		t.Fatal(err)
	}
	if calls != 2 || len(c.Pods) != 2 || c.Pods[0].Name != "p1" {
		t.Errorf("%d calls, pods %v", calls, c.Pods)
	}
}

func TestListClientForbidden(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", errors.New("no RBAC"))
	})
	_, err := ListClient(context.Background(), client, nil)
	var le *ListError
	if !errors.As(err, &le) || le.Resource != "nodes" || !apierrors.IsForbidden(err) {
		t.Fatalf("err = %v, want a forbidden ListError for nodes", err)
	}
}

func TestListClusterPolicies(t *testing.T) {
	gvr := schema.GroupVersionResource{Group: ClusterPolicyGroup, Version: "v1alpha2", Resource: clusterPolicyResource}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": ClusterPolicyGroup + "/v1alpha2",
		"kind":       "ClusterNetworkPolicy",
		"metadata":   map[string]any{"name": "deny-all", "annotations": map[string]any{"other": "x"}},
		"spec": map[string]any{
			"tier":     "Admin",
			"priority": int64(10),
			"subject":  map[string]any{"namespaces": map[string]any{}},
		},
	}}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{gvr: "ClusterNetworkPolicyList"}, u)

	for _, tc := range []struct {
		name   string
		served []*metav1.APIResourceList
		want   int
	}{
		{"crd absent", nil, 0},
		{"v1alpha2 served", []*metav1.APIResourceList{{GroupVersion: ClusterPolicyGroup + "/v1alpha2", APIResources: []metav1.APIResource{{Name: clusterPolicyResource}}}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			client.Discovery().(*fakediscovery.FakeDiscovery).Resources = tc.served
			c, err := ListClient(context.Background(), client, dyn)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.ClusterPolicies) != tc.want {
				t.Fatalf("%d cluster policies, want %d", len(c.ClusterPolicies), tc.want)
			}
			if tc.want == 0 {
				return
			}
			p := c.ClusterPolicies[0]
			if p.Name != "deny-all" || p.Spec.Priority != 10 || string(p.Spec.Tier) != "Admin" || p.Annotations != nil || p.Kind != "ClusterNetworkPolicy" {
				t.Errorf("converted policy: %+v", p)
			}
		})
	}
}
