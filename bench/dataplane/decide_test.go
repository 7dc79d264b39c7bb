package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

func TestSynPacketDecodes(t *testing.T) {
	p := pair{client: netip.MustParseAddr("10.1.0.83"), server: netip.MustParseAddr("10.7.0.81"), port: 8080}
	pkt, err := synPacket(p, 40001)
	if err != nil {
		t.Fatal(err)
	}
	f, err := filter.NewDecoder().Decode(pkt)
	if err != nil {
		t.Fatal(err)
	}
	want := filter.Flow{Src: p.client, Dst: p.server, SrcPort: 40001, DstPort: 8080, Proto: filter.ProtoTCP}
	if f != want {
		t.Fatalf("decoded %+v, want %+v", f, want)
	}
}

func TestDecideOnly(t *testing.T) {
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
	for _, cache := range []int{0, 1024} {
		s, err := decideOnly(rs, p, cache, 1000)
		if err != nil {
			t.Fatalf("cache %d: %v", cache, err)
		}
		if s.n != 1000 || s.p50 <= 0 || s.p50 > s.p99 || s.p99 > s.max {
			t.Errorf("cache %d: implausible summary %s", cache, s)
		}
	}
	// A flow the policies deny is an error, not a figure.
	denied := p
	denied.port = 1 // no policy of the workload allows port 1 into an isolated pod
	if _, err := decideOnly(rs, denied, 0, 10); err == nil || !strings.Contains(err.Error(), "denies") {
		t.Errorf("denied flow: err %v", err)
	}
}
