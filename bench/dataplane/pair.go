package main

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// pair is the client and server pod the benchmark sends traffic between.
type pair struct {
	node                 string // node both pods run on: the agent's --node-name
	client, server       netip.Addr
	port                 uint16
	clientPod, serverPod string
	line                 int    // probe's line in the workload file
	reason               string // the engine's reason for allowing
}

func (p pair) String() string {
	return fmt.Sprintf("%s (%s) -> %s (%s) TCP/%d on node %s (probe at line %d; %s)",
		p.clientPod, p.client, p.serverPod, p.server, p.port, p.node, p.line, p.reason)
}

// choosePair picks the probe the benchmark reproduces: TCP over IPv4
// between two pods of the same node (so one agent, told that node's name,
// diverts the flow and polices both sides), expected allow, and allowed by
// the engine too. Among those it prefers the probes whose verdict takes
// the most policy work: a rule of an isolating policy on both sides beats
// one, which beats none; the first in file order wins a tie, so that the
// choice is the same on every run.
func choosePair(s *scenario.Scenario, rs *filter.Ruleset) (pair, error) {
	eng := filter.NewEngine(rs, 0)
	best, bestScore := pair{}, -1
	for _, p := range s.Probes {
		if p.Protocol != "TCP" || p.Family != 4 || p.Expect != scenario.Allow ||
			p.Src.Kind != cluster.EndpointPod || p.Dst.Kind != cluster.EndpointPod ||
			p.Src.NodeName == "" || p.Src.NodeName != p.Dst.NodeName || p.Src.Addr == p.Dst.Addr {
			continue
		}
		local := rs.LocalPodAddrs(p.Src.NodeName)
		if !slices.Contains(local, p.Src.Addr) || !slices.Contains(local, p.Dst.Addr) {
			continue
		}
		v := eng.Decide(filter.Flow{Src: p.Src.Addr, Dst: p.Dst.Addr, SrcPort: 40000, DstPort: uint16(p.Port), Proto: filter.ProtoTCP})
		if !v.Allow {
			// The engine disagrees with the reference; the conformance
			// tests report that. A benchmark needs a flow that passes.
			continue
		}
		score := 0
		if v.Egress.Decision == filter.AllowedByRule {
			score++
		}
		if v.Ingress.Decision == filter.AllowedByRule {
			score++
		}
		if score <= bestScore {
			continue
		}
		bestScore = score
		best = pair{
			node: p.Src.NodeName, client: p.Src.Addr, server: p.Dst.Addr, port: uint16(p.Port),
			clientPod: p.Src.Pod.Namespace + "/" + p.Src.Pod.Name, serverPod: p.Dst.Pod.Namespace + "/" + p.Dst.Pod.Name,
			line: p.Line, reason: rs.Describe(v),
		}
	}
	if bestScore < 0 {
		return pair{}, errors.New("no TCP/IPv4 probe between two pods of one node that is expected and decided allow")
	}
	return best, nil
}
