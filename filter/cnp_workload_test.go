package filter_test

import (
	"testing"

	"github.com/nfqpolicy/nfqpolicy/bench"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// TestClassWalkOnBenchWorkload checks, on the bench's knp workload with
// its ClusterNetworkPolicies, that picking rules by peer and port class
// decides every flow exactly like testing every rule: the flows as
// generated and again on each port a policy names, just outside those
// ports, a named port, and other protocols. 100 policies per tier give
// tiers of more than 64 rules (several bitmap words).
func TestClassWalkOnBenchWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the 1.4 MB bench workload")
	}
	scs, err := scenario.Load("../testdata/bench/knp-workload.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sc := scs[0]
	ports := []struct {
		port  uint16
		proto uint8
	}{{22, filter.ProtoTCP}, {443, filter.ProtoTCP}, {5432, filter.ProtoTCP}, {6378, filter.ProtoTCP}, {6379, filter.ProtoTCP},
		{6380, filter.ProtoTCP}, {6381, filter.ProtoTCP}, {8080, filter.ProtoTCP}, {9090, filter.ProtoTCP}, {29999, filter.ProtoTCP},
		{30000, filter.ProtoTCP}, {32767, filter.ProtoTCP}, {32768, filter.ProtoTCP}, {65535, filter.ProtoTCP}, {53, filter.ProtoUDP},
		{9090, filter.ProtoSCTP}, {0, filter.ProtoICMP}}
	for _, n := range []int{20, 100} {
		c := *sc.Cluster
		c.ClusterPolicies = bench.ClusterPolicies(n, n, len(c.Namespaces), 1)
		rs, err := filter.Compile(&c)
		if err != nil {
			t.Fatal(err)
		}
		if !filter.HasClasses(rs) {
			t.Fatalf("%d per tier: the class bitmaps are off", n)
		}
		plain := filter.WithoutClasses(rs)
		compared, byCNP := 0, 0
		check := func(f filter.Flow) {
			a, b := rs.Decide(f), plain.Decide(f)
			a.Ruleset, b.Ruleset = nil, nil
			if a != b {
				t.Errorf("%d per tier: %v: by class %+v, every rule %+v", n, f, a, b)
			}
			compared++
			for _, s := range []filter.Side{a.Egress, a.Ingress} {
				if s.Decision.Tier() == "Admin" || s.Decision.Tier() == "Baseline" || s.Pass != 0 {
					byCNP++
				}
			}
		}
		for i, p := range sc.Probes {
			proto, err := filter.ProtoNumber(p.Protocol)
			if err != nil {
				t.Fatal(err)
			}
			f := filter.Flow{Src: p.Src.Addr, Dst: p.Dst.Addr, SrcPort: uint16(32768 + i%28000), DstPort: uint16(p.Port), Proto: proto}
			check(f)
			if i%10 != 0 {
				continue
			}
			for _, pp := range ports {
				f.DstPort, f.Proto = pp.port, pp.proto
				check(f)
			}
		}
		if byCNP < compared/10 {
			t.Errorf("%d per tier: only %d of %d sides decided by a ClusterNetworkPolicy rule: the comparison does not exercise the walk", n, byCNP, 2*compared)
		}
	}
}
