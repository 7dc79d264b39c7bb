package e2e

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// plan is the shape of the namespaces a scenario needs: its nodes with
// their addresses, its (non-hostNetwork) pods with theirs, and the external
// addresses its probes use. Scenarios whose plans have the same fingerprint
// share one built topology.
type plan struct {
	Nodes     []nodePlan // sorted by name
	Pods      []podPlan  // sorted by node, then addresses
	Externals []netip.Addr

	owner map[netip.Addr]place // pod and node addresses
	// assigned places the pods without spec.nodeName ("ns/name" -> node):
	// the agents' snapshot names the node so that its agent polices them.
	assigned map[string]string
}

type nodePlan struct {
	Name  string
	Addrs []netip.Addr // InternalIPs, hostIPs and hostNetwork pod IPs, sorted
}

type podPlan struct {
	Node  string
	Addrs []netip.Addr // sorted
}

type placeKind uint8

const (
	placeNode placeKind = iota
	placePod
	placeExt
)

// place is where an endpoint lives: a node namespace, a pod namespace, or
// the external namespace. index is into plan.Nodes or plan.Pods.
type place struct {
	kind  placeKind
	index int
}

func hostIPs(p *corev1.Pod) ([]netip.Addr, error) {
	var raw []string
	for _, ip := range p.Status.HostIPs {
		raw = append(raw, ip.IP)
	}
	if p.Status.HostIP != "" {
		raw = append(raw, p.Status.HostIP)
	}
	var out []netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s: bad hostIP %q: %w", p.Namespace, p.Name, s, err)
		}
		out = appendUnique(out, a.Unmap())
	}
	return out, nil
}

func appendUnique(list []netip.Addr, a netip.Addr) []netip.Addr {
	for _, b := range list {
		if a == b {
			return list
		}
	}
	return append(list, a)
}

func sortAddrs(a []netip.Addr) {
	sort.Slice(a, func(i, j int) bool { return a[i].Less(a[j]) })
}

// planCluster lays out the namespaces for c. It fails when the cluster
// cannot be wired as a network: two objects claiming one address, a pod on
// no known node, a node without any address to route to.
func planCluster(c *cluster.Cluster) (*plan, error) {
	nodeAddrs := map[string][]netip.Addr{}
	for _, n := range c.Nodes {
		for _, a := range cluster.NodeAddrs(n) {
			nodeAddrs[n.Name] = appendUnique(nodeAddrs[n.Name], a)
		}
	}
	addrNode := func() map[netip.Addr]string {
		m := map[netip.Addr]string{}
		for name, as := range nodeAddrs {
			for _, a := range as {
				m[a] = name
			}
		}
		return m
	}
	type podAt struct {
		pod   *corev1.Pod
		node  string
		addrs []netip.Addr
	}
	var pods []podAt
	assigned := map[string]string{}
	for _, p := range c.Pods {
		if !cluster.PodActive(p) {
			continue
		}
		addrs := cluster.PodAddrs(p)
		hips, err := hostIPs(p)
		if err != nil {
			return nil, err
		}
		node := p.Spec.NodeName
		if node == "" {
			byAddr := addrNode()
			for _, h := range hips {
				if n, ok := byAddr[h]; ok {
					node = n
					break
				}
			}
		}
		switch {
		case node == "" && p.Spec.HostNetwork:
			return nil, fmt.Errorf("hostNetwork pod %s/%s: no spec.nodeName and no hostIP of a known node: cannot tell which node it is", p.Namespace, p.Name)
		case node == "":
			// Some node must run it and police it: one that holds every
			// such pod. No probe can name that node, so it changes no
			// verdict.
			node = unscheduledName(c)
			hips = nil
		}
		if node != p.Spec.NodeName {
			assigned[p.Namespace+"/"+p.Name] = node
		}
		if _, known := nodeAddrs[node]; !known {
			nodeAddrs[node] = nil // a node no Node object describes
		}
		for _, h := range hips {
			nodeAddrs[node] = appendUnique(nodeAddrs[node], h)
		}
		if p.Spec.HostNetwork {
			for _, a := range addrs {
				nodeAddrs[node] = appendUnique(nodeAddrs[node], a)
			}
			continue
		}
		pods = append(pods, podAt{pod: p, node: node, addrs: addrs})
	}

	pl := &plan{owner: map[netip.Addr]place{}, assigned: assigned}
	for name, as := range nodeAddrs {
		as = append([]netip.Addr(nil), as...)
		sortAddrs(as)
		pl.Nodes = append(pl.Nodes, nodePlan{Name: name, Addrs: as})
	}
	sort.Slice(pl.Nodes, func(i, j int) bool { return pl.Nodes[i].Name < pl.Nodes[j].Name })
	ownerName := map[netip.Addr]string{}
	for i, n := range pl.Nodes {
		for _, a := range n.Addrs {
			if why := unroutable(a); why != "" {
				return nil, fmt.Errorf("node %s: address %s cannot be wired: %s", n.Name, a, why)
			}
			if other, dup := ownerName[a]; dup {
				return nil, fmt.Errorf("address %s belongs to both node %s and %s", a, other, n.Name)
			}
			ownerName[a] = "node " + n.Name
			pl.owner[a] = place{kind: placeNode, index: i}
		}
	}
	for _, p := range pods {
		as := append([]netip.Addr(nil), p.addrs...)
		sortAddrs(as)
		pl.Pods = append(pl.Pods, podPlan{Node: p.node, Addrs: as})
	}
	sort.Slice(pl.Pods, func(i, j int) bool {
		a, b := pl.Pods[i], pl.Pods[j]
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return addrsKey(a.Addrs) < addrsKey(b.Addrs)
	})
	for i, p := range pl.Pods {
		for _, a := range p.Addrs {
			if why := unroutable(a); why != "" {
				return nil, fmt.Errorf("pod address %s on node %s cannot be wired: %s", a, p.Node, why)
			}
			if other, dup := ownerName[a]; dup {
				return nil, fmt.Errorf("address %s belongs to both %s and a pod on node %s", a, other, p.Node)
			}
			ownerName[a] = "a pod on node " + p.Node
			pl.owner[a] = place{kind: placePod, index: i}
		}
	}
	return pl, nil
}

