package scenario

import (
	"os"
	"testing"
)

// FuzzParse feeds scenario files (a user's, or a shared corpus) to the
// parser: no input may panic it, and every scenario it returns has a name
// and probes that each name both ends.
func FuzzParse(f *testing.F) {
	for _, p := range []string{
		"../testdata/conformance/public/seed-1-docs-test-network-policy.yaml",
		"../testdata/conformance/public/seed-6-hostnetwork-and-node-traffic.yaml",
	} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("name: x\nobjects: []\nprobes: [{from: a/b, to: 10.0.0.1, port: 80, expect: allow}]\n"))
	f.Add([]byte("name: x\nprobes: [{from: a/b, to: c/d, port: 0, protocol: ICMP, expect: maybe}]\n---\nname: y\n"))
	f.Add([]byte("a: &a [*a, *a, *a]\nb: &b [*a, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ss, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		for _, s := range ss {
			if s == nil || s.Cluster == nil {
				t.Fatalf("Parse returned a nil scenario or cluster: %+v", s)
			}
			for _, p := range s.Probes {
				if p.From == "" || p.To == "" {
					t.Fatalf("probe without an end accepted: %+v", p)
				}
			}
		}
	})
}
