package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

// Addresses the topology adds that are not the scenario's own. Pods reach
// their node through a link-local gateway on the node's bridge, and nodes
// reach each other's IPv6 pods through link-local next hops on the
// underlay, so no scenario address is ever borrowed for plumbing.
const (
	gateway4 = "169.254.1.1"
	gateway6 = "fe80::1"
	extLL    = "fe80::ff:1"
)

// nodeLL is node i's link-local address on the underlay.
func nodeLL(i int) string { return fmt.Sprintf("fe80::100:%x", i+1) }

// Every interface gets a fixed, locally administered MAC address so that
// every neighbour entry can be written as a permanent one. The kernel's
// ARP and NDP tables are shared by all namespaces and hold 1024 learnt
// entries (gc_thresh3, settable only in the root namespace): a topology of
// a thousand pods would overflow them and drop packets, while permanent
// entries are exempt from that limit and are never resolved at all.
const (
	macBridge   = iota + 1 // node i's br0
	macUnderlay            // node i's ul0
	macPod                 // pod j's eth0
	macPodPort             // the node side of pod j's veth
	macExt                 // the external namespace's ul0
)

func mac(kind, i int) string {
	return fmt.Sprintf("02:6e:%02x:%02x:%02x:%02x", kind, (i>>16)&0xff, (i>>8)&0xff, i&0xff)
}

// topology is a built set of namespaces for one plan.
type topology struct {
	pl        *plan
	externals []netip.Addr
	ul, ext   *NS
	nodes     []*NS // aligned with pl.Nodes
	pods      []*NS // aligned with pl.Pods
}

// nsOf returns the namespace an endpoint lives in.
func (t *topology) nsOf(p place) *NS {
	switch p.kind {
	case placeNode:
		return t.nodes[p.index]
	case placePod:
		return t.pods[p.index]
	}
	return t.ext
}

