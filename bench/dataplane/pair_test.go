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

func TestManyPairsKNPWorkload(t *testing.T) {
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
	clients, servers, pairs, err := manyPairs(rs, p, 100, 400)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clients, %d servers, %d pairs", len(clients), len(servers), len(pairs))
	if len(clients) > 100 || len(servers) > 400 {
		t.Fatalf("%d clients, %d servers: more than asked for", len(clients), len(servers))
	}
	// Enough distinct pairs that the connection rounds (a few thousand
	// connections) mostly miss the cache.
	if len(pairs) < 8000 {
		t.Errorf("only %d pairs", len(pairs))
	}
	local := rs.LocalPodAddrs(p.node)
	eng := filter.NewEngine(rs, 0)
	seen := map[conn]bool{}
	for _, c := range pairs {
		if seen[c] {
			t.Fatalf("pair %v twice", c)
		}
		seen[c] = true
		if !slices.Contains(clients, c.src) || !slices.Contains(servers, c.dst.Addr()) || c.dst.Port() != p.port {
			t.Fatalf("pair %v outside the chosen pods or port", c)
		}
		if !slices.Contains(local, c.src) || !slices.Contains(local, c.dst.Addr()) {
			t.Fatalf("pair %v not local to %s", c, p.node)
		}
		if c.src == p.client || c.src == p.server || c.dst.Addr() == p.client || c.dst.Addr() == p.server {
			t.Fatalf("pair %v reuses the benchmark flow's pods", c)
		}
		if v := eng.Decide(filter.Flow{Src: c.src, Dst: c.dst.Addr(), SrcPort: 1, DstPort: c.dst.Port(), Proto: filter.ProtoTCP}); !v.Allow {
			t.Fatalf("pair %v denied: %s", c, rs.Describe(v))
		}
	}
	for _, c := range clients {
		if slices.Contains(servers, c) {
			t.Fatalf("%s is client and server", c)
		}
	}
	// Consecutive pairs differ in the server.
	for i := 1; i < len(servers) && i < len(pairs); i++ {
		if pairs[i].dst == pairs[i-1].dst {
			t.Fatalf("pairs %d and %d share server %s", i-1, i, pairs[i].dst)
		}
	}
}
