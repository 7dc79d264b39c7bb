package dataplane

import (
	"path/filepath"
	"runtime"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
	"github.com/nfqpolicy/nfqpolicy/probe"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// benchWorkload is the knp workload's first packets as the reader gets
// them, and an engine deciding them as the agent does (cache on, default
// size): the verdicts carry a real Ruleset, so the flow log renders real
// pod and policy names.
type benchWorkload struct {
	attrs  []packet
	engine *filter.Engine
}

func loadBenchWorkload(b *testing.B) *benchWorkload {
	b.Helper()
	scs, err := scenario.Load("../testdata/bench/knp-workload.yaml")
	if err != nil {
		b.Fatal(err)
	}
	rs, err := filter.Compile(scs[0].Cluster)
	if err != nil {
		b.Fatal(err)
	}
	w := &benchWorkload{engine: filter.NewEngine(rs, 65536)}
	for i, p := range scs[0].Probes {
		proto, err := filter.ProtoNumber(p.Protocol)
		if err != nil {
			b.Fatal(err)
		}
		f := filter.Flow{Src: p.Src.Addr, Dst: p.Dst.Addr, SrcPort: uint16(32768 + i%28000), DstPort: uint16(p.Port), Proto: proto}
		pkt, err := probe.Packet(f)
		if err != nil {
			b.Fatal(err)
		}
		w.attrs = append(w.attrs, packet{id: uint32(i + 1), hasID: true, payload: pkt})
	}
	return w
}

// newFlowLog is the agent's --flow-log FILE --flow-log-select all
// --flow-log-rate 0, with the default rotation.
func newFlowLog(b *testing.B) (*flowlog.Logger, func()) {
	b.Helper()
	sink, err := flowlog.OpenSink(filepath.Join(b.TempDir(), "flows.jsonl"), 100<<20, 5)
	if err != nil {
		b.Fatal(err)
	}
	l, err := flowlog.New(flowlog.Options{Out: sink, Select: flowlog.SelectAll, RatePerSec: 0,
		Renderer: flowlog.Renderer{Node: "node-1", Mode: flowlog.Enforce}})
	if err != nil {
		b.Fatal(err)
	}
	return l, func() {
		if err := l.Close(); err != nil {
			b.Error(err)
		}
		if err := sink.Close(); err != nil {
			b.Error(err)
		}
	}
}

// BenchmarkHandleFlowLog is the reader's verdict path (decode, decide,
// verdict to a sender that discards it, observers) with no observer and
// with a flow log of every flow to a file. The log's writer runs on its
// own goroutine; what it could not take is lost (and reported), so
// written-fraction says how much of the offered load was written.
func BenchmarkHandleFlowLog(b *testing.B) {
	w := loadBenchWorkload(b)
	for _, logged := range []bool{false, true} {
		name := "off"
		if logged {
			name = "flowlog-all"
		}
		b.Run(name, func(b *testing.B) {
			var obs Observer
			var l *flowlog.Logger
			if logged {
				var closeLog func()
				l, closeLog = newFlowLog(b)
				defer closeLog()
				obs = l
			}
			r := newTestReader(nopSender{}, obs)
			r.cfg.Decider = w.engine
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r.handle(w.attrs[i%len(w.attrs)])
				i++
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
			if l != nil {
				st := waitDrained(l, uint64(b.N))
				b.ReportMetric(float64(st.Written)/float64(st.Written+st.Lost), "written-fraction")
			}
		})
	}
}

// waitDrained waits until the log has written or lost every one of the
// offered records.
func waitDrained(l *flowlog.Logger, offered uint64) flowlog.Stats {
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := l.Stats()
		if st.Written+st.Lost+st.WriteErrors >= offered || time.Now().After(deadline) {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkFlowLogThroughputRatio measures decisions per second with the
// flow log of every flow on and off in alternating rounds of the same
// packets, so that both see the same machine load, and reports
// logged/unlogged: the median of the per-pair ratios. Before each
// unlogged round the log's writer has drained, so it does not run during
// the baseline. Run it with -benchtime=1x (one iteration is 2×rounds
// rounds).
func BenchmarkFlowLogThroughputRatio(b *testing.B) {
	const rounds, perRound = 7, 300000
	w := loadBenchWorkload(b)
	l, closeLog := newFlowLog(b)
	defer closeLog()
	off := newTestReader(nopSender{}, nil)
	off.cfg.Decider = w.engine
	on := newTestReader(nopSender{}, l)
	on.cfg.Decider = w.engine
	// Wall-clock decisions/s include the time the verdict thread waited
	// for a core (the log's writer is a second busy thread on a shared
	// two-core machine); decisions per second of the verdict thread's own
	// CPU time do not, and are what the verdict path sustains with a core
	// of its own.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	run := func(r *Reader) (wall, cpu float64) {
		start, c0 := time.Now(), threadCPU()
		for i := range perRound {
			r.handle(w.attrs[i%len(w.attrs)])
		}
		c1 := threadCPU()
		return perRound / time.Since(start).Seconds(), perRound / (float64(c1-c0) / 1e9)
	}
	// Warm the cache and the log's file.
	run(off)
	run(on)
	offered := uint64(perRound)
	waitDrained(l, offered)
	var ratios, cpuRatios, offRates, onRates, offCPU, onCPU []float64
	for b.Loop() {
		for range rounds {
			o, oc := run(off)
			n, nc := run(on)
			offered += perRound
			waitDrained(l, offered)
			ratios, cpuRatios = append(ratios, n/o), append(cpuRatios, nc/oc)
			offRates, onRates = append(offRates, o), append(onRates, n)
			offCPU, onCPU = append(offCPU, oc), append(onCPU, nc)
		}
	}
	st := l.Stats()
	ratio := median(ratios)
	b.ReportMetric(ratio, "logged/unlogged")
	b.ReportMetric(median(cpuRatios), "cpu-logged/unlogged")
	b.ReportMetric(median(offRates), "unlogged-decisions/s")
	b.ReportMetric(median(onRates), "logged-decisions/s")
	b.ReportMetric(float64(st.Written)/float64(st.Written+st.Lost), "written-fraction")
	b.Logf("GOMAXPROCS=%d; %d rounds of %d decisions each way (medians): unlogged %.0f/s wall, %.0f/s of verdict-thread CPU; logged %.0f/s wall, %.0f/s of verdict-thread CPU; flow log written %d, lost %d",
		runtime.GOMAXPROCS(0), len(ratios), perRound, median(offRates), median(offCPU), median(onRates), median(onCPU), st.Written, st.Lost)
	b.Logf("ratio decisions_logged_vs_unlogged=%.2fx (wall clock), %.2fx (verdict-thread CPU)", ratio, median(cpuRatios))
}

// threadCPU is the calling thread's CPU time in nanoseconds.
func threadCPU() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
