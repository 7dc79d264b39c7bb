package main

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	us := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Microsecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(100-i) * time.Microsecond // descending: must sort
	}
	for _, tc := range []struct {
		name    string
		xs      []time.Duration
		p       float64
		want    time.Duration
		wantErr string
	}{
		{"one sample", us(7), 50, 7 * time.Microsecond, ""},
		{"median of odd", us(5, 1, 3), 50, 3 * time.Microsecond, ""},
		{"median of even is the lower", us(4, 1, 3, 2), 50, 2 * time.Microsecond, ""},
		{"p99 of 100", hundred, 99, 99 * time.Microsecond, ""},
		{"p100 is the max", hundred, 100, 100 * time.Microsecond, ""},
		{"tiny p is the min", hundred, 0.001, 1 * time.Microsecond, ""},
		{"p99 of 3 is the max", us(1, 2, 3), 99, 3 * time.Microsecond, ""},
		{"no samples", nil, 50, 0, "no samples"},
		{"p zero", us(1), 0, 0, "want 0 < p <= 100"},
		{"p above 100", us(1), 101, 0, "want 0 < p <= 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := append([]time.Duration(nil), tc.xs...)
			got, err := percentile(tc.xs, tc.p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("percentile = %v, %v; want %v", got, err, tc.want)
			}
			for i := range before {
				if before[i] != tc.xs[i] {
					t.Fatalf("input modified")
				}
			}
		})
	}
}

