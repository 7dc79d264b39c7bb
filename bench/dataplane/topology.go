package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// gateway is the node's address on both pod links: link-local, so that no
// address of the workload is borrowed for plumbing (the e2e topology does
// the same).
const gateway = "169.254.1.1"

// topology is the node namespace routing between one client pod and one
// server pod namespace.
type topology struct {
	node, client, server *netNS
	clientAddr           netip.Addr
	serverAddr           netip.Addr
}

// Sysctls of every namespace: no reverse-path filter (pods have /32
// addresses behind a link-local gateway), no redirects (a pod must never
// learn to bypass its node).
var baseSysctls = []string{
	"net.ipv4.conf.all.rp_filter=0",
	"net.ipv4.conf.default.rp_filter=0",
	"net.ipv4.conf.all.accept_redirects=0",
	"net.ipv4.conf.default.accept_redirects=0",
	"net.ipv4.conf.all.send_redirects=0",
	"net.ipv4.conf.default.send_redirects=0",
}

// Conntrack timeouts of the node namespace (they are per namespace): the
// connection-rate phases leave tens of thousands of reset connections
// behind, and the conntrack table is shared with the rest of the machine.
var nodeCTSysctls = []string{
	"net.netfilter.nf_conntrack_tcp_timeout_close=1",
	"net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
	"net.netfilter.nf_conntrack_tcp_timeout_close_wait=1",
	"net.netfilter.nf_conntrack_tcp_timeout_fin_wait=1",
	"net.netfilter.nf_conntrack_tcp_timeout_last_ack=1",
}

// buildTopology creates the three namespaces named prefix+{node,client,
// server}; the client pod also holds the addresses extraClients, the
// server pod extraServers (the cache-miss lane's many pairs). On error,
// what was created is deleted.
func buildTopology(ctx context.Context, prefix string, client, server netip.Addr, extraClients, extraServers []netip.Addr) (_ *topology, err error) {
	for _, a := range append(append([]netip.Addr{client, server}, extraClients...), extraServers...) {
		if !a.Is4() {
			return nil, fmt.Errorf("topology: IPv4 pod addresses only, got %s", a)
		}
	}
	t := &topology{clientAddr: client, serverAddr: server}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.close())
		}
	}()
	if t.node, err = addNS(ctx, prefix+"node"); err != nil {
		return nil, err
	}
	if t.client, err = addNS(ctx, prefix+"client"); err != nil {
		return nil, err
	}
	if t.server, err = addNS(ctx, prefix+"server"); err != nil {
		return nil, err
	}
	for _, n := range []*netNS{t.node, t.client, t.server} {
		kv := baseSysctls
		if n == t.node {
			kv = append(append([]string(nil), baseSysctls...), "net.ipv4.ip_forward=1")
		}
		if err := execIn(ctx, n, "sysctl", append([]string{"-q", "-w"}, kv...)...); err != nil {
			return nil, fmt.Errorf("sysctl in %s: %w", n.Name, err)
		}
	}
	node := []string{"link set lo up"}
	for _, p := range []struct {
		port  string
		ns    *netNS
		addr  netip.Addr
		extra []netip.Addr
	}{{"vc", t.client, client, extraClients}, {"vs", t.server, server, extraServers}} {
		node = append(node,
			fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.port, p.ns.Name),
			fmt.Sprintf("addr add %s/32 dev %s", gateway, p.port),
			fmt.Sprintf("link set %s up", p.port),
			fmt.Sprintf("route add %s/32 dev %s", p.addr, p.port))
		for _, a := range p.extra {
			node = append(node, fmt.Sprintf("route add %s/32 dev %s", a, p.port))
		}
	}
	if err := t.node.IPBatch(ctx, node); err != nil {
		return nil, err
	}
	for _, p := range []struct {
		ns    *netNS
		addr  netip.Addr
		extra []netip.Addr
	}{{t.client, client, extraClients}, {t.server, server, extraServers}} {
		cmds := []string{
			"link set lo up",
			"link set eth0 up",
			fmt.Sprintf("addr add %s/32 dev eth0", p.addr),
		}
		for _, a := range p.extra {
			cmds = append(cmds, fmt.Sprintf("addr add %s/32 dev eth0", a))
		}
		cmds = append(cmds,
			fmt.Sprintf("route add %s/32 dev eth0 scope link", gateway),
			// src: the pod's own address for what it sends unbound;
			// the load generators bind each socket explicitly.
			fmt.Sprintf("route add default via %s dev eth0 src %s", gateway, p.addr))
		if err := p.ns.IPBatch(ctx, cmds); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// setConntrackTimeouts shortens the node's conntrack timeouts. The
// sysctls exist only once the conntrack module is loaded, which the
// enforcing phases do anyway; missing ones are reported, not fatal.
func (t *topology) setConntrackTimeouts(ctx context.Context) error {
	return execIn(ctx, t.node, "sysctl", append([]string{"-q", "-w"}, nodeCTSysctls...)...)
}

// close deletes the namespaces, pods first.
func (t *topology) close() error {
	var errs []error
	for _, n := range []*netNS{t.client, t.server, t.node} {
		if n != nil {
			if err := n.Delete(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
