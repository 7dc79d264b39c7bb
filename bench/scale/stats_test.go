package scale

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(100-i) * time.Millisecond // reversed: Summarize must sort
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		want Percentiles
	}{
		{"none", nil, Percentiles{}},
		{"one", []time.Duration{7}, Percentiles{N: 1, P50: 7, P99: 7, Max: 7}},
		{"two", []time.Duration{9, 1}, Percentiles{N: 2, P50: 1, P99: 9, Max: 9}},
		{"hundred", hundred, Percentiles{N: 100, P50: 50 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Summarize(tc.in); got != tc.want {
				t.Errorf("Summarize = %+v, want %+v", got, tc.want)
			}
		})
	}
	if hundred[0] != 100*time.Millisecond {
		t.Error("Summarize sorted its input in place")
	}
}
