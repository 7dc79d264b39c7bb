package k8swatch_test

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	cnpRes = schema.GroupVersionResource{Group: cluster.CNPGroup, Version: cluster.CNPVersion, Resource: "clusternetworkpolicies"}
)

// upstreamCRD reads the network-policy-api v0.3.0 CRD of a channel
// (standard or experimental) from the module's directory.
func upstreamCRD(t *testing.T, channel string) *unstructured.Unstructured {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("go list the network-policy-api module: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "config", "crd", channel, "policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := sigsyaml.Unmarshal(b, &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

// installCRD creates the CRD and waits until it serves.
func installCRD(t *testing.T, dyn dynamic.Interface, crd *unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	if _, err := dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("install CRD: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := dyn.Resource(cnpRes).List(ctx, metav1.ListOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("CRD not serving: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cnpFromYAML(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := sigsyaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return u
}

const cnpDenyShop = `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: shop}}}
  ingress:
  - {name: no-web, action: %ACTION%, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}], protocols: [{tcp: {destinationPort: {number: 5432}}}]}
`

// TestInformerIntegrationClusterNetworkPolicy runs the agent's source
// against a real kube-apiserver: it starts without the ClusterNetworkPolicy
// CRD, the upstream v0.3.0 CRD is installed later (no restart), and
// creates, updates and deletes reach the compiled decisions within a
// second. Then the loader's validation is compared with the API server's
// on valid and invalid objects.
func TestInformerIntegrationClusterNetworkPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	srv := apiserver.Start(t)
	ctx := context.Background()
	client := srv.Client(t)
	dyn, err := dynamic.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	// The default CRDCheck (30 s): the CRD's installation must be followed
	// through the watch on the CRD object, not the periodic check.
	src := startSource(t, srv.Config, k8swatch.InformerOptions{Quiet: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond})
	eventually(t, src, "first sync without the CRD", func(*cluster.Cluster) bool { return true })
	agent := runAgentLoop(t, src)

	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web, err := client.CoreV1().Pods("shop").Create(ctx, newPod("shop", "web", map[string]string{"app": "web"}, 8080), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	db, err := client.CoreV1().Pods("shop").Create(ctx, newPod("shop", "db", map[string]string{"app": "db"}, 5432), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodStatus(t, client, web, "10.244.0.10")
	setPodStatus(t, client, db, "10.244.0.11")
	webToDB := filter.Flow{Src: netip.MustParseAddr("10.244.0.10"), Dst: netip.MustParseAddr("10.244.0.11"), SrcPort: 40000, DstPort: 5432, Proto: filter.ProtoTCP}
	agent.expect(t, webToDB, true, "no policy, no CRD")

	// The CRD installed while the agent runs (standard channel, as the
	// docs say), then a policy: enforced without a restart.
	crdStart := time.Now()
	installCRD(t, dyn, upstreamCRD(t, "standard"))
	for src.ClusterPolicyVersion() != "policy.networking.k8s.io/v1beta1" {
		if time.Since(crdStart) > 10*time.Second {
			t.Fatalf("ClusterPolicyVersion() = %q 10s after the CRD was installed (want v1beta1 within seconds; the periodic check is 30s away)", src.ClusterPolicyVersion())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("CRD installed: its ClusterNetworkPolicies watched and synced %v later", time.Since(crdStart).Round(time.Millisecond))
	res := dyn.Resource(cnpRes)
	start := time.Now()
	if _, err := res.Create(ctx, cnpFromYAML(t, strings.ReplaceAll(cnpDenyShop, "%ACTION%", "Deny")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agent.expect(t, webToDB, false, "Admin Deny created after the CRD was installed")
	t.Logf("CRD installed later: create followed in %v", time.Since(start).Round(time.Millisecond))

	// Update and delete, each followed within a second.
	within := func(what string, allow bool, change func()) {
		t.Helper()
		start := time.Now()
		change()
		agent.expect(t, webToDB, allow, what)
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: followed in %v, want within 1s", what, d)
		} else {
			t.Logf("%s: followed in %v", what, d.Round(time.Millisecond))
		}
	}
	within("update Deny to Pass (then no NetworkPolicy: allowed)", true, func() {
		cur, err := res.Get(ctx, "guard", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		upd := cnpFromYAML(t, strings.ReplaceAll(cnpDenyShop, "%ACTION%", "Pass"))
		upd.SetResourceVersion(cur.GetResourceVersion())
		if _, err := res.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	within("update Pass back to Deny", false, func() {
		cur, err := res.Get(ctx, "guard", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		upd := cnpFromYAML(t, strings.ReplaceAll(cnpDenyShop, "%ACTION%", "Deny"))
		upd.SetResourceVersion(cur.GetResourceVersion())
		if _, err := res.Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	within("delete", true, func() {
		if err := res.Delete(ctx, "guard", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	// Invalid objects: the API server refuses them, and so does the loader
	// (its validation is the CRD's). Valid ones pass both.
	head := "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: NAME}\nspec:\n"
	body := "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n"
	cases := []struct {
		name  string
		spec  string
		valid bool
	}{
		{"ok", body + "  egress: [{action: Deny, to: [{networks: [10.0.0.0/8, \"fd00::/8\"]}], protocols: [{udp: {destinationPort: {range: {start: 1, end: 2}}}}]}]\n", true},
		{"ok-priority-bounds", "  tier: Baseline\n  priority: 1000\n  subject: {pods: {namespaceSelector: {}, podSelector: {}}}\n", true},
		{"priority-1001", "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}\n", false},
		{"no-priority", "  tier: Admin\n  subject: {namespaces: {}}\n", false},
		{"bad-tier", "  tier: admin\n  priority: 1\n  subject: {namespaces: {}}\n", false},
		{"two-subjects", "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n", false},
		{"no-subject", "  tier: Admin\n  priority: 1\n  subject: {}\n", false},
		{"pods-no-podselector", "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n", false},
		{"bad-action", body + "  ingress: [{action: Allow, from: [{namespaces: {}}]}]\n", false},
		{"empty-from", body + "  ingress: [{action: Deny, from: []}]\n", false},
		{"empty-peer", body + "  egress: [{action: Deny, to: [{}]}]\n", false},
		{"two-peers", body + "  egress: [{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}]\n", false},
		{"cidr-not-canonical", body + "  egress: [{action: Deny, to: [{networks: [10.0.0.1/8]}]}]\n", false},
		{"cidr-bad", body + "  egress: [{action: Deny, to: [{networks: [10.0.0.0/33]}]}]\n", false},
		{"cidr-duplicate", body + "  egress: [{action: Deny, to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]}]\n", false},
		{"range-equal", body + "  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 5, end: 5}}}}]}]\n", false},
		{"port-zero", body + "  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 0}}}]}]\n", false},
		{"port-number-and-range", body + "  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 5, range: {start: 1, end: 2}}}}]}]\n", false},
		{"tcp-empty", body + "  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {}}]}]\n", false},
		{"two-protocols", body + "  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}]}]\n", false},
		{"26-rules", body + "  ingress:\n" + strings.Repeat("  - {action: Deny, from: [{namespaces: {}}]}\n", 26), false},
		{"26-peers", body + "  ingress: [{action: Deny, from: [" + strings.Repeat("{namespaces: {}}, ", 25) + "{namespaces: {}}]}]\n", false},
		{"long-rule-name", body + "  ingress: [{name: " + strings.Repeat("a", 101) + ", action: Deny, from: [{namespaces: {}}]}]\n", false},
		{"ok-long-rule-name", body + "  ingress: [{name: " + strings.Repeat("a", 100) + ", action: Deny, from: [{namespaces: {}}]}]\n", true},
	}
	for _, tc := range cases {
		doc := strings.Replace(head, "NAME", tc.name, 1) + tc.spec
		_, apiErr := res.Create(ctx, cnpFromYAML(t, doc), metav1.CreateOptions{FieldValidation: "Strict"})
		c, loadErr := cluster.Decode(tc.name+".yaml", []byte(doc))
		if apiErr != nil && !apierrors.IsInvalid(apiErr) && !apierrors.IsBadRequest(apiErr) {
			t.Fatalf("%s: API server: %v", tc.name, apiErr)
		}
		if (apiErr == nil) != tc.valid || (loadErr == nil) != tc.valid || len(c.ClusterPolicies) != map[bool]int{true: 1}[tc.valid] {
			t.Errorf("%s: valid=%v; API server: %v; loader: %v", tc.name, tc.valid, apiErr, loadErr)
		} else if !tc.valid {
			t.Logf("%s: API server: %v\n  loader: %v", tc.name, apiErr, loadErr)
		}
	}
	eventually(t, src, "the valid objects, and only them, in the cluster", func(c *cluster.Cluster) bool {
		var names []string
		for _, p := range c.ClusterPolicies {
			names = append(names, p.Name)
		}
		return strings.Join(names, ",") == "ok,ok-long-rule-name,ok-priority-bounds"
	})
}
