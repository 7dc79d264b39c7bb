// Package testcluster is a small cluster of namespaces x and y, node node-1,
// pods x/a, x/b, y/c and policies that tests of the verdict observers
// (capture, flowlog, debugapi, metrics) compile; test-only helpers.
//
// It lives apart from any one of those packages so that they all assert
// against the same verdicts and names instead of four copies that drift.
package testcluster

import (
	"net/netip"
	"strings"
	"testing"

	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// YAML is the cluster: namespaces x and y; node node-1 (192.168.0.1); pods
// x/a (app=a; 10.0.1.1 and fd00:10::1), x/b (app=b; 10.0.1.2) and y/c
// (app=c; 10.0.1.3), all running on node-1. x/allow-a isolates x/b for
// ingress and lets app=a in on TCP 80; the staged (audit-mode)
// x/staged-deny isolates x/a.
const YAML = `
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1, podIPs: [{ip: 10.0.1.1}, {ip: "fd00:10::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: staged-deny, namespace: x, annotations: {nfqpolicy.io/mode: audit}}
spec: {podSelector: {matchLabels: {app: a}}}
`

// Compile compiles YAML plus the extra documents (objects a test adds to the
// cluster) and fails the test on any decode or compile error.
func Compile(t testing.TB, extra ...string) *filter.Ruleset {
	t.Helper()
	return CompileDocs(t, append([]string{YAML}, extra...)...)
}

// CompileDocs compiles exactly the given YAML documents, for a test whose
// assertions need a cluster other than YAML, and fails the test on any
// decode or compile error.
func CompileDocs(t testing.TB, docs ...string) *filter.Ruleset {
	t.Helper()
	// A separator between the pieces keeps one's last document from running
	// into the next one's first; empty documents this leaves are skipped.
	c, err := cluster.Decode("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	if err != nil {
		t.Fatalf("decode test cluster: %v", err)
	}
	rs, err := filter.Compile(c)
	if err != nil {
		t.Fatalf("compile test cluster: %v", err)
	}
	return rs
}

// CNP is an Admin tier ClusterNetworkPolicy over testcluster's pods: x/guard
// (priority 5) lets y into x on TCP 8080 ("y-web", Accept), passes the rest
// of y's traffic into x to the NetworkPolicy tier ("y-rest", Pass), and
// denies x/b's egress to 203.0.113.0/24 ("no-net", Deny). CompileCNP adds it.
const CNP = `
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
  - {name: y-web, action: Accept, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}], protocols: [{tcp: {destinationPort: {number: 8080}}}]}
  - {name: y-rest, action: Pass, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}
  egress:
  - {name: no-net, action: Deny, to: [{networks: [203.0.113.0/24]}]}
`

// CompileCNP compiles YAML plus ClusterNetworkPolicy documents (each one
// object, such as CNP), decoded into the model's type here so that tests
// need not depend on the loader, and fails the test on any error.
func CompileCNP(t testing.TB, cnps ...string) *filter.Ruleset {
	t.Helper()
	c, err := cluster.Decode("test.yaml", []byte(YAML))
	if err != nil {
		t.Fatalf("decode test cluster: %v", err)
	}
	for _, doc := range cnps {
		p := &cnpv1beta1.ClusterNetworkPolicy{}
		if err := yaml.UnmarshalStrict([]byte(doc), p); err != nil {
			t.Fatalf("decode ClusterNetworkPolicy: %v", err)
		}
		c.ClusterPolicies = append(c.ClusterPolicies, p)
	}
	rs, err := filter.Compile(c)
	if err != nil {
		t.Fatalf("compile test cluster: %v", err)
	}
	if len(rs.Warnings) > 0 {
		t.Fatalf("compile test cluster: %q", rs.Warnings)
	}
	return rs
}

// Flow is the flow src:sport -> dst:dport over proto; it panics on an
// unparsable address, which in a test is a typo in the test itself.
func Flow(src, dst string, sport, dport uint16, proto uint8) filter.Flow {
	return filter.Flow{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SrcPort: sport, DstPort: dport, Proto: proto}
}
