package k8swatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// ClusterPolicyGroup is the API group of ClusterNetworkPolicy
// (network-policy-api); ClusterPolicyVersions are the served versions List
// reads, preferred first (v1alpha2 has v1beta1's schema).
const ClusterPolicyGroup = "policy.networking.k8s.io"

var ClusterPolicyVersions = []string{"v1beta1", "v1alpha2"}

const clusterPolicyResource = "clusternetworkpolicies"

// listPage is how many objects one list request asks for: the API server
// answers a large cluster in pages instead of one huge response.
const listPage = 500

// ListError is a list request the API server refused or never answered.
// Resource names what was being listed ("pods"); Err is client-go's error
// (an *apierrors.StatusError, or a transport error).
type ListError struct {
	Resource string
	Err      error
}

func (e *ListError) Error() string { return fmt.Sprintf("list %s: %v", e.Resource, e.Err) }
func (e *ListError) Unwrap() error { return e.Err }

// List reads the cluster once from the API server cfg points at: every
// Namespace, Node, Pod and NetworkPolicy, and the ClusterNetworkPolicies
// when their API is served. Objects go through the informer source's
// transform (the same fields kept, the same defaults) and policies through
// its validation, so the offline tools see exactly what the agent
// compiles. Invalid policies are left out and returned in a
// *cluster.ValidationError together with the Cluster of everything else.
func List(ctx context.Context, cfg *rest.Config) (*cluster.Cluster, error) {
	if cfg == nil {
		return nil, errors.New("list: nil rest config")
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "nfqpolicy"
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("list: client for %s: %w", cfg.Host, err)
	}
	// Protobuf for the built-in types, as the informer source does; the
	// dynamic client above keeps JSON, which is all a CRD speaks.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("list: client for %s: %w", cfg.Host, err)
	}
	return ListClient(ctx, client, dyn)
}

// ListClient is List with existing clients (tests pass client-go's fakes).
// dyn may be nil: ClusterNetworkPolicies are then not read.
func ListClient(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface) (*cluster.Cluster, error) {
	c := &cluster.Cluster{}
	var err error
	// Namespaces first: the cheapest request tells an unreachable server
	// or a missing permission before the big lists are asked for.
	if c.Namespaces, err = listAll(ctx, "namespaces", func(o metav1.ListOptions) ([]corev1.Namespace, string, error) {
		l, err := client.CoreV1().Namespaces().List(ctx, o)
		if err != nil {
			return nil, "", err
		}
		return l.Items, l.Continue, nil
	}, stripNamespace); err != nil {
		return nil, err
	}
	if c.Nodes, err = listAll(ctx, "nodes", func(o metav1.ListOptions) ([]corev1.Node, string, error) {
		l, err := client.CoreV1().Nodes().List(ctx, o)
		if err != nil {
			return nil, "", err
		}
		return l.Items, l.Continue, nil
	}, stripNode); err != nil {
		return nil, err
	}
	if c.Pods, err = listAll(ctx, "pods", func(o metav1.ListOptions) ([]corev1.Pod, string, error) {
		l, err := client.CoreV1().Pods("").List(ctx, o)
		if err != nil {
			return nil, "", err
		}
		return l.Items, l.Continue, nil
	}, stripPod); err != nil {
		return nil, err
	}
	all, err := listAll(ctx, "networkpolicies", func(o metav1.ListOptions) ([]networkingv1.NetworkPolicy, string, error) {
		l, err := client.NetworkingV1().NetworkPolicies("").List(ctx, o)
		if err != nil {
			return nil, "", err
		}
		return l.Items, l.Continue, nil
	}, stripPolicy)
	if err != nil {
		return nil, err
	}
	var errs []cluster.FieldError
	c.Policies = make([]*networkingv1.NetworkPolicy, 0, len(all))
	for _, p := range all {
		if err := validateInformerPolicy(p); err != nil {
			errs = append(errs, cluster.FieldErrors(err)...)
			continue
		}
		c.Policies = append(c.Policies, p)
	}
	if dyn != nil {
		cnps, err := listClusterPolicies(ctx, client.Discovery(), dyn)
		if err != nil {
			return nil, err
		}
		for _, p := range cnps {
			cluster.DefaultClusterPolicy(p)
			if ferrs := cluster.ValidateClusterPolicy(p); len(ferrs) > 0 {
				errs = append(errs, ferrs...)
				continue
			}
			c.ClusterPolicies = append(c.ClusterPolicies, p)
		}
	}
	return c, cluster.AsError(errs)
}

