package bench

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/nfqpolicy/nfqpolicy/cluster"
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

// churned returns c after n changes of the scale harness's mix (pods
// created, deleted, relabelled; NetworkPolicies created, edited,
// deleted), as an informer publishes it: changed objects are new ones,
// the lists stay sorted by namespace and name.
func churned(c *cluster.Cluster, rnd *rand.Rand, n int, seq *int) *cluster.Cluster {
	out := *c
	out.Pods = slices.Clone(c.Pods)
	out.Policies = slices.Clone(c.Policies)
	podKey := func(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }
	polKey := func(p *networkingv1.NetworkPolicy) string { return p.Namespace + "/" + p.Name }
	for range n {
		*seq++
		ns := fmt.Sprintf("ns-%d", rnd.IntN(len(c.Namespaces)))
		switch r := rnd.IntN(100); {
		case r < 25: // a pod starts, with the address of one that went
			i := rnd.IntN(len(out.Pods))
			p := out.Pods[i].DeepCopy()
			out.Pods = slices.Delete(out.Pods, i, i+1)
			p.Namespace, p.Name = ns, fmt.Sprintf("churn-%d", *seq)
			j, _ := slices.BinarySearchFunc(out.Pods, podKey(p), func(x *corev1.Pod, k string) int { return strings.Compare(podKey(x), k) })
			out.Pods = slices.Insert(out.Pods, j, p)
		case r < 50: // a pod is relabelled
			i := rnd.IntN(len(out.Pods))
			p := out.Pods[i].DeepCopy()
			p.Labels["version"] = fmt.Sprintf("v%d", rnd.IntN(5))
			p.Labels["tier"] = []string{"frontend", "backend", "db"}[rnd.IntN(3)]
			out.Pods[i] = p
		case r < 75: // a policy is created (a copy of another, elsewhere)
			p := out.Policies[rnd.IntN(len(out.Policies))].DeepCopy()
			p.Namespace, p.Name, p.ResourceVersion = ns, fmt.Sprintf("churn-np-%d", *seq), fmt.Sprint(*seq)
			j, _ := slices.BinarySearchFunc(out.Policies, polKey(p), func(x *networkingv1.NetworkPolicy, k string) int { return strings.Compare(polKey(x), k) })
			out.Policies = slices.Insert(out.Policies, j, p)
		case r < 90: // a policy is edited
			i := rnd.IntN(len(out.Policies))
			p := out.Policies[i].DeepCopy()
			p.ResourceVersion = fmt.Sprint(*seq)
			p.Spec.Ingress = p.Spec.Ingress[:len(p.Spec.Ingress)-1]
			if len(p.Spec.Ingress) == 0 {
				p.Spec.Ingress = out.Policies[i].Spec.Ingress
			}
			out.Policies[i] = p
		default: // a policy is deleted
			i := rnd.IntN(len(out.Policies))
			out.Policies = slices.Delete(out.Policies, i, i+1)
		}
	}
	return &out
}

// BenchmarkCompileChange is what the agent pays per rebuild under churn
// at the scale harness's top step (10,000 pods, 2,000 NetworkPolicies,
// with and without 20 Admin + 20 Baseline ClusterNetworkPolicies): a
// batch of 30 changes (100 changes/s over a 300 ms coalescing window)
// compiled whole, and compiled incrementally by a Compiler from the
// previous state.
func BenchmarkCompileChange(b *testing.B) {
	base := Generate(100, 10000, 2000, 0, 1).Cluster
	// In the informer's order, by namespace and name.
	slices.SortFunc(base.Pods, func(x, y *corev1.Pod) int {
		return strings.Compare(x.Namespace+"/"+x.Name, y.Namespace+"/"+y.Name)
	})
	slices.SortFunc(base.Policies, func(x, y *networkingv1.NetworkPolicy) int {
		return strings.Compare(x.Namespace+"/"+x.Name, y.Namespace+"/"+y.Name)
	})
	withCNP := *base
	withCNP.ClusterPolicies = ClusterPolicies(20, 20, 100, 1)
	for _, wl := range []struct {
		name string
		c    *cluster.Cluster
	}{{"10k-pods", base}, {"10k-pods+cnp", &withCNP}} {
		for _, mode := range []string{"whole", "incremental"} {
			b.Run(wl.name+"/"+mode, func(b *testing.B) {
				rnd := rand.New(rand.NewPCG(1, 2))
				seq := 0
				cur := wl.c
				comp := filter.NewCompiler()
				if _, err := comp.Compile(cur); err != nil {
					b.Fatal(err)
				}
				// CPU time of the compiles alone (the thread's), not of
				// making the changes.
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				var cpu int64
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					cur = churned(cur, rnd, 30, &seq)
					b.StartTimer()
					c0 := threadCPU()
					var err error
					if mode == "whole" {
						_, err = filter.Compile(cur)
					} else {
						_, err = comp.Compile(cur)
					}
					cpu += threadCPU() - c0
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
				if full, _ := comp.Counts(); mode == "incremental" && full != 1 {
					b.Fatalf("%d whole compiles, want only the first", full)
				}
			})
		}
	}
}

// BenchmarkDecideAfterChurn decides the same flows with a Ruleset a
// Compiler maintained through 3,000 changes (100 batches of 30) and with
// a whole compile of the same state: the incremental one's pod slots are
// no longer in namespace order, which must not slow decisions.
func BenchmarkDecideAfterChurn(b *testing.B) {
	base := Generate(100, 10000, 2000, 0, 1).Cluster
	base.ClusterPolicies = ClusterPolicies(20, 20, 100, 1)
	rnd := rand.New(rand.NewPCG(3, 4))
	comp := filter.NewCompiler()
	cur, seq := base, 0
	if _, err := comp.Compile(cur); err != nil {
		b.Fatal(err)
	}
	var inc *filter.Ruleset
	for range 100 {
		cur = churned(cur, rnd, 30, &seq)
		var err error
		if inc, err = comp.Compile(cur); err != nil {
			b.Fatal(err)
		}
	}
	if full, _ := comp.Counts(); full != 1 {
		b.Fatalf("%d whole compiles, want only the first", full)
	}
	whole, err := filter.Compile(cur)
	if err != nil {
		b.Fatal(err)
	}
	var addrs []netip.Addr
	for _, p := range cur.Pods {
		addrs = append(addrs, cluster.PodAddrs(p)...)
	}
	flows := make([]filter.Flow, 10000)
	for i := range flows {
		flows[i] = filter.Flow{Src: addrs[rnd.IntN(len(addrs))], Dst: addrs[rnd.IntN(len(addrs))],
			SrcPort: 40000, DstPort: []uint16{8080, 9090, 443, 5432}[rnd.IntN(4)], Proto: filter.ProtoTCP}
	}
	for _, rs := range []struct {
		name string
		rs   *filter.Ruleset
	}{{"whole", whole}, {"incremental", inc}} {
		b.Run(rs.name, func(b *testing.B) {
			e := filter.NewEngine(rs.rs, 0)
			b.ReportAllocs()
			t := startCPU(b)
			for i := 0; i < b.N; i++ {
				e.Decide(flows[i%len(flows)])
			}
			t.stop()
		})
	}
}
