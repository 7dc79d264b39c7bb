package cluster

import (
	"os"
	"testing"
)

// FuzzDecode checks that no input makes the loader panic, and that every
// object it returns passed validation.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(addrCluster))
	f.Add([]byte(policyDoc("x", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80, endPort: 90}]}]\n")))
	f.Add([]byte(`{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "List", "items": []}]}`))
	f.Add([]byte("objects:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\nprobes: []\n---\na: &a [*a]\n"))
	if b, err := os.ReadFile("../testdata/conformance/public/seed-6-hostnetwork-and-node-traffic.yaml"); err == nil {
		f.Add(b)
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