// all lists every namespace: pods, nodes, then the external namespace and
// the underlay.
func (t *topology) all() []*NS {
	var out []*NS
	for _, n := range t.pods {
		if n != nil {
			out = append(out, n)
		}
	}
	for _, n := range t.nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	for _, n := range []*NS{t.ext, t.ul} {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// close deletes every namespace of the topology.
func (t *topology) close() error {
	all := t.all()
	var (
		mu   sync.Mutex
		errs []error
	)
	// Not forEach: a failure must not stop the other deletions.
	_ = forEach(len(all), func(i int) error {
		if err := all[i].del(); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		return nil
	})
	return errors.Join(errs...)
}

func prefixFor(a netip.Addr) string {
	if a.Is4() {
		return a.String() + "/32"
	}
	return a.String() + "/128"
}

// Sysctls every namespace gets before any link exists, so that interfaces
// created later inherit them through "default": no DAD (IPv6 addresses are
// usable at once), no reverse-path filter (pods have /32 addresses and
// asymmetric-looking host routes), and no redirects, which would teach a
// pod to bypass its node for a neighbour on the same bridge and so bypass
// the policy.
var baseSysctls = []string{
	"net.ipv6.conf.all.accept_dad=0",
	"net.ipv6.conf.default.accept_dad=0",
	"net.ipv6.conf.all.accept_redirects=0",
	"net.ipv6.conf.default.accept_redirects=0",
	"net.ipv4.conf.all.accept_redirects=0",
	"net.ipv4.conf.default.accept_redirects=0",
	"net.ipv4.conf.all.send_redirects=0",
	"net.ipv4.conf.default.send_redirects=0",
	"net.ipv4.conf.all.rp_filter=0",
	"net.ipv4.conf.default.rp_filter=0",
	// Nor router solicitations: a node answering one learns a neighbour
	// entry for the pod's link-local address (see mac).
	"net.ipv6.conf.all.router_solicitations=0",
	"net.ipv6.conf.default.router_solicitations=0",
	// A rejected probe is told so by an ICMP error; hundreds of probes
	// rejected within a second would otherwise exceed the ICMP rate limits
	// and some would look dropped.
	"net.ipv4.icmp_ratelimit=0",
	"net.ipv4.icmp_msgs_per_sec=1000000",
	"net.ipv4.icmp_msgs_burst=1000000",
	"net.ipv6.icmp.ratelimit=0",
}

// Routers (the node namespaces) forward; nothing else does.
var routerSysctls = []string{
	"net.ipv4.ip_forward=1",
	"net.ipv6.conf.all.forwarding=1",
}

// buildTopology creates and wires the namespaces of pl, named prefix+...,
// with externals on the external namespace. On error everything created so
// far is deleted.
func buildTopology(ctx context.Context, prefix string, pl *plan, externals []netip.Addr) (_ *topology, err error) {
	t := &topology{pl: pl, externals: externals, nodes: make([]*NS, len(pl.Nodes)), pods: make([]*NS, len(pl.Pods))}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.close())
		}
	}()
	if t.ul, err = addNS(ctx, prefix+"ul"); err != nil {
		return nil, err
	}
	if len(externals) > 0 {
		if t.ext, err = addNS(ctx, prefix+"ext"); err != nil {
			return nil, err
		}
	}
	for i := range pl.Nodes {
		if t.nodes[i], err = addNS(ctx, fmt.Sprintf("%sn%d", prefix, i)); err != nil {
			return nil, err
		}
	}
	err = forEach(len(pl.Pods), func(i int) (err error) {
		t.pods[i], err = addNS(ctx, fmt.Sprintf("%sp%d", prefix, i))
		return err
	})
	if err != nil {
		return nil, err
	}
	all := t.all()
	err = forEach(len(all), func(i int) error {
		kv := baseSysctls
		if isIn(all[i], t.nodes) {
			kv = append(append([]string(nil), baseSysctls...), routerSysctls...)
		}
		return all[i].sysctl(kv...)
	})
	if err != nil {
		return nil, err
	}

	// The underlay: a bridge with one port per node and one for the
	// external namespace, each the peer of that namespace's "ul0".
	ul := []string{"link set lo up", "link add br0 type bridge", "link set br0 up"}
	for i, n := range t.nodes {
		port := fmt.Sprintf("n%d", i)
		ul = append(ul,
			fmt.Sprintf("link add %s type veth peer name ul0 address %s netns %s", port, mac(macUnderlay, i), n.Name),
			fmt.Sprintf("link set %s master br0", port),
			fmt.Sprintf("link set %s up", port))
	}
	if t.ext != nil {
		ul = append(ul,
			fmt.Sprintf("link add x0 type veth peer name ul0 address %s netns %s", mac(macExt, 0), t.ext.Name),
			"link set x0 master br0", "link set x0 up")
	}
	if err := t.ul.ipBatch(ctx, ul); err != nil {
		return nil, err
	}

	for i := range t.nodes {
		if err := t.nodes[i].ipBatch(ctx, t.nodeCommands(i)); err != nil {
			return nil, err
		}
	}
	err = forEach(len(pl.Pods), func(j int) error {
		p := pl.Pods[j]
		br := mac(macBridge, pl.nodeIndex(p.Node))
		var cmds []string
		cmds = append(cmds, "link set lo up", "link set eth0 up")
		for _, a := range p.Addrs {
			if a.Is4() {
				cmds = append(cmds, "addr add "+prefixFor(a)+" dev eth0")
			} else {
				cmds = append(cmds, "addr add "+prefixFor(a)+" dev eth0 nodad")
			}
		}
		if _, ok := pickFamily(p.Addrs, 4); ok {
			cmds = append(cmds,
				"route add "+gateway4+"/32 dev eth0 scope link",
				"route add default via "+gateway4+" dev eth0",
				"neigh replace "+gateway4+" lladdr "+br+" dev eth0 nud permanent")
		}
		if _, ok := pickFamily(p.Addrs, 6); ok {
			cmds = append(cmds,
				"route add ::/0 via "+gateway6+" dev eth0",
				"neigh replace "+gateway6+" lladdr "+br+" dev eth0 nud permanent")
		}
		return t.pods[j].ipBatch(ctx, cmds)
	})
	if err != nil {
		return nil, err
	}
	if t.ext != nil {
		cmds := []string{"link set lo up", "link set ul0 up", "addr add " + extLL + "/64 dev ul0 nodad"}
		for _, a := range externals {
			if a.Is4() {
				cmds = append(cmds, "addr add "+prefixFor(a)+" dev ul0")
			} else {
				cmds = append(cmds, "addr add "+prefixFor(a)+" dev ul0 nodad")
			}
		}
		cmds = append(cmds, t.remoteRoutes(-1)...)
		cmds = append(cmds, t.underlayNeighbours(-1)...)
		if err := t.ext.ipBatch(ctx, cmds); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// buildWorkers bounds the iproute2 processes a build runs at once: pods
// are independent of each other, and a thousand of them one at a time
// take most of a minute.
const buildWorkers = 4

// forEach calls fn(0..n-1) on buildWorkers goroutines and returns the
// errors; it stops handing out work after the first error.
func forEach(n int, fn func(i int) error) error {
	var (
		mu   sync.Mutex
		errs []error
		next int
		wg   sync.WaitGroup
	)
	for range min(buildWorkers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := i >= n || len(errs) > 0
				mu.Unlock()
				if stop {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func isIn(n *NS, list []*NS) bool {
	for _, m := range list {
		if m == n {
			return true
		}
	}
	return false
}

// nodeCommands wires node i: its addresses on the underlay, a bridge with a
// veth per local pod, host routes to its own pods, and routes to everything
// reachable over the underlay.
func (t *topology) nodeCommands(i int) []string {
	node := t.pl.Nodes[i]
	cmds := []string{"link set lo up", "link set ul0 up", "addr add " + nodeLL(i) + "/64 dev ul0 nodad"}
	for _, a := range node.Addrs {
		if a.Is4() {
			cmds = append(cmds, "addr add "+prefixFor(a)+" dev ul0")
		} else {
			cmds = append(cmds, "addr add "+prefixFor(a)+" dev ul0 nodad")
		}
	}
	cmds = append(cmds, "link add br0 address "+mac(macBridge, i)+" type bridge", "link set br0 up",
		"addr add "+gateway4+"/32 dev br0", "addr add "+gateway6+"/64 dev br0 nodad")
	src4 := ""
	if a, ok := pickFamily(node.Addrs, 4); ok {
		// Without it the node would answer its local pods from the
		// gateway address rather than from its InternalIP.
		src4 = " src " + a.String()
	}
	for j, p := range t.pl.Pods {
		if p.Node != node.Name {
			continue
		}
		port := fmt.Sprintf("v%d", j)
		cmds = append(cmds,
			fmt.Sprintf("link add %s address %s type veth peer name eth0 address %s netns %s", port, mac(macPodPort, j), mac(macPod, j), t.pods[j].Name),
			fmt.Sprintf("link set %s master br0", port),
			fmt.Sprintf("link set %s up", port))
		for _, a := range p.Addrs {
			if a.Is4() {
				cmds = append(cmds, "route add "+prefixFor(a)+" dev br0"+src4)
			} else {
				cmds = append(cmds, "route add "+prefixFor(a)+" dev br0")
			}
			cmds = append(cmds, "neigh replace "+a.String()+" lladdr "+mac(macPod, j)+" dev br0 nud permanent")
		}
	}
	cmds = append(cmds, t.remoteRoutes(i)...)
	return append(cmds, t.underlayNeighbours(i)...)
}

// remoteRoutes are the underlay routes of node self (-1: the external
// namespace): every other node's addresses and pods via that node's
// link-local address, and (for nodes) every external address via the
// external namespace's. Next hops are always link-local IPv6, IPv4 routes
// included (RTA_VIA), so that a node needs no IPv4 address of its own and
// no scenario address is ever used as a gateway it was not meant to be.
func (t *topology) remoteRoutes(self int) []string {
	var cmds []string
	via := func(dst netip.Addr, ll string) string {
		if dst.Is4() {
			return "route add " + prefixFor(dst) + " via inet6 " + ll + " dev ul0"
		}
		return "route add " + prefixFor(dst) + " via " + ll + " dev ul0"
	}
	for k, n := range t.pl.Nodes {
		if k == self {
			continue
		}
		for _, a := range n.Addrs {
			cmds = append(cmds, via(a, nodeLL(k)))
		}
		for _, p := range t.pl.Pods {
			if p.Node != n.Name {
				continue
			}
			for _, a := range p.Addrs {
				cmds = append(cmds, via(a, nodeLL(k)))
			}
		}
	}
	if self >= 0 {
		for _, a := range t.externals {
			cmds = append(cmds, via(a, extLL))
		}
	}
	return cmds
}

// underlayNeighbours are the permanent neighbour entries of node self (-1:
// the external namespace) for every other underlay next hop.
func (t *topology) underlayNeighbours(self int) []string {
	var cmds []string
	for k := range t.pl.Nodes {
		if k != self {
			cmds = append(cmds, "neigh replace "+nodeLL(k)+" lladdr "+mac(macUnderlay, k)+" dev ul0 nud permanent")
		}
	}
	if self >= 0 && t.ext != nil {
		cmds = append(cmds, "neigh replace "+extLL+" lladdr "+mac(macExt, 0)+" dev ul0 nud permanent")
	}
	return cmds
}
