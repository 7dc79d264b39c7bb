package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Why an ipset rather than one rule per pod address: the chains stay a
// fixed handful of rules whatever the pod count, a lookup is one hash probe
// instead of a linear walk, and pod churn never rewrites iptables (which
// with the legacy backend replaces the whole table): the new set is filled
// under a temporary name and swapped in atomically.

// setType is a plain address set; ports and protocols are the engine's job.
// netSetType holds the local node's pod CIDRs: a pod the agent has not
// seen yet already has an address in them, so its flows are diverted (and
// denied by the engine as an unknown pod) instead of passing unpoliced.
const (
	setType    = "hash:ip"
	netSetType = "hash:net"
)

func setFamily(f Family) string {
	if f == IPv6 {
		return "inet6"
	}
	return "inet"
}

// RenderSetCreate returns ipset restore input that creates family f's
// sets (local pod addresses and local pod CIDRs) if they do not exist yet,
// leaving their contents alone (the chains reference the sets, so they
// have to exist before they are installed).
func RenderSetCreate(f Family) string {
	return fmt.Sprintf("create %s %s family %s -exist\n", SetName(f), setType, setFamily(f)) +
		fmt.Sprintf("create %s %s family %s -exist\n", NetSetName(f), netSetType, setFamily(f))
}

// RenderSetSync returns ipset restore input that makes family f's set hold
// exactly the addresses of addrs that belong to f (others are ignored;
// IPv4-mapped IPv6 addresses count as IPv4), sorted and deduplicated. The
// live set is replaced by an atomic swap, so a packet never sees a
// half-filled set.
func RenderSetSync(f Family, addrs []netip.Addr) string {
	var mine []netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || (f == IPv4) != a.Is4() {
			continue
		}
		mine = append(mine, a.WithZone(""))
	}
	slices.SortFunc(mine, netip.Addr.Compare)
	mine = slices.Compact(mine)

	entries := make([]string, len(mine))
	for i, a := range mine {
		entries[i] = a.String()
	}
	return renderSwap(SetName(f), setType, f, entries)
}

// RenderNetSetSync is RenderSetSync for family f's pod CIDR set: it ends
// up holding exactly the prefixes of nets that belong to f, masked, sorted
// and deduplicated. A /0 is left out: hash:net cannot hold it, and a pod
// CIDR spanning the whole family is a misconfiguration, not a reason to
// queue every packet of the node.
func RenderNetSetSync(f Family, nets []netip.Prefix) string {
	var mine []netip.Prefix
	for _, p := range nets {
		if !p.IsValid() {
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if (f == IPv4) != p.Addr().Is4() || p.Bits() == 0 {
			continue
		}
		mine = append(mine, netip.PrefixFrom(p.Addr().WithZone(""), p.Bits()).Masked())
	}
	slices.SortFunc(mine, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	mine = slices.Compact(mine)
	entries := make([]string, len(mine))
	for i, p := range mine {
		entries[i] = p.String()
	}
	return renderSwap(NetSetName(f), netSetType, f, entries)
}

// renderSwap fills a temporary copy of set live with entries and swaps it
// in, so a packet never sees a half-filled set.
func renderSwap(live, typ string, f Family, entries []string) string {
	next := live + "-NEXT"
	var b strings.Builder
	fmt.Fprintf(&b, "create %s %s family %s -exist\n", live, typ, setFamily(f))
	fmt.Fprintf(&b, "create %s %s family %s -exist\n", next, typ, setFamily(f))
	fmt.Fprintf(&b, "flush %s\n", next)
	for _, e := range entries {
		fmt.Fprintf(&b, "add %s %s\n", next, e)
	}
	fmt.Fprintf(&b, "swap %s %s\n", next, live)
	fmt.Fprintf(&b, "destroy %s\n", next)
	return b.String()
}

// ourSets returns the names of sets in `ipset list -n` output that are
// ours.
func ourSets(list string) []string {
	var r []string
	for line := range strings.Lines(list) {
		if name := strings.TrimSpace(line); strings.HasPrefix(name, Prefix) {
			r = append(r, name)
		}
	}
	return r
}
