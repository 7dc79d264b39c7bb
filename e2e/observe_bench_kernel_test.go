package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// BenchmarkObserveKernelFlowLog measures the agent's decisions per second
// on the kernel path with the flow log off and with a flow log of every
// flow (--flow-log FILE --flow-log-select all --flow-log-rate 0), in
// alternating rounds on one topology. A raw socket in y/c's namespace
// sends TCP SYNs to x/a:80 (denied by x/deny-all, so nothing travels past
// the node) from ever-changing source ports: every SYN is a new conntrack
// entry, queued and decided, as fast as the agent takes them. The rate is
// the agent's own verdict counter over a window of steady flooding.
//
//	sudo go test ./e2e -run '^$' -bench ObserveKernelFlowLog -benchtime=1x
func BenchmarkObserveKernelFlowLog(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("SKIP KERNEL BENCHMARK: needs root to create network namespaces")
	}
	for _, tool := range []string{"ip", "iptables", "ipset"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("SKIP KERNEL BENCHMARK: %s not in PATH", tool)
		}
	}
	bin, err := BuildAgent(context.Background(), "", b.TempDir())
	if err != nil {
		b.Skipf("SKIP KERNEL BENCHMARK: the agent does not build: %v", err)
	}
	const pairs, window = 5, 2 * time.Second
	var off, on []string
	c := startObserveCluster(b, bin, "bench", func(dir string) []string {
		off = []string{"--debug-socket", filepath.Join(dir, "debug.sock")}
		on = append(append([]string(nil), off...), "--flow-log", filepath.Join(dir, "flows.jsonl"),
			"--flow-log-select", "all", "--flow-log-rate", "0")
		return off
	})
	src, dst := c.endpoint("y/c"), c.endpoint("x/a")
	measure := func(args []string) (rate, cpuPerDecision float64, logged string) {
		if err := c.agents.stop(); err != nil {
			b.Fatal(err)
		}
		if c.agents, err = startAgents(context.Background(), bin, args, c.top, c.p, zerolog.Nop()); err != nil {
			b.Fatal(err)
		}
		var stop atomic.Bool
		done := make(chan error, 1)
		go func() { done <- floodSYN(c.top.nsOf(src.place), src.addr, dst.addr, 80, &stop) }()
		time.Sleep(300 * time.Millisecond) // past the start, into the steady state
		m0 := c.metrics()
		t0 := time.Now()
		time.Sleep(window)
		m1 := c.metrics()
		elapsed := time.Since(t0)
		stop.Store(true)
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		decided := func(m map[string]float64) float64 {
			return m[`nfqpolicy_verdicts_total{mode="enforce",verdict="allow"}`] + m[`nfqpolicy_verdicts_total{mode="enforce",verdict="deny"}`]
		}
		w := m1[`nfqpolicy_flowlog_records_total{result="written"}`] - m0[`nfqpolicy_flowlog_records_total{result="written"}`]
		l := m1[`nfqpolicy_flowlog_records_total{result="lost"}`] - m0[`nfqpolicy_flowlog_records_total{result="lost"}`]
		delta := func(k string) float64 { return m1[k] - m0[k] }
		n := decided(m1) - decided(m0)
		drops := delta(`nfqpolicy_queue_dropped_total{queue="100"}`) + delta(`nfqpolicy_queue_user_dropped_total{queue="100"}`)
		cpuPerDecision = delta("process_cpu_seconds_total") / n * 1e6
		logged = fmt.Sprintf("agent CPU %.2f µs/decision, kernel queue drops %.0f", cpuPerDecision, drops)
		if w+l > 0 {
			logged += fmt.Sprintf(", flow log written %.0f, lost %.0f", w, l)
		}
		return n / elapsed.Seconds(), cpuPerDecision, logged
	}
	var ratios, offRates, onRates, offCPU, onCPU []float64
	for b.Loop() {
		for range pairs {
			o, oc, offInfo := measure(off)
			n, nc, onInfo := measure(on)
			offCPU, onCPU = append(offCPU, oc), append(onCPU, nc)
			b.Logf("unlogged %.0f decisions/s (%s); logged %.0f decisions/s (%s)", o, offInfo, n, onInfo)
			offRates, onRates, ratios = append(offRates, o), append(onRates, n), append(ratios, n/o)
		}
	}
	ratio := median(ratios)
	b.ReportMetric(median(offRates), "unlogged-decisions/s")
	b.ReportMetric(median(onRates), "logged-decisions/s")
	b.ReportMetric(ratio, "logged/unlogged")
	b.ReportMetric(median(offCPU), "unlogged-agent-cpu-µs/decision")
	b.ReportMetric(median(onCPU), "logged-agent-cpu-µs/decision")
	b.Logf("ratio decisions_logged_vs_unlogged=%.2fx (median of %d pairs)", ratio, len(ratios))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// floodSYN sends TCP SYNs from src to dst:dport over a raw socket in ns,
// a new source port each, until stop is set. The kernel writes the IP
// header; the TCP checksum must be right or conntrack marks the packet
// invalid and it is never queued.
func floodSYN(ns *NS, src, dst netip.Addr, dport uint16, stop *atomic.Bool) error {
	var fd int
	err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	})
	if err != nil {
		return fmt.Errorf("raw TCP socket in %s: %w", ns.Name, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
		return fmt.Errorf("bind raw socket to %s: %w", src, err)
	}
	sa := &unix.SockaddrInet4{Addr: dst.As4()}
	s4, d4 := src.As4(), dst.As4()
	// The pseudo-header's sum, folded later with the segment's.
	var pseudo uint32
	for i := 0; i < 4; i += 2 {
		pseudo += uint32(binary.BigEndian.Uint16(s4[i:])) + uint32(binary.BigEndian.Uint16(d4[i:]))
	}
	pseudo += unix.IPPROTO_TCP + 20
	seg := make([]byte, 20)
	for i := uint32(0); ; i++ {
		if i%256 == 0 && stop.Load() {
			return nil
		}
		sport := uint16(1024 + i%64000)
		if sport == 80 {
			continue // y/c's own server
		}
		binary.BigEndian.PutUint16(seg[0:], sport)
		binary.BigEndian.PutUint16(seg[2:], dport)
		binary.BigEndian.PutUint32(seg[4:], i) // sequence number
		binary.BigEndian.PutUint32(seg[8:], 0)
		seg[12], seg[13] = 5<<4, 0x02 // 20-byte header, SYN
		binary.BigEndian.PutUint16(seg[14:], 65535)
		binary.BigEndian.PutUint16(seg[16:], 0)
		binary.BigEndian.PutUint16(seg[18:], 0)
		sum := pseudo
		for j := 0; j < len(seg); j += 2 {
			sum += uint32(binary.BigEndian.Uint16(seg[j:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		binary.BigEndian.PutUint16(seg[16:], ^uint16(sum))
		if err := unix.Sendto(fd, seg, 0, sa); err != nil && err != unix.ENOBUFS && err != unix.EAGAIN {
			return fmt.Errorf("send SYN: %w", err)
		}
	}
}