func TestVerdictLatencies(t *testing.T) {
	f := verdictFilter{src: netip.MustParseAddr("10.1.0.83"), dst: netip.MustParseAddr("10.7.0.81"), dport: 8080}
	ours := `{"level":"debug","component":"agent","queue":100,"id":7,"allow":true,"latency":0.0125,"src":"10.1.0.83","dst":"10.7.0.81","proto":6,"sport":40001,"dport":8080,"message":"verdict"}`
	for _, tc := range []struct {
		name    string
		log     string
		want    []time.Duration
		wantErr string
	}{
		{"one verdict", ours + "\n", []time.Duration{12500 * time.Nanosecond}, ""},
		{"other messages and blank lines skipped", `{"level":"info","message":"enforcing"}` + "\n\n" + ours + "\n" + ours, []time.Duration{12500 * time.Nanosecond, 12500 * time.Nanosecond}, ""},
		{"other flows skipped",
			strings.Replace(ours, `"src":"10.1.0.83"`, `"src":"10.1.0.84"`, 1) + "\n" +
				strings.Replace(ours, `"dport":8080`, `"dport":9090`, 1) + "\n" +
				strings.Replace(ours, `"proto":6`, `"proto":17`, 1), nil, ""},
		{"malformed verdict (no flow) skipped", `{"level":"debug","allow":false,"latency":0.002,"error":"short","message":"verdict"}`, nil, ""},
		{"not JSON", "panic: boom\n", nil, "line 1: not JSON"},
		{"verdict without latency", `{"message":"verdict","src":"10.1.0.83"}`, nil, "line 1: verdict without latency"},
		{"negative latency", strings.Replace(ours, `0.0125`, `-1`, 1), nil, "latency -1"},
		{"latency as a string", strings.Replace(ours, `0.0125`, `"12us"`, 1), nil, "not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := verdictLatencies(strings.NewReader(tc.log), f)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestRatioAndRounding(t *testing.T) {
	if r, err := ratio("x", 93, 100); err != nil || r != 0.93 {
		t.Errorf("ratio = %v, %v", r, err)
	}
	for _, b := range []float64{0, -1} {
		if _, err := ratio("x", 1, b); err == nil {
			t.Errorf("ratio with baseline %v: no error", b)
		}
	}
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{{0, "0"}, {1499 * time.Nanosecond, "1"}, {1500 * time.Nanosecond, "2"}, {40 * time.Microsecond, "40"}} {
		if got := roundUS(tc.d); got != tc.want {
			t.Errorf("roundUS(%v) = %s, want %s", tc.d, got, tc.want)
		}
	}
}

func TestPortCursor(t *testing.T) {
	var c portCursor
	span := lastPort - firstPort
	seen := map[int]bool{}
	for range span {
		p := c.next()
		if p < firstPort || p >= lastPort {
			t.Fatalf("port %d out of [%d, %d)", p, firstPort, lastPort)
		}
		if seen[p] {
			t.Fatalf("port %d repeated before the range was used up", p)
		}
		seen[p] = true
	}
	if p := c.next(); p != firstPort {
		t.Fatalf("after the whole range: %d, want a wrap to %d", p, firstPort)
	}
}

func TestOptionsCheck(t *testing.T) {
	good := options{duration: 4500 * time.Millisecond, rounds: 30, workers: 4, queues: 2, latencyConns: 15000, missClients: 100, missServers: 400, acceptAllVerdict: "accept"}
	if err := good.check(0); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*options)
		nargs int
		want  string
	}{
		{"arguments", func(*options) {}, 1, "no arguments"},
		{"short phase", func(o *options) { o.duration = time.Millisecond }, 0, "-duration"},
		{"no workers", func(o *options) { o.workers = 0 }, 0, "-workers"},
		{"no rounds", func(o *options) { o.rounds = 0 }, 0, "-rounds"},
		{"rounds too short", func(o *options) { o.rounds = 50 }, 0, "-rounds"},
		{"few latency conns per round", func(o *options) { o.latencyConns = 200 }, 0, "-latency-conns"},
		{"no miss clients", func(o *options) { o.missClients = 0 }, 0, "-miss-clients"},
		{"bad accept-all verdict", func(o *options) { o.acceptAllVerdict = "drop" }, 0, "-acceptall-verdict"},
		{"no queues", func(o *options) { o.queues = 0 }, 0, "-queues"},
		{"few latency conns", func(o *options) { o.latencyConns = 10 }, 0, "-latency-conns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.edit(&o)
			if err := o.check(tc.nargs); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

func TestQuartiles(t *testing.T) {
	for _, tc := range []struct {
		xs        []float64
		q1, m, q3 float64
	}{
		{[]float64{5}, 5, 5, 5},
		{[]float64{4, 1}, 1, 2.5, 4},
		{[]float64{3, 1, 2}, 1, 2, 3},
		{[]float64{1, 2, 3, 4}, 1.5, 2.5, 3.5},
		{[]float64{9, 1, 8, 2, 7, 3, 6, 4, 5}, 2.5, 5, 7.5},
	} {
		q1, m, q3 := quartiles(tc.xs)
		if q1 != tc.q1 || m != tc.m || q3 != tc.q3 {
			t.Errorf("quartiles(%v) = %v %v %v, want %v %v %v", tc.xs, q1, m, q3, tc.q1, tc.m, tc.q3)
		}
	}
	if q1, m, q3 := quartiles(nil); !math.IsNaN(q1) || !math.IsNaN(m) || !math.IsNaN(q3) {
		t.Errorf("quartiles(nil) = %v %v %v, want NaNs", q1, m, q3)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{0.9, 0.95, 0.2}, 0.9},
	} {
		in := append([]float64(nil), tc.xs...)
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.xs[i] {
				t.Fatalf("median modified its input")
			}
		}
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
}

func TestRotated(t *testing.T) {
	for _, tc := range []struct {
		n, k int
		want []int
	}{
		{3, 0, []int{0, 1, 2}},
		{3, 1, []int{1, 2, 0}},
		{3, 4, []int{1, 2, 0}},
		{2, 1, []int{1, 0}},
		{1, 5, []int{0}},
	} {
		got := rotated(tc.n, tc.k)
		if !slices.Equal(got, tc.want) {
			t.Errorf("rotated(%d, %d) = %v, want %v", tc.n, tc.k, got, tc.want)
		}
	}
}

func TestSweepStaleDirs(t *testing.T) {
	dir := t.TempDir()
	// A pid that cannot be running: above the kernel's pid_max limit.
	dead := namePrefix + "99999999-abc"
	live := fmt.Sprintf("%s%d-abc", namePrefix, os.Getpid())
	for _, d := range []string{dead, live, "nfqp-99999999-x", "unrelated"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A file with a matching name is not ours to remove.
	if err := os.WriteFile(filepath.Join(dir, namePrefix+"99999998-file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := sweepStaleDirs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || filepath.Base(got[0]) != dead {
		t.Fatalf("swept %v, want only %s", got, dead)
	}
	left, _ := os.ReadDir(dir)
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	if len(names) != 4 || slices.Contains(names, dead) {
		t.Fatalf("left %v", names)
	}
}