// unroutable says why an address cannot be given to a namespace and
// reached through a router like any other ("" when it can): the kernel
// keeps loopback addresses to the host itself, refuses to forward
// unspecified, multicast and broadcast destinations, and link-local ones
// are the topology's own gateways and next hops.
func unroutable(a netip.Addr) string {
	switch {
	case a.IsLoopback():
		return "a loopback address never leaves the namespace that sends it"
	case a.IsUnspecified():
		return "the unspecified address is not a destination"
	case a.IsMulticast():
		return "a multicast address is not one endpoint"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address is not one endpoint"
	case a.IsLinkLocalUnicast():
		return "link-local addresses are not routed (the harness uses them for gateways)"
	}
	return ""
}

func addrsKey(as []netip.Addr) string {
	var b strings.Builder
	for i, a := range as {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(a.String())
	}
	return b.String()
}

// fingerprint identifies the namespaces and links a plan builds; externals
// are left out because a group's external namespace holds the union of its
// scenarios' external addresses.
func (pl *plan) fingerprint() string {
	var b strings.Builder
	for _, n := range pl.Nodes {
		fmt.Fprintf(&b, "N %s %s\n", n.Name, addrsKey(n.Addrs))
	}
	for _, p := range pl.Pods {
		fmt.Fprintf(&b, "P %s %s\n", p.Node, addrsKey(p.Addrs))
	}
	return b.String()
}

// unscheduledBase names the node that runs pods which name none.
const unscheduledBase = "nfqp-unscheduled"

// unscheduledName returns unscheduledBase, suffixed if a pod or Node of c
// already uses that name.
func unscheduledName(c *cluster.Cluster) string {
	used := map[string]bool{}
	for _, n := range c.Nodes {
		used[n.Name] = true
	}
	for _, p := range c.Pods {
		used[p.Spec.NodeName] = true
	}
	name := unscheduledBase
	for i := 2; used[name]; i++ {
		name = fmt.Sprintf("%s-%d", unscheduledBase, i)
	}
	return name
}

func (pl *plan) nodeIndex(name string) int {
	for i, n := range pl.Nodes {
		if n.Name == name {
			return i
		}
	}
	return -1
}

// endpoint is a resolved probe end: where it lives and the address it uses.
type endpoint struct {
	place place
	addr  netip.Addr
}

// resolver maps a scenario's probe endpoints onto a plan, with the same
// endpoint rules (cluster.Index.Resolve) as the offline verdict path.
type resolver struct {
	ix *cluster.Index
	pl *plan
}

func newResolver(c *cluster.Cluster, pl *plan) resolver {
	return resolver{ix: cluster.NewIndex(c), pl: pl}
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

func pickFamily(as []netip.Addr, family int) (netip.Addr, bool) {
	for _, a := range as {
		if familyOf(a) == family {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (r resolver) resolve(s string, family int) (endpoint, error) {
	ep, err := r.ix.Resolve(s, family)
	if err != nil {
		return endpoint{}, err
	}
	if pl, ok := r.pl.owner[ep.Addr]; ok {
		return endpoint{place: pl, addr: ep.Addr}, nil
	}
	if ep.Kind != cluster.EndpointExternal {
		return endpoint{}, fmt.Errorf("endpoint %s: %s address %s is on no node of the topology", s, ep.Kind, ep.Addr)
	}
	return endpoint{place: place{kind: placeExt}, addr: ep.Addr}, nil
}
