package scale

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/nfqpolicy/nfqpolicy/bench"
	"github.com/nfqpolicy/nfqpolicy/cluster"
)

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	cnpGVR = schema.GroupVersionResource{Group: cluster.CNPGroup, Version: cluster.CNPVersion, Resource: "clusternetworkpolicies"}
)

// installCNPCRD creates network-policy-api's ClusterNetworkPolicy CRD
// (experimental channel, the module's own copy: named ports and
// domainNames, which bench.ClusterPolicies uses, are experimental) and waits until it serves.
func installCNPCRD(ctx context.Context, dyn dynamic.Interface) error {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		return fmt.Errorf("go list the network-policy-api module: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental", "policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	if err != nil {
		return err
	}
	crd := &unstructured.Unstructured{}
	if err := sigsyaml.Unmarshal(b, &crd.Object); err != nil {
		return fmt.Errorf("CRD: %w", err)
	}
	if _, err := dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("install CRD: %w", err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := dyn.Resource(cnpGVR).List(ctx, metav1.ListOptions{})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CRD not serving after a minute: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// createCNPs creates bench.ClusterPolicies' admin Admin and baseline
// Baseline tier policies over nss generated namespaces (guardrails; none
// selects the probe namespace, so the probes' verdicts stay the
// NetworkPolicies').
func (w *world) createCNPs(ctx context.Context, admin, baseline, nss int) error {
	cnps := bench.ClusterPolicies(admin, baseline, nss, 1)
	return parallel(ctx, len(cnps), 16, func(i int) error {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cnps[i])
		if err != nil {
			return err
		}
		u := &unstructured.Unstructured{Object: m}
		u.SetAPIVersion(cnpGVR.GroupVersion().String())
		u.SetKind("ClusterNetworkPolicy")
		if _, err := w.dyn.Resource(cnpGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create ClusterNetworkPolicy %s: %w", cnps[i].Name, err)
		}
		w.mu.Lock()
		w.cnpNames = append(w.cnpNames, cnps[i].Name)
		w.mu.Unlock()
		return nil
	})
}

// churnCNP changes a random ClusterNetworkPolicy's priority (which
// reorders its tier), as an administrator's edit would.
func (w *world) churnCNP(ctx context.Context) string {
	w.mu.Lock()
	if len(w.cnpNames) == 0 {
		w.mu.Unlock()
		return "none"
	}
	name := w.cnpNames[w.rnd.IntN(len(w.cnpNames))]
	prio := 10 + w.rnd.IntN(990)
	w.mu.Unlock()
	patch := fmt.Sprintf(`[{"op":"replace","path":"/spec/priority","value":%d}]`, prio)
	_, err := w.dyn.Resource(cnpGVR).Patch(ctx, name, types.JSONPatchType, []byte(patch), metav1.PatchOptions{})
	w.noteErr(err)
	return "cnp-update"
}
