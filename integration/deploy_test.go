package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

const deployDir = "../deploy"

// manifests reads every object of deploy/*.yaml except the kustomization,
// which is kubectl's input, not an API object.
func manifests(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(deployDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var m map[string]any
			if err := dec.Decode(&m); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if len(m) == 0 {
				continue
			}
			u := &unstructured.Unstructured{Object: m}
			u.SetAnnotations(map[string]string{"nfqpolicy.io/source-file": filepath.Base(f)})
			objs = append(objs, u)
		}
	}
	if len(objs) == 0 {
		t.Fatalf("no manifests in %s", deployDir)
	}
	return objs
}

// TestKustomizationListsEveryManifest keeps kubectl apply -k and the files
// in step: a manifest the kustomization forgets is never applied.
func TestKustomizationListsEveryManifest(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(deployDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := utilyaml.Unmarshal(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(deployDir, "*.yaml"))
	var want []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(got, want) {
		t.Fatalf("kustomization resources %v, files %v", got, want)
	}
}

// TestIntegrationManifestsDryRun sends every manifest to a real API server
// with dryRun=All: schema, defaulting, validation and admission all run,
// nothing is stored.
func TestIntegrationManifestsDryRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	srv := apiserver.Start(t)
	ctx := context.Background()
	client := srv.Client(t)
	ensureNamespace(t, client, "kube-system")

	dyn, err := dynamic.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restMapper(t, srv.Config)
	for _, u := range manifests(t) {
		name := u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName() + " (" + u.GetAnnotations()["nfqpolicy.io/source-file"] + ")"
		t.Run(u.GetKind()+"/"+u.GetName(), func(t *testing.T) {
			res, err := resourceFor(mapper, dyn, u)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got, err := res.Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
			if err != nil {
				t.Fatalf("%s rejected: %v", name, err)
			}
			if got.GetUID() == "" {
				t.Fatalf("%s: dry-run answer has no uid: %v", name, got.Object)
			}
		})
	}
	// Dry run stored nothing.
	if _, err := client.AppsV1().DaemonSets("kube-system").Get(ctx, "nfqpolicy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run stored the DaemonSet: err=%v", err)
	}
}

// TestIntegrationRBAC applies the ServiceAccount, ClusterRole and
// ClusterRoleBinding for real, then runs the informer source as the
// agent's service account: it must sync. The ClusterRole must grant exactly
// get/list/watch on the four resources, and a service account without the
// binding must be refused, so the test sees RBAC actually enforced.
func TestIntegrationRBAC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	srv := apiserver.Start(t)
	ctx := context.Background()
	client := srv.Client(t)
	ensureNamespace(t, client, "kube-system")
	dyn, err := dynamic.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restMapper(t, srv.Config)
	for _, u := range manifests(t) {
		switch u.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding":
		default:
			continue
		}
		res, err := resourceFor(mapper, dyn, u)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}

	role, err := client.RbacV1().ClusterRoles().Get(ctx, "nfqpolicy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	granted := map[string][]string{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				key := g + "/" + res
				granted[key] = append(granted[key], r.Verbs...)
			}
		}
	}
	want := map[string][]string{
		"/pods": {"get", "list", "watch"}, "/namespaces": {"get", "list", "watch"}, "/nodes": {"get", "list", "watch"},
		"networking.k8s.io/networkpolicies":               {"get", "list", "watch"},
		"policy.networking.k8s.io/clusternetworkpolicies": {"get", "list", "watch"},
		// Only the ClusterNetworkPolicy CRD object (resourceNames, checked
		// below): the agent watches it to follow the CRD within a second.
		"apiextensions.k8s.io/customresourcedefinitions": {"get", "list", "watch"},
	}
	if len(granted) != len(want) {
		t.Fatalf("ClusterRole grants %v, want exactly %v", granted, want)
	}
	for k, verbs := range want {
		if got := slices.Sorted(slices.Values(granted[k])); !slices.Equal(got, verbs) {
			t.Fatalf("ClusterRole grants %s %v, want %v", k, got, verbs)
		}
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Verbs, rbacv1.VerbAll) || slices.Contains(r.Resources, rbacv1.ResourceAll) {
			t.Fatalf("ClusterRole has a wildcard rule: %+v", r)
		}
		if slices.Contains(r.Resources, "customresourcedefinitions") && !slices.Equal(r.ResourceNames, []string{"clusternetworkpolicies.policy.networking.k8s.io"}) {
			t.Fatalf("ClusterRole grants CRDs beyond the ClusterNetworkPolicy one: %+v", r)
		}
	}

	asAgent := rest.CopyConfig(srv.Config)
	asAgent.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:kube-system:nfqpolicy",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
	}
	src, err := k8swatch.NewInformerSource(asAgent, k8swatch.InformerOptions{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, src)
	waitSynced(t, src, 15*time.Second)

	stranger := rest.CopyConfig(srv.Config)
	stranger.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:kube-system:someone-else",
		Groups:   []string{"system:serviceaccounts", "system:authenticated"},
	}
	denied, err := k8swatch.NewInformerSource(stranger, k8swatch.InformerOptions{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, denied)
	deadline := time.Now().Add(10 * time.Second)
	for !apierrors.IsForbidden(denied.LastError()) {
		if time.Now().After(deadline) {
			t.Fatalf("unbound service account: LastError = %v, want Forbidden", denied.LastError())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := denied.Current(); ok {
		t.Fatal("a source without RBAC reports a synced state")
	}
}

func ensureNamespace(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	_, err := client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

func restMapper(t *testing.T, cfg *rest.Config) meta.RESTMapper {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
}

func resourceFor(mapper meta.RESTMapper, dyn dynamic.Interface, u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, err
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			return nil, errors.New("namespaced object without metadata.namespace (kubectl would put it in the current context's namespace)")
		}
		return dyn.Resource(m.Resource).Namespace(u.GetNamespace()), nil
	}
	return dyn.Resource(m.Resource), nil
}
