package cluster

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// PodActive reports whether a pod takes part in traffic: it has an address
// and has not terminated (phase neither Succeeded nor Failed).
func PodActive(p *corev1.Pod) bool {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return false
	}
	return len(PodAddrs(p)) > 0
}

// PodAddrs returns a pod's addresses: status.podIPs, or status.podIP when
// podIPs is empty. Unparseable entries are skipped (validation reports
// them). For a hostNetwork pod these are its node's addresses.
func PodAddrs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	if len(p.Status.PodIPs) > 0 {
		out = make([]netip.Addr, 0, len(p.Status.PodIPs))
		for _, ip := range p.Status.PodIPs {
			if a, err := ParseIP(ip.IP); err == nil {
				out = append(out, a)
			}
		}
		return out
	}
	if a, err := ParseIP(p.Status.PodIP); err == nil {
		out = append(out, a)
	}
	return out
}

// PodAddr returns the pod's address of family (4 or 6).
func PodAddr(p *corev1.Pod, family int) (netip.Addr, bool) {
	for _, a := range PodAddrs(p) {
		if addrFamily(a) == family {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// NodeAddr returns a node's InternalIP of family (4 or 6).
func NodeAddr(n *corev1.Node, family int) (netip.Addr, bool) {
	for _, a := range NodeAddrs(n) {
		if addrFamily(a) == family {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// NodeAddrs returns every InternalIP of a node.
func NodeAddrs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, na := range n.Status.Addresses {
		if na.Type != corev1.NodeInternalIP {
			continue
		}
		if a, err := ParseIP(na.Address); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// HostAddr returns the address of family of the node a pod runs on, from
// status.hostIPs/hostIP or else from the Node object (node may be nil).
// It is the address of a hostNetwork pod's traffic.
func HostAddr(p *corev1.Pod, node *corev1.Node, family int) (netip.Addr, bool) {
	ips := make([]string, 0, 2)
	for _, h := range p.Status.HostIPs {
		ips = append(ips, h.IP)
	}
	if len(ips) == 0 && p.Status.HostIP != "" {
		ips = append(ips, p.Status.HostIP)
	}
	for _, s := range ips {
		if a, err := ParseIP(s); err == nil && addrFamily(a) == family {
			return a, true
		}
	}
	if node != nil {
		return NodeAddr(node, family)
	}
	return netip.Addr{}, false
}

func addrFamily(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// EndpointKind says what an endpoint of a flow is to the policy engine.
type EndpointKind int

const (
	// EndpointExternal is an address that is neither a pod's nor a node's.
	EndpointExternal EndpointKind = iota
	// EndpointPod is a (non-hostNetwork) pod, policed by NetworkPolicies.
	EndpointPod
	// EndpointNode is a node, or a hostNetwork pod (node traffic: never
	// selected by policies).
	EndpointNode
)

func (k EndpointKind) String() string {
	switch k {
	case EndpointPod:
		return "pod"
	case EndpointNode:
		return "node"
	}
	return "external"
}

// Endpoint is one side of a probe or CLI flow, resolved against a Cluster.
type Endpoint struct {
	Kind EndpointKind
	// Pod is set for pod endpoints and for hostNetwork pods (Kind Node).
	Pod *corev1.Pod
	// Node is set for node endpoints and, when the Node object is known,
	// for pods (the node they run on).
	Node *corev1.Node
	// NodeName is the node of a pod or node endpoint ("" when unknown).
	NodeName string
	// HostNetwork is true for a hostNetwork pod: Kind is EndpointNode.
	HostNetwork bool
	Addr        netip.Addr
}

func (e Endpoint) String() string {
	switch {
	case e.HostNetwork && e.Pod != nil:
		return fmt.Sprintf("%s/%s (hostNetwork on %s, %s)", e.Pod.Namespace, e.Pod.Name, e.NodeName, e.Addr)
	case e.Kind == EndpointPod:
		return fmt.Sprintf("%s/%s (%s)", e.Pod.Namespace, e.Pod.Name, e.Addr)
	case e.Kind == EndpointNode:
		return fmt.Sprintf("node/%s (%s)", e.NodeName, e.Addr)
	}
	return e.Addr.String()
}

// Index looks a Cluster's objects up by name and by address. It is built
// once per Cluster and read-only afterwards.
type Index struct {
	c          *Cluster
	namespaces map[string]*corev1.Namespace
	pods       map[string]*corev1.Pod // "ns/name"
	nodes      map[string]*corev1.Node
	podByAddr  map[netip.Addr]*corev1.Pod  // active non-hostNetwork pods
	nodeByAddr map[netip.Addr]*corev1.Node // InternalIPs
	// hostNetByAddr maps a hostNetwork pod's address to its node name, for
	// nodes whose Node object the snapshot lacks.
	hostNetByAddr map[netip.Addr]string
}

// NewIndex indexes c. When two active pods claim one address the first
// keeps it (the API server prevents this in a real cluster).
func NewIndex(c *Cluster) *Index {
	ix := &Index{
		c:             c,
		namespaces:    make(map[string]*corev1.Namespace, len(c.Namespaces)),
		pods:          make(map[string]*corev1.Pod, len(c.Pods)),
		nodes:         make(map[string]*corev1.Node, len(c.Nodes)),
		podByAddr:     make(map[netip.Addr]*corev1.Pod, len(c.Pods)*2),
		nodeByAddr:    make(map[netip.Addr]*corev1.Node, len(c.Nodes)*2),
		hostNetByAddr: make(map[netip.Addr]string),
	}
	for _, ns := range c.Namespaces {
		ix.namespaces[ns.Name] = ns
	}
	for _, n := range c.Nodes {
		ix.nodes[n.Name] = n
		for _, a := range NodeAddrs(n) {
			if _, dup := ix.nodeByAddr[a]; !dup {
				ix.nodeByAddr[a] = n
			}
		}
	}
	for _, p := range c.Pods {
		ix.pods[p.Namespace+"/"+p.Name] = p
		if !PodActive(p) {
			continue
		}
		for _, a := range PodAddrs(p) {
			if p.Spec.HostNetwork {
				if _, dup := ix.hostNetByAddr[a]; !dup && p.Spec.NodeName != "" {
					ix.hostNetByAddr[a] = p.Spec.NodeName
				}
				continue
			}
			if _, dup := ix.podByAddr[a]; !dup {
				ix.podByAddr[a] = p
			}
		}
	}
	return ix
}

// Cluster returns the indexed Cluster.
func (ix *Index) Cluster() *Cluster { return ix.c }

// Namespace returns the namespace called name.
func (ix *Index) Namespace(name string) (*corev1.Namespace, bool) {
	ns, ok := ix.namespaces[name]
	return ns, ok
}

// Pod returns pod ns/name.
func (ix *Index) Pod(ns, name string) (*corev1.Pod, bool) {
	p, ok := ix.pods[ns+"/"+name]
	return p, ok
}

// Node returns the node called name.
func (ix *Index) Node(name string) (*corev1.Node, bool) {
	n, ok := ix.nodes[name]
	return n, ok
}

// PodByAddr returns the active, non-hostNetwork pod that has address a.
func (ix *Index) PodByAddr(a netip.Addr) (*corev1.Pod, bool) {
	p, ok := ix.podByAddr[a]
	return p, ok
}

// NodeByAddr returns the node whose InternalIP is a.
func (ix *Index) NodeByAddr(a netip.Addr) (*corev1.Node, bool) {
	n, ok := ix.nodeByAddr[a]
	return n, ok
}

// Resolve reads an endpoint as probes and the CLI write it: "ns/pod",
// "node/NAME", or an IP literal of family (4 or 6). An IP that is an
// active pod's address is that pod, a node's InternalIP (or a hostNetwork
// pod's address) is that node, and any other address is external.
func (ix *Index) Resolve(endpoint string, family int) (Endpoint, error) {
	if family != 4 && family != 6 {
		return Endpoint{}, fmt.Errorf("endpoint %q: family must be 4 or 6, not %d", endpoint, family)
	}
	if name, ok := strings.CutPrefix(endpoint, "node/"); ok {
		n, found := ix.nodes[name]
		if !found {
			return Endpoint{}, fmt.Errorf("endpoint %q: unknown node %q", endpoint, name)
		}
		a, found := NodeAddr(n, family)
		if !found {
			return Endpoint{}, fmt.Errorf("endpoint %q: node %s has no IPv%d InternalIP", endpoint, name, family)
		}
		return Endpoint{Kind: EndpointNode, Node: n, NodeName: n.Name, Addr: a}, nil
	}
	if _, err := netip.ParsePrefix(endpoint); err == nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: a CIDR is not an endpoint; give one address", endpoint)
	}
	if ns, name, ok := strings.Cut(endpoint, "/"); ok {
		p, found := ix.pods[ns+"/"+name]
		if !found {
			return Endpoint{}, fmt.Errorf("endpoint %q: unknown pod %s/%s", endpoint, ns, name)
		}
		return ix.podEndpoint(endpoint, p, family)
	}
	a, err := netip.ParseAddr(endpoint)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: not ns/pod, node/NAME or an IP address", endpoint)
	}
	if a.Zone() != "" || a.Is4In6() {
		return Endpoint{}, fmt.Errorf("endpoint %q: IPv6 zones and IPv4-mapped addresses are not endpoints", endpoint)
	}
	if addrFamily(a) != family {
		return Endpoint{}, fmt.Errorf("endpoint %q: not an IPv%d address", endpoint, family)
	}
	if p, ok := ix.podByAddr[a]; ok {
		ep := Endpoint{Kind: EndpointPod, Pod: p, NodeName: p.Spec.NodeName, Addr: a}
		ep.Node = ix.nodes[p.Spec.NodeName]
		return ep, nil
	}
	if n, ok := ix.nodeByAddr[a]; ok {
		return Endpoint{Kind: EndpointNode, Node: n, NodeName: n.Name, Addr: a}, nil
	}
	if name, ok := ix.hostNetByAddr[a]; ok {
		return Endpoint{Kind: EndpointNode, Node: ix.nodes[name], NodeName: name, Addr: a}, nil
	}
	return Endpoint{Kind: EndpointExternal, Addr: a}, nil
}

func (ix *Index) podEndpoint(endpoint string, p *corev1.Pod, family int) (Endpoint, error) {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return Endpoint{}, fmt.Errorf("endpoint %q: pod has terminated (phase %s)", endpoint, p.Status.Phase)
	}
	node := ix.nodes[p.Spec.NodeName]
	if p.Spec.HostNetwork {
		a, ok := HostAddr(p, node, family)
		if !ok {
			return Endpoint{}, fmt.Errorf("endpoint %q: hostNetwork pod has no IPv%d node address (status.hostIPs or its Node's InternalIP)", endpoint, family)
		}
		return Endpoint{Kind: EndpointNode, Pod: p, Node: node, NodeName: p.Spec.NodeName, HostNetwork: true, Addr: a}, nil
	}
	a, ok := PodAddr(p, family)
	if !ok {
		return Endpoint{}, fmt.Errorf("endpoint %q: pod has no IPv%d address", endpoint, family)
	}
	return Endpoint{Kind: EndpointPod, Pod: p, Node: node, NodeName: p.Spec.NodeName, Addr: a}, nil
}
