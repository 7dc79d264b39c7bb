package bench

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// cpuTimer measures the CPU time of the benchmark's own thread. On a
// shared two-core machine wall time per op includes the time the thread
// waited for a core; thread CPU time does not, so it is the steadier
// figure to hold against a target. Both are reported.
type cpuTimer struct {
	b     *testing.B
	start int64
}

func threadCPU() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// startCPU pins the goroutine to its thread (so the thread clock is the
// loop's) and resets the benchmark timer.
func startCPU(b *testing.B) *cpuTimer {
	runtime.LockOSThread()
	b.ResetTimer()
	return &cpuTimer{b: b, start: threadCPU()}
}

func (t *cpuTimer) stop() {
	end := threadCPU()
	t.b.StopTimer()
	runtime.UnlockOSThread()
	if t.b.N > 0 && t.start > 0 {
		t.b.ReportMetric(float64(end-t.start)/float64(t.b.N), "cpu-ns/op")
	}
}
