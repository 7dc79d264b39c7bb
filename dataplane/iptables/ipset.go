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
const setType = "hash:ip"

func setFamily(f Family) string {
	if f == IPv6 {
		return "inet6"
	}
	return "inet"
}

func nextSetName(f Family) string { return SetName(f) + "-NEXT" }

// RenderSetCreate returns ipset restore input that creates family f's set
// if it does not exist yet, leaving its contents alone (the chains
// reference the set, so it has to exist before they are installed).
func RenderSetCreate(f Family) string {
	return fmt.Sprintf("create %s %s family %s -exist\n", SetName(f), setType, setFamily(f))
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

	live, next := SetName(f), nextSetName(f)
	var b strings.Builder
	b.WriteString(RenderSetCreate(f))
	fmt.Fprintf(&b, "create %s %s family %s -exist\n", next, setType, setFamily(f))
	fmt.Fprintf(&b, "flush %s\n", next)
	for _, a := range mine {
		fmt.Fprintf(&b, "add %s %s\n", next, a)
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
