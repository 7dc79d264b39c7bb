package nstest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// Routed is the smallest node with pods: pods A and B, each in its own
// namespace with one veth to the Node namespace, which routes between them
// (IPv4 and IPv6). Node plays the Kubernetes node: rules and agent go there.
type Routed struct {
	Node, A, B     *Namespace
	A4, B4, A6, B6 netip.Addr
	// Gateways: the node's address on each pod's link.
	GwA4, GwB4, GwA6, GwB6 netip.Addr
}

// NewRouted builds the topology; everything goes when t ends.
func NewRouted(t testing.TB) *Routed {
	t.Helper()
	r := &Routed{
		Node: New(t, "node"), A: New(t, "a"), B: New(t, "b"),
		A4: netip.MustParseAddr("10.99.1.2"), B4: netip.MustParseAddr("10.99.2.2"),
		A6: netip.MustParseAddr("fd99:1::2"), B6: netip.MustParseAddr("fd99:2::2"),
		GwA4: netip.MustParseAddr("10.99.1.1"), GwB4: netip.MustParseAddr("10.99.2.1"),
		GwA6: netip.MustParseAddr("fd99:1::1"), GwB6: netip.MustParseAddr("fd99:2::1"),
	}
	r.Node.Run("sysctl", "-qw", "net.ipv4.ip_forward=1")
	r.Node.Run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	for i, p := range []struct {
		ns             *Namespace
		v4, v6, g4, g6 netip.Addr
	}{{r.A, r.A4, r.A6, r.GwA4, r.GwA6}, {r.B, r.B4, r.B6, r.GwB4, r.GwB6}} {
		host := fmt.Sprintf("veth%d", i)
		r.Node.Run("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", p.ns.Name)
		r.Node.Run("ip", "addr", "add", p.g4.String()+"/24", "dev", host)
		r.Node.Run("ip", "addr", "add", p.g6.String()+"/64", "dev", host, "nodad")
		r.Node.Run("ip", "link", "set", host, "up")
		p.ns.Run("ip", "addr", "add", p.v4.String()+"/24", "dev", "eth0")
		p.ns.Run("ip", "addr", "add", p.v6.String()+"/64", "dev", "eth0", "nodad")
		p.ns.Run("ip", "link", "set", "eth0", "up")
		p.ns.Run("ip", "route", "add", "default", "via", p.g4.String())
		p.ns.Run("ip", "-6", "route", "add", "default", "via", p.g6.String())
		// Static neighbours, both ways. The kernel's neighbour tables are
		// shared by all namespaces and capped (gc_thresh3, 1024 by
		// default) as a whole: other tests with many namespaces can fill
		// them, and then every new ARP/ND entry fails here too and the
		// test sees IPv4 or IPv6 die for no reason of its own. Permanent
		// entries are exempt from that cap.
		hostMAC, podMAC := mac(t, r.Node, host), mac(t, p.ns, "eth0")
		for _, g := range []netip.Addr{p.g4, p.g6} {
			p.ns.Run("ip", "neigh", "replace", g.String(), "lladdr", hostMAC, "dev", "eth0", "nud", "permanent")
		}
		for _, a := range []netip.Addr{p.v4, p.v6} {
			r.Node.Run("ip", "neigh", "replace", a.String(), "lladdr", podMAC, "dev", host, "nud", "permanent")
		}
	}
	return r
}

// mac returns the hardware address of dev in ns.
func mac(t testing.TB, ns *Namespace, dev string) string {
	t.Helper()
	out := ns.Run("ip", "-j", "link", "show", "dev", dev)
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 || links[0].Address == "" {
		t.Fatalf("hardware address of %s in %s: %v: %s", dev, ns.Name, err, out)
	}
	return links[0].Address
}

// ServeEcho runs a TCP echo server on addr:port inside ns until t ends.
func (ns *Namespace) ServeEcho(t testing.TB, addr netip.Addr, port uint16) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

// Dial opens a TCP connection from inside ns.
func (ns *Namespace) Dial(addr netip.Addr, port uint16, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, port).String(), timeout)
		return err
	})
	return c, err
}

// Echo sends msg over c and expects it back within a second.
func Echo(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}
