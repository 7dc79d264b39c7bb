package main

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// conn is one client/server address pair a load generator connects.
type conn struct {
	src netip.Addr
	dst netip.AddrPort
}

// targets hands the load generators their pairs in turn; safe for
// concurrent use. One pair is the single-flow lanes; many distinct pairs
// are the cache-miss-heavy lane: the flow cache's key is the pair without
// the source port, so a pair not seen before misses.
type targets struct {
	conns []conn
	n     atomic.Uint64
}

func oneTarget(src netip.Addr, dst netip.AddrPort) *targets {
	return &targets{conns: []conn{{src, dst}}}
}

func (t *targets) next() conn {
	if len(t.conns) == 1 {
		return t.conns[0]
	}
	return t.conns[(t.n.Add(1)-1)%uint64(len(t.conns))]
}

// manyPairs picks, among the pods local to p's node other than p's two,
// up to maxClients clients and maxServers servers, and returns the
// client -> server connections on p's port the engine allows among them,
// in an order that cycles through servers and clients alike. Clients
// allowed to the most pods go first, then servers allowed from the most
// of those clients; ties go to the lower address, so the choice is the
// same on every run.
func manyPairs(rs *filter.Ruleset, p pair, maxClients, maxServers int) (clients, servers []netip.Addr, pairs []conn, err error) {
	var local []netip.Addr
	for _, a := range rs.LocalPodAddrs(p.node) {
		if a.Is4() && a != p.client && a != p.server {
			local = append(local, a)
		}
	}
	slices.SortFunc(local, netip.Addr.Compare)
	local = slices.Compact(local)
	eng := filter.NewEngine(rs, 0)
	allowed := func(c, s netip.Addr) bool {
		return c != s && eng.Decide(filter.Flow{Src: c, Dst: s, SrcPort: 40000, DstPort: p.port, Proto: filter.ProtoTCP}).Allow
	}
	type scored struct {
		a netip.Addr
		n int
	}
	rank := func(cands []netip.Addr, score func(netip.Addr) int, max int) []netip.Addr {
		var sc []scored
		for _, a := range cands {
			if n := score(a); n > 0 {
				sc = append(sc, scored{a, n})
			}
		}
		slices.SortStableFunc(sc, func(x, y scored) int { return cmp.Compare(y.n, x.n) })
		var out []netip.Addr
		for _, s := range sc[:min(len(sc), max)] {
			out = append(out, s.a)
		}
		slices.SortFunc(out, netip.Addr.Compare)
		return out
	}
	// Clients first: in the workloads we bench, egress isolation is
	// what leaves few pods able to open connections at all.
	clients = rank(local, func(c netip.Addr) int {
		n := 0
		for _, s := range local {
			if allowed(c, s) {
				n++
			}
		}
		return n
	}, maxClients)
	var rest []netip.Addr
	for _, a := range local {
		if _, found := slices.BinarySearchFunc(clients, a, netip.Addr.Compare); !found {
			rest = append(rest, a)
		}
	}
	servers = rank(rest, func(s netip.Addr) int {
		n := 0
		for _, c := range clients {
			if allowed(c, s) {
				n++
			}
		}
		return n
	}, maxServers)
	// Round-robin over servers, each time with the next client it
	// allows: consecutive connections share neither address when they
	// can help it.
	per := make([][]netip.Addr, len(servers))
	for i, s := range servers {
		for _, c := range clients {
			if allowed(c, s) {
				per[i] = append(per[i], c)
			}
		}
	}
	for k := 0; ; k++ {
		added := false
		for i, s := range servers {
			if k < len(per[i]) {
				pairs = append(pairs, conn{per[i][(k+i)%len(per[i])], netip.AddrPortFrom(s, p.port)})
				added = true
			}
		}
		if !added {
			break
		}
	}
	if len(pairs) == 0 {
		return nil, nil, nil, errors.New("no allowed pair of other pods on the node for the cache-miss lane")
	}
	if len(pairs) < 2 {
		return nil, nil, nil, fmt.Errorf("only %d allowed pair of other pods on the node for the cache-miss lane", len(pairs))
	}
	return clients, servers, pairs, nil
}
