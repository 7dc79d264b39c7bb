package bench

import (
	"runtime"
	"sync"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/probe"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// knp loads the shared workload once per test binary: it is 1.4 MB of YAML
// and every benchmark reads it.
var knp = sync.OnceValues(func() (*Workload, error) {
	scs, err := scenario.Load("../testdata/bench/knp-workload.yaml")
	if err != nil {
		return nil, err
	}
	sc := scs[0]
	w := &Workload{Cluster: sc.Cluster}
	for i, p := range sc.Probes {
		proto, err := filter.ProtoNumber(p.Protocol)
		if err != nil {
			return nil, err
		}
		w.Flows = append(w.Flows, filter.Flow{Src: p.Src.Addr, Dst: p.Dst.Addr, SrcPort: uint16(32768 + i%28000), DstPort: uint16(p.Port), Proto: proto})
	}
	return w, nil
})

var big = sync.OnceValue(func() *Workload { return Generate(100, 50000, 5000, 10000, 1) })

// withCNP returns w with ClusterNetworkPolicies added (admin Admin and
// baseline Baseline tier ones, ClusterPolicies), over a copy of its
// cluster: the same pods, policies and flows.
func withCNP(w *Workload, admin, baseline int) *Workload {
	c := *w.Cluster
	c.ClusterPolicies = ClusterPolicies(admin, baseline, len(c.Namespaces), 1)
	return &Workload{Cluster: &c, Flows: w.Flows}
}

// knpCNP is the knp workload with 20 Admin and 20 Baseline policies.
var knpCNP = sync.OnceValues(func() (*Workload, error) {
	w, err := knp()
	if err != nil {
		return nil, err
	}
	return withCNP(w, 20, 20), nil
})

func loadKNPCNP(b *testing.B) *Workload {
	w, err := knpCNP()
	if err != nil {
		b.Fatal(err)
	}
	return w
}

func loadKNP(b *testing.B) *Workload {
	w, err := knp()
	if err != nil {
		b.Fatal(err)
	}
	return w
}

func compile(b *testing.B, w *Workload) *filter.Ruleset {
	rs, err := filter.Compile(w.Cluster)
	if err != nil {
		b.Fatal(err)
	}
	return rs
}

func BenchmarkDecide(b *testing.B) {
	for _, wl := range []struct {
		name string
		load func(*testing.B) *Workload
	}{
		{"knp-workload", loadKNP},
		{"knp-workload+cnp", loadKNPCNP},
		{"50k-pods", func(*testing.B) *Workload { return big() }},
	} {
		w := wl.load(b)
		rs := compile(b, w)
		b.Run(wl.name+"/miss", func(b *testing.B) {
			e := filter.NewEngine(rs, 0) // cache off: every decision walks the Ruleset
			b.ReportAllocs()
			t := startCPU(b)
			for i := 0; i < b.N; i++ {
				e.Decide(w.Flows[i%len(w.Flows)])
			}
			t.stop()
		})
		if wl.name != "knp-workload" {
			continue
		}
		b.Run(wl.name+"/hit", func(b *testing.B) {
			e := filter.NewEngine(rs, 2*len(w.Flows))
			for _, f := range w.Flows {
				e.Decide(f)
			}
			b.ReportAllocs()
			t := startCPU(b)
			for i := 0; i < b.N; i++ {
				e.Decide(w.Flows[i%len(w.Flows)])
			}
			t.stop()
			if hits, _ := e.CacheStats(); hits < uint64(b.N) {
				b.Fatalf("only %d of %d decisions hit the cache", hits, b.N)
			}
		})
	}
}

func packets(b *testing.B) [][]byte {
	w := loadKNP(b)
	var pkts [][]byte
	for _, f := range w.Flows[:1000] {
		p, err := probe.Packet(f)
		if err != nil {
			b.Fatal(err)
		}
		pkts = append(pkts, p)
	}
	return pkts
}

func BenchmarkDecode(b *testing.B) {
	pkts := packets(b)
	d := filter.NewDecoder()
	b.ReportAllocs()
	t := startCPU(b)
	for i := 0; i < b.N; i++ {
		if _, err := d.Decode(pkts[i%len(pkts)]); err != nil {
			b.Fatal(err)
		}
	}
	t.stop()
}

// BenchmarkDecodeNewPacket is the baseline BenchmarkDecode is measured
// against: gopacket's allocating NewPacket on the same packets.
func BenchmarkDecodeNewPacket(b *testing.B) {
	pkts := packets(b)
	b.ReportAllocs()
	t := startCPU(b)
	for i := 0; i < b.N; i++ {
		p := gopacket.NewPacket(pkts[i%len(pkts)], layers.LayerTypeIPv4, gopacket.Default)
		if p.TransportLayer() == nil {
			b.Fatal("no transport layer")
		}
	}
	t.stop()
}

// BenchmarkDecideDecoded is the whole per-packet path on a cache miss:
// decode the first packet, then decide.
func BenchmarkDecideDecoded(b *testing.B) {
	pkts := packets(b)
	rs := compile(b, loadKNP(b))
	e := filter.NewEngine(rs, 0)
	d := filter.NewDecoder()
	b.ReportAllocs()
	t := startCPU(b)
	for i := 0; i < b.N; i++ {
		f, err := d.Decode(pkts[i%len(pkts)])
		if err != nil {
			b.Fatal(err)
		}
		e.Decide(f)
	}
	t.stop()
}

func BenchmarkCompile(b *testing.B) {
	for _, wl := range []struct {
		name string
		load func(*testing.B) *Workload
	}{
		{"knp-workload", loadKNP},
		{"50k-pods", func(*testing.B) *Workload { return big() }},
		// 200 ClusterNetworkPolicies over the same 50k pods and 5k
		// NetworkPolicies.
		{"50k-pods+cnp", func(*testing.B) *Workload { return withCNP(big(), 100, 100) }},
	} {
		w := wl.load(b)
		b.Run(wl.name, func(b *testing.B) {
			var keep *filter.Ruleset
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				keep = compile(b, w)
			}
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&after)
			// What the compiled state holds on the heap beyond the
			// cluster objects it was built from.
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MiB")
			runtime.KeepAlive(keep)
		})
	}
}
