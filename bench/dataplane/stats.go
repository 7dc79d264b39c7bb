package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0 < p <= 100) of xs by the
// nearest-rank method: the smallest sample with at least p% of the
// samples at or below it. xs need not be sorted; it is not modified.
// It is an error to ask for a percentile of nothing.
func percentile(xs []time.Duration, p float64) (time.Duration, error) {
	if len(xs) == 0 {
		return 0, fmt.Errorf("percentile of no samples")
	}
	if !(p > 0 && p <= 100) {
		return 0, fmt.Errorf("percentile %v: want 0 < p <= 100", p)
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[max(rank, 1)-1], nil
}

// summary is the few percentiles the report prints.
type summary struct {
	n                  int
	p50, p90, p99, max time.Duration
}

func summarize(xs []time.Duration) (summary, error) {
	s := summary{n: len(xs)}
	for _, q := range []struct {
		p   float64
		dst *time.Duration
	}{{50, &s.p50}, {90, &s.p90}, {99, &s.p99}, {100, &s.max}} {
		v, err := percentile(xs, q.p)
		if err != nil {
			return summary{}, err
		}
		*q.dst = v
	}
	return s, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func (s summary) String() string {
	return fmt.Sprintf("n=%d p50=%.1fus p90=%.1fus p99=%.1fus max=%.1fus", s.n, us(s.p50), us(s.p90), us(s.p99), us(s.max))
}

// verdictFilter selects the agent's verdict log lines of the benchmark's
// flow.
type verdictFilter struct {
	src, dst netip.Addr
	dport    uint16
}

// verdictLatencies reads an agent log written at --log-level debug and
// returns the latency of every verdict on the selected flow's packets. The
// agent logs one JSON line per verdict with message "verdict" and the
// time from receiving the packet to having sent its verdict as "latency",
// in milliseconds (zerolog's default duration unit). Any line that is not
// JSON, and any verdict line without a latency, is an error: the format
// changed and the figures would mean something else.
func verdictLatencies(r io.Reader, f verdictFilter) ([]time.Duration, error) {
	var out []time.Duration
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var e struct {
			Message string   `json:"message"`
			Latency *float64 `json:"latency"`
			Src     string   `json:"src"`
			Dst     string   `json:"dst"`
			Proto   uint8    `json:"proto"`
			DPort   uint16   `json:"dport"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("agent log line %d: not JSON: %w", line, err)
		}
		if e.Message != "verdict" {
			continue
		}
		if e.Latency == nil {
			return nil, fmt.Errorf("agent log line %d: verdict without latency", line)
		}
		if *e.Latency < 0 || math.IsNaN(*e.Latency) || math.IsInf(*e.Latency, 0) {
			return nil, fmt.Errorf("agent log line %d: latency %v", line, *e.Latency)
		}
		if e.Src != f.src.String() || e.Dst != f.dst.String() || e.DPort != f.dport || e.Proto != 6 {
			continue
		}
		out = append(out, time.Duration(*e.Latency*float64(time.Millisecond)))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read agent log: %w", err)
	}
	return out, nil
}

// ratio is a/b, or an error when b is not positive (the baseline phase
// measured nothing: a harness problem, not a result).
func ratio(name string, a, b float64) (float64, error) {
	if !(b > 0) {
		return 0, fmt.Errorf("ratio %s: baseline is %v", name, b)
	}
	return a / b, nil
}

// median of xs (the mean of the middle two for an even count); NaN for
// none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// quartiles returns the first quartile, the median and the third
// quartile of xs (the medians of the lower and upper halves, the middle
// element excluded for an odd count: Tukey's hinges); NaNs for none.
func quartiles(xs []float64) (q1, m, q3 float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	h := len(s) / 2
	if len(s) == 1 {
		return s[0], s[0], s[0]
	}
	return median(s[:h]), median(s), median(s[len(s)-h:])
}
