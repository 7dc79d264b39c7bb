package cluster

import (
	"os"
	"strings"
	"testing"
)

// FuzzDecode checks that no input makes the loader panic, and that every
// object it returns passed validation.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(addrCluster))
	f.Add([]byte(policyDoc("x", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80, endPort: 90}]}]\n")))
	f.Add([]byte(`{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "List", "items": []}]}`))
	f.Add([]byte("objects:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\nprobes: []\n---\na: &a [*a]\n"))
	f.Add([]byte(cnpDoc("x", cnpHead+"  ingress: [{action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {}}}], protocols: [{tcp: {destinationPort: {range: {start: 1, end: 2}}}}]}]\n  egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}, {nodes: {}}, {domainNames: [a.b]}]}]\n")))
	f.Add([]byte(strings.Replace(cnpDoc("y", "  tier: Baseline\n  priority: 0\n  subject: {pods: {}}\n"), "v1beta1", "v1alpha2", 1)))
	for _, name := range []string{"../testdata/conformance/public/seed-6-hostnetwork-and-node-traffic.yaml", "../testdata/conformance/public-cnp/cnp-admin-tier-egress-node-peers-2-pass-egress-rule-policy-for-egress-node-peer.yaml"} {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _ := Decode("fuzz.yaml", data)
		if c == nil {
			t.Fatal("nil Cluster")
		}
		for _, p := range c.Policies {
			if errs := ValidatePolicy(p); len(errs) > 0 {
				t.Fatalf("invalid policy returned: %v", errs)
			}
		}
		for _, p := range c.ClusterPolicies {
			if errs := ValidateClusterPolicy(p); len(errs) > 0 {
				t.Fatalf("invalid ClusterNetworkPolicy returned: %v", errs)
			}
		}
		for _, p := range c.Pods {
			if errs := ValidatePod(p); len(errs) > 0 {
				t.Fatalf("invalid pod returned: %v", errs)
			}
		}
		ix := NewIndex(c)
		for _, p := range c.Pods {
			_, _ = ix.Resolve(p.Namespace+"/"+p.Name, 4)
			_, _ = ix.Resolve(p.Namespace+"/"+p.Name, 6)
		}
	})
}
