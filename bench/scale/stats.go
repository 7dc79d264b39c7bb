// Package scale measures the node agent at cluster scale on a real
// kube-apiserver: how long a policy change and a new pod take to be
// enforced under churn, what the agent costs its node (RSS, CPU, compile
// time) and what it costs the API server (watch events and bytes).
//
// The harness is TestScaleLadder, run by `make bench-scale`; it skips
// unless -nfqpolicy names the agent binary. See docs/scale.md for what it
// measured.
package scale

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Percentiles summarises delays by the nearest-rank method: p99 of 100
// samples is the 99th smallest, so one outlier in a hundred is not hidden
// by interpolation.
type Percentiles struct {
	N             int
	P50, P99, Max time.Duration
}

// Summarize returns the percentiles of ds (zero with N=0 for none).
func Summarize(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(i, 0)]
	}
	return Percentiles{N: len(s), P50: rank(0.50), P99: rank(0.99), Max: s[len(s)-1]}
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%d", d.Round(time.Millisecond).Milliseconds())
}
