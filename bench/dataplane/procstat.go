package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procStat is what a process cost so far, over all its threads: CPU
// time and context switches (voluntary: it blocked, e.g. waiting for the
// next packet; involuntary: it was preempted).
type procStat struct {
	cpu               time.Duration
	voluntary, forced uint64
}

func (p procStat) sub(q procStat) procStat {
	return procStat{cpu: p.cpu - q.cpu, voluntary: p.voluntary - q.voluntary, forced: p.forced - q.forced}
}

func (p procStat) add(q procStat) procStat {
	return procStat{cpu: p.cpu + q.cpu, voluntary: p.voluntary + q.voluntary, forced: p.forced + q.forced}
}

// readProcStat sums, over pid's live threads, the time they ran
// (/proc/PID/task/*/schedstat, in nanoseconds) and their context switches
// (/proc/PID/task/*/status). Threads that ended took their figures with
// them; the Go runtime keeps its threads.
func readProcStat(pid int) (procStat, error) {
	var s procStat
	dirs, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil || len(dirs) == 0 {
		return s, fmt.Errorf("process statistics of %d: no threads (%v)", pid, err)
	}
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, "schedstat"))
		if err != nil {
			continue // the thread ended
		}
		f := strings.Fields(string(data))
		if len(f) < 1 {
			return s, fmt.Errorf("process statistics of %d: malformed %s/schedstat", pid, d)
		}
		ns, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return s, fmt.Errorf("process statistics of %d: %w", pid, err)
		}
		s.cpu += time.Duration(ns)
		data, err = os.ReadFile(filepath.Join(d, "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			switch {
			case err != nil:
			case k == "voluntary_ctxt_switches":
				s.voluntary += n
			case k == "nonvoluntary_ctxt_switches":
				s.forced += n
			}
		}
	}
	return s, nil
}