// listAll pages through one resource and returns its objects stripped and
// defaulted like the informer's cache holds them, sorted by namespace and
// name as the informer source publishes them.
func listAll[T any, P interface {
	*T
	metav1.Object
}](ctx context.Context, resource string, page func(metav1.ListOptions) ([]T, string, error), strip func(P) P) ([]P, error) {
	var out []P
	opts := metav1.ListOptions{Limit: listPage}
	for {
		items, cont, err := page(opts)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if apierrors.IsResourceExpired(err) && opts.Continue != "" {
				// The continue token outlived etcd's compaction: start
				// over rather than return a torn list.
				out, opts = out[:0], metav1.ListOptions{Limit: listPage}
				continue
			}
			return nil, &ListError{Resource: resource, Err: err}
		}
		for i := range items {
			out = append(out, strip(P(&items[i])))
		}
		if cont == "" {
			break
		}
		opts.Continue = cont
	}
	slices.SortFunc(out, func(a, b P) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	return out, nil
}

// ServedClusterPolicyVersion returns the ClusterNetworkPolicy version the
// API server serves ("" when the CRD is not installed).
func ServedClusterPolicyVersion(disc discovery.DiscoveryInterface) (string, error) {
	for _, v := range ClusterPolicyVersions {
		gv := ClusterPolicyGroup + "/" + v
		rl, err := disc.ServerResourcesForGroupVersion(gv)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", &ListError{Resource: clusterPolicyResource + "." + ClusterPolicyGroup, Err: err}
		}
		for _, r := range rl.APIResources {
			if r.Name == clusterPolicyResource {
				return v, nil
			}
		}
	}
	return "", nil
}

// listClusterPolicies reads every ClusterNetworkPolicy of the served
// version into v1beta1 types; none when the CRD is absent. The caller
// defaults and validates them as the file loader does.
func listClusterPolicies(ctx context.Context, disc discovery.DiscoveryInterface, dyn dynamic.Interface) ([]*cnpv1beta1.ClusterNetworkPolicy, error) {
	version, err := ServedClusterPolicyVersion(disc)
	if err != nil || version == "" {
		return nil, err
	}
	res := dyn.Resource(schema.GroupVersionResource{Group: ClusterPolicyGroup, Version: version, Resource: clusterPolicyResource})
	var out []*cnpv1beta1.ClusterNetworkPolicy
	opts := metav1.ListOptions{Limit: listPage}
	for {
		l, err := res.List(ctx, opts)
		if err != nil {
			return nil, &ListError{Resource: clusterPolicyResource + "." + ClusterPolicyGroup, Err: err}
		}
		for i := range l.Items {
			p, err := clusterPolicyFrom(&l.Items[i])
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		if l.GetContinue() == "" {
			break
		}
		opts.Continue = l.GetContinue()
	}
	slices.SortFunc(out, func(a, b *cnpv1beta1.ClusterNetworkPolicy) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// clusterPolicyFrom converts a served ClusterNetworkPolicy (v1beta1 or
// v1alpha2, one schema) to the model's v1beta1 type, keeping only what the
// compiler reads of its metadata.
func clusterPolicyFrom(u *unstructured.Unstructured) (*cnpv1beta1.ClusterNetworkPolicy, error) {
	var p cnpv1beta1.ClusterNetworkPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
		return nil, fmt.Errorf("ClusterNetworkPolicy %s: %w", u.GetName(), err)
	}
	p.ObjectMeta = stripMeta(&p.ObjectMeta)
	p.APIVersion = ClusterPolicyGroup + "/v1beta1"
	p.Kind = "ClusterNetworkPolicy"
	return &p, nil
}
