package cluster

import (
	"net/netip"
	"strings"
	"testing"
)

const addrCluster = `apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: Hostname, address: node-1}, {type: InternalIP, address: 192.168.56.1}, {type: InternalIP, address: "fd00:56::1"}, {type: ExternalIP, address: 203.0.113.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
status: {addresses: [{type: InternalIP, address: 192.168.56.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v4only, namespace: x}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.2.11}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.244.2.12}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: x}
spec: {containers: [{name: c}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: hn, namespace: x}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, hostIP: 192.168.56.1, podIP: 192.168.56.1}
---
apiVersion: v1
kind: Pod
metadata: {name: hn-nohostip, namespace: x}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, podIP: 192.168.56.1}
---
apiVersion: v1
kind: Pod
metadata: {name: hn-unknown-node, namespace: x}
spec: {nodeName: node-9, hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, hostIP: 192.168.56.9, podIP: 192.168.56.9}
`

func TestResolve(t *testing.T) {
	c, err := Decode("c.yaml", []byte(addrCluster))
	if err != nil {
		t.Fatal(err)
	}
	ix := NewIndex(c)
	tests := []struct {
		endpoint string
		family   int
		want     string // Endpoint.String(), or the error's text after "endpoint ...: "
		kind     EndpointKind
	}{
		{"x/a", 4, "x/a (10.244.1.10)", EndpointPod},
		{"x/a", 6, "x/a (fd00:10:244:1::10)", EndpointPod},
		{"x/v4only", 6, "pod has no IPv6 address", 0},
		{"x/done", 4, "pod has terminated (phase Succeeded)", 0},
		{"x/pending", 4, "pod has no IPv4 address", 0},
		{"x/zz", 4, "unknown pod x/zz", 0},
		{"y/a", 4, "unknown pod y/a", 0},
		{"node/node-1", 4, "node/node-1 (192.168.56.1)", EndpointNode},
		{"node/node-1", 6, "node/node-1 (fd00:56::1)", EndpointNode},
		{"node/node-2", 6, "node node-2 has no IPv6 InternalIP", 0},
		{"node/node-3", 4, `unknown node "node-3"`, 0},
		{"x/hn", 4, "x/hn (hostNetwork on node-1, 192.168.56.1)", EndpointNode},
		{"x/hn", 6, "x/hn (hostNetwork on node-1, fd00:56::1)", EndpointNode}, // from the Node object
		{"x/hn-nohostip", 4, "x/hn-nohostip (hostNetwork on node-1, 192.168.56.1)", EndpointNode},
		{"x/hn-unknown-node", 4, "x/hn-unknown-node (hostNetwork on node-9, 192.168.56.9)", EndpointNode},
		{"x/hn-unknown-node", 6, "hostNetwork pod has no IPv6 node address (status.hostIPs or its Node's InternalIP)", 0},
		{"10.244.1.10", 4, "x/a (10.244.1.10)", EndpointPod},
		{"fd00:10:244:1::10", 6, "x/a (fd00:10:244:1::10)", EndpointPod},
		{"10.244.2.12", 4, "10.244.2.12", EndpointExternal}, // a terminated pod's address is no longer its
		{"192.168.56.1", 4, "node/node-1 (192.168.56.1)", EndpointNode},
		{"192.168.56.9", 4, "node/node-9 (192.168.56.9)", EndpointNode}, // hostNetwork pod of a node the snapshot lacks
		{"203.0.113.1", 4, "203.0.113.1", EndpointExternal},             // ExternalIP is not node traffic
		{"8.8.8.8", 4, "8.8.8.8", EndpointExternal},
		{"8.8.8.8", 6, "not an IPv6 address", 0},
		{"2001:db8::1", 4, "not an IPv4 address", 0},
		{"::ffff:10.244.1.10", 6, "IPv6 zones and IPv4-mapped addresses are not endpoints", 0},
		{"fe80::1%eth0", 6, "IPv6 zones and IPv4-mapped addresses are not endpoints", 0},
		{"10.244.1.10/32", 4, "a CIDR is not an endpoint; give one address", 0},
		{"nonsense", 4, "not ns/pod, node/NAME or an IP address", 0},
		{"x/a", 5, "family must be 4 or 6, not 5", 0},
	}
	for _, tt := range tests {
		t.Run(tt.endpoint, func(t *testing.T) {
			ep, err := ix.Resolve(tt.endpoint, tt.family)
			if err != nil {
				prefix := "endpoint \"" + tt.endpoint + "\": "
				if !strings.HasPrefix(err.Error(), prefix) || strings.TrimPrefix(err.Error(), prefix) != tt.want {
					t.Errorf("Resolve(%q, %d) error %q, want %q", tt.endpoint, tt.family, err, tt.want)
				}
				return
			}
			if ep.String() != tt.want || ep.Kind != tt.kind {
				t.Errorf("Resolve(%q, %d) = %v (%v), want %q (%v)", tt.endpoint, tt.family, ep, ep.Kind, tt.want, tt.kind)
			}
			if ep.HostNetwork && (ep.Pod == nil || ep.Kind != EndpointNode) {
				t.Errorf("hostNetwork endpoint %+v", ep)
			}
		})
	}
}

func TestPodHelpers(t *testing.T) {
	c, err := Decode("c.yaml", []byte(addrCluster))
	if err != nil {
		t.Fatal(err)
	}
	ix := NewIndex(c)
	active := map[string]bool{}
	for _, p := range c.Pods {
		active[p.Name] = PodActive(p)
	}
	want := map[string]bool{"a": true, "v4only": true, "done": false, "pending": false, "hn": true, "hn-nohostip": true, "hn-unknown-node": true}
	for k, v := range want {
		if active[k] != v {
			t.Errorf("PodActive(%s) = %v", k, active[k])
		}
	}
	a, _ := ix.Pod("x", "a")
	if got := PodAddrs(a); len(got) != 2 || got[0].String() != "10.244.1.10" || got[1].String() != "fd00:10:244:1::10" {
		t.Errorf("PodAddrs = %v", got)
	}
	v4, _ := ix.Pod("x", "v4only")
	if got := PodAddrs(v4); len(got) != 1 || got[0].String() != "10.244.2.11" {
		t.Errorf("PodAddrs from podIP = %v", got)
	}
	n1, _ := ix.Node("node-1")
	if a, ok := NodeAddr(n1, 4); !ok || a.String() != "192.168.56.1" {
		t.Errorf("NodeAddr 4 = %v %v", a, ok)
	}
	n2, _ := ix.Node("node-2")
	if _, ok := NodeAddr(n2, 6); ok {
		t.Error("node-2 has no IPv6 InternalIP")
	}
	if p, ok := ix.PodByAddr(mustAddr(t, "192.168.56.1")); ok {
		t.Errorf("a hostNetwork pod's address must not index as a pod: %s", p.Name)
	}
	if _, ok := ix.Namespace("x"); !ok {
		t.Error("implicit namespace x not indexed")
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
