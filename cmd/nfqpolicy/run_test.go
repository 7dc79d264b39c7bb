package main

import "testing"

func TestReaderProcs(t *testing.T) {
	tests := []struct {
		name          string
		procs, queues int
		env           string
		want          int
		set           bool
	}{
		{"two CPUs, two queues", 2, 2, "", 4, true},
		{"one CPU limit, two queues", 1, 2, "", 3, true},
		{"sixteen CPUs, sixteen queues", 16, 16, "", 32, true},
		{"operator's GOMAXPROCS wins", 2, 2, "1", 0, false},
		{"no queue", 2, 0, "", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, set := readerProcs(tc.procs, tc.queues, tc.env)
			if got != tc.want || set != tc.set {
				t.Errorf("readerProcs(%d, %d, %q) = %d, %v; want %d, %v", tc.procs, tc.queues, tc.env, got, set, tc.want, tc.set)
			}
		})
	}
}
