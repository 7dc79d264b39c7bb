// Command report reads `go test -bench` output and prints, for the figures
// the project tracks, the median over the runs next to its target, and the
// ratios against baselines measured in the same run.
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// line matches "BenchmarkName-2  N  123.4 ns/op ... 0 allocs/op".
var line = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

type target struct {
	bench, unit string
	max         float64
	what        string
}

var targets = []target{
	{"BenchmarkDecide/knp-workload/miss", "cpu-ns/op", 300, "decision, cache miss, knp workload"},
	{"BenchmarkDecide/knp-workload/miss", "allocs/op", 0, "allocations per decision, cache miss"},
	{"BenchmarkDecide/knp-workload/hit", "cpu-ns/op", 80, "decision, cache hit"},
	{"BenchmarkDecide/knp-workload/hit", "allocs/op", 0, "allocations per decision, cache hit"},
	{"BenchmarkDecode", "cpu-ns/op", 60, "decode alone"},
	{"BenchmarkDecode", "allocs/op", 0, "allocations per decode"},
	{"BenchmarkCompile/50k-pods", "ns/op", 2e9, "compile 50k pods / 5k policies"},
	{"BenchmarkCompile/50k-pods", "heap-MiB", 300, "heap of the compiled 50k-pod state"},
	{"BenchmarkDecide/50k-pods/miss", "cpu-ns/op", 1000, "decision, cache miss, 50k pods"},
	{"BenchmarkDecide/knp-workload+cnp/miss", "cpu-ns/op", 200, "decision, cache miss, knp + 40 CNPs"},
	{"BenchmarkDecide/knp-workload+cnp/miss", "allocs/op", 0, "allocations per decision, miss, with CNPs"},
	{"BenchmarkCompile/50k-pods+cnp", "ns/op", 2e9, "compile 50k pods / 5k policies / 200 CNPs"},
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: report BENCH-OUTPUT-FILE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "report: %v\n", err)
		os.Exit(2)
	}
	defer f.Close()
	vals := map[string]map[string][]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := line.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		fields := strings.Fields(m[2])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			if vals[m[1]] == nil {
				vals[m[1]] = map[string][]float64{}
			}
			vals[m[1]][fields[i+1]] = append(vals[m[1]][fields[i+1]], v)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "report: %v\n", err)
		os.Exit(2)
	}
	median := func(bench, unit string) (float64, bool) {
		xs := vals[bench][unit]
		if len(xs) == 0 {
			return 0, false
		}
		s := append([]float64(nil), xs...)
		sort.Float64s(s)
		return s[len(s)/2], true
	}
	fmt.Println("--- targets (median of the runs; cpu-ns/op is the benchmark thread's CPU time per op, which waiting for a core on a shared machine does not inflate; wall ns/op is in the raw output above)")
	missed := 0
	for _, t := range targets {
		v, ok := median(t.bench, t.unit)
		if !ok {
			fmt.Printf("MISSING %-45s %s: no figure in the output\n", t.what, t.unit)
			missed++
			continue
		}
		mark := "ok  "
		if v > t.max {
			mark = "OVER"
			missed++
		}
		fmt.Printf("%s %-45s %12.1f %-9s (target <= %g)\n", mark, t.what, v, t.unit, t.max)
	}
	fmt.Println("--- ratios against baselines measured in the same run")
	if a, ok := median("BenchmarkDecode", "cpu-ns/op"); ok {
		if b, ok := median("BenchmarkDecodeNewPacket", "cpu-ns/op"); ok {
			fmt.Printf("ratio decode_vs_gopacket_newpacket=%.3f\n", a/b)
		}
	}
	if a, ok := median("BenchmarkDecide/knp-workload/hit", "cpu-ns/op"); ok {
		if b, ok := median("BenchmarkDecide/knp-workload/miss", "cpu-ns/op"); ok {
			fmt.Printf("ratio decide_hit_vs_miss=%.3f\n", a/b)
		}
	}
	if a, ok := median("BenchmarkDecide/knp-workload+cnp/miss", "cpu-ns/op"); ok {
		if b, ok := median("BenchmarkDecide/knp-workload/miss", "cpu-ns/op"); ok {
			fmt.Printf("ratio decide_miss_with_cnp_vs_networkpolicy_only=%.3f\n", a/b)
		}
	}
	if a, ok := median("BenchmarkCompile/50k-pods+cnp", "ns/op"); ok {
		if b, ok := median("BenchmarkCompile/50k-pods", "ns/op"); ok {
			fmt.Printf("ratio compile_50k_with_200_cnp_vs_without=%.3f\n", a/b)
		}
	}
	fmt.Printf("%d of %d targets missed\n", missed, len(targets))
}
