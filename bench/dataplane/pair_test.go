package main

import (
	"slices"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

func TestChoosePairKNPWorkload(t *testing.T) {
	ss, err := scenario.Load("../../testdata/bench/knp-workload.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := filter.Compile(ss[0].Cluster)
	if err != nil {
		t.Fatal(err)
	}
	p, err := choosePair(ss[0], rs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chosen: %s", p)
	local := rs.LocalPodAddrs(p.node)
	if !slices.Contains(local, p.client) || !slices.Contains(local, p.server) {
		t.Errorf("pods not both local to %s", p.node)
	}
	v := filter.NewEngine(rs, 0).Decide(filter.Flow{Src: p.client, Dst: p.server, SrcPort: 12345, DstPort: p.port, Proto: filter.ProtoTCP})
	if !v.Allow {
		t.Errorf("engine denies the chosen flow: %s", rs.Describe(v))
	}
	// The workload has probes whose ingress is allowed by a rule; one of
	// them must win over a flow into a pod no policy isolates.
	if v.Ingress.Decision != filter.AllowedByRule && v.Egress.Decision != filter.AllowedByRule {
		t.Errorf("chosen flow involves no policy rule: %s", rs.Describe(v))
	}
	// The probe the pair came from says allow for exactly this flow.
	found := false
	for _, pr := range ss[0].Probes {
		if pr.Line == p.line {
			found = pr.Expect == scenario.Allow && pr.Protocol == "TCP" && pr.Src.Addr == p.client && pr.Dst.Addr == p.server && pr.Port == int(p.port)
		}
	}
	if !found {
		t.Errorf("no allow probe at line %d for %s", p.line, p)
	}
}

func TestChoosePairNone(t *testing.T) {
	ss, err := scenario.Load("../../testdata/bench/knp-workload.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := *ss[0]
	// Keep only the deny probes: nothing qualifies.
	s.Probes = slices.DeleteFunc(slices.Clone(s.Probes), func(p scenario.Probe) bool { return p.Expect == scenario.Allow })
	rs, err := filter.Compile(s.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := choosePair(&s, rs); err == nil {
		t.Fatal("a pair chosen from deny probes only")
	}
}
