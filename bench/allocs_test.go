package bench

import (
	"testing"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// TestDecideNoAllocs holds the benchmarked decisions to no allocation:
// every flow of the knp workload, with and without its
// ClusterNetworkPolicies, on a cache miss and on a hit.
func TestDecideNoAllocs(t *testing.T) {
	for _, wl := range []struct {
		name string
		load func() (*Workload, error)
	}{{"knp-workload", knp}, {"knp-workload+cnp", knpCNP}} {
		w, err := wl.load()
		if err != nil {
			t.Fatal(err)
		}
		rs, err := filter.Compile(w.Cluster)
		if err != nil {
			t.Fatal(err)
		}
		e := filter.NewEngine(rs, 4*len(w.Flows)) // room for every flow: no eviction, every decision a hit
		if n := testing.AllocsPerRun(3, func() {
			for _, f := range w.Flows {
				rs.Decide(f)
			}
		}); n != 0 {
			t.Errorf("%s: %.1f allocations per %d cache-miss decisions", wl.name, n, len(w.Flows))
		}
		for _, f := range w.Flows {
			e.Decide(f)
		}
		if n := testing.AllocsPerRun(3, func() {
			for _, f := range w.Flows {
				e.Decide(f)
			}
		}); n != 0 {
			t.Errorf("%s: %.1f allocations per %d cache-hit decisions", wl.name, n, len(w.Flows))
		}
	}
}
