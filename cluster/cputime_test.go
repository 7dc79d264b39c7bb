package cluster

import (
	"syscall"
	"testing"
	"time"
)

// cpuTime is the CPU time the test process has used. Load-time limits are
// checked against it rather than wall time, which on a shared machine
// measures the neighbours.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
