package dataplane_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/dataplane/internal/nstest"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Addresses of the test topology (nstest.Routed).
var (
	podA4, podB4 = netip.MustParseAddr("10.99.1.2"), netip.MustParseAddr("10.99.2.2")
	podA6, podB6 = netip.MustParseAddr("fd99:1::2"), netip.MustParseAddr("fd99:2::2")
)

const (
	portAllowed  = 8080 // the test decider allows TCP to this port
	portAllowed2 = 8082
	portDenied   = 8081 // and denies everything else
	portBaseline = 7    // connectivity check before the rules
	queueBase    = 100
)

// portDecider is the policy of these tests: TCP to the allowed ports, and
// nothing else. The dataplane is what is under test; the real engine is
// exercised by the agent's tests.
type portDecider struct{ calls atomic.Int64 }

func (d *portDecider) Decide(f filter.Flow) filter.Verdict {
	d.calls.Add(1)
	allow := f.Proto == filter.ProtoTCP && (f.DstPort == portAllowed || f.DstPort == portAllowed2)
	dec := filter.DeniedIsolated
	if allow {
		dec = filter.AllowedByRule
	}
	return filter.Verdict{Allow: allow, Ingress: filter.Side{Decision: dec, Pod: -1, Policy: -1, Rule: -1, Peer: -1}}
}

type topo struct {
	node, a, b *nstest.Namespace
	tables     *iptables.Tables
	nodeFD     int
	decider    *portDecider
}

func setup(t *testing.T) *topo { return setupWith(t, iptables.Auto) }

func setupWith(t *testing.T, b iptables.Backend) *topo {
	nstest.Require(t, iptables.Tools(b)...)
	nstest.Sweep(t)
	r := nstest.NewRouted(t)
	if r.A4 != podA4 || r.B4 != podB4 || r.A6 != podA6 || r.B6 != podB6 {
		t.Fatal("topology addresses changed")
	}
	f, err := os.Open(r.Node.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	tp := &topo{node: r.Node, a: r.A, b: r.B, nodeFD: int(f.Fd()), decider: &portDecider{},
		tables: iptables.New(iptables.Exec{Prefix: r.Node.Prefix()}, b)}
	// Baseline: the topology routes both families before any rule of
	// ours exists, so a failure later is the dataplane's.
	for _, addr := range []netip.Addr{podB4, podB6} {
		tp.b.ServeEcho(t, addr, portBaseline)
		c, err := tp.dial(addr, portBaseline, 2*time.Second)
		if err != nil {
			t.Fatalf("topology broken before any rule was installed: a -> %s: %v\n%s", addr, err, tp.diagnose())
		}
		c.Close()
	}
	return tp
}

// diagnose collects the node's view for a failure message.
func (tp *topo) diagnose() string {
	var b strings.Builder
	for _, args := range [][]string{
		{"iptables-save", "-c"}, {"ip6tables-save", "-c"}, {"ipset", "list"}, {"ip", "neigh"}, {"ip", "-s", "link"},
		{"conntrack", "-L"}, {"cat", dataplane.ProcQueuePath}, {"sysctl", "net.ipv4.ip_forward"},
	} {
		out, err := tp.node.Try(args...)
		fmt.Fprintf(&b, "[node] %s: %v\n%s\n", strings.Join(args, " "), err, out)
	}
	for _, ns := range []*nstest.Namespace{tp.a, tp.b} {
		for _, args := range [][]string{{"ip", "neigh"}, {"ip", "route"}, {"ss", "-tan"}, {"ip", "-s", "link"}, {"ip", "addr"}, {"nstat", "-asz"}} {
			out, err := ns.Try(args...)
			fmt.Fprintf(&b, "[%s] %s: %v\n%s\n", ns.Name, strings.Join(args, " "), err, out)
		}
	}
	return b.String()
}

func (tp *topo) install(t *testing.T, c iptables.Config) {
	t.Helper()
	ctx := context.Background()
	if err := tp.tables.Install(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := tp.tables.SyncSets(ctx, []netip.Addr{podA4, podB4, podA6, podB6}); err != nil {
		t.Fatal(err)
	}
}

func (tp *topo) readers(t *testing.T, c iptables.Config) []*dataplane.Reader {
	return tp.readersWith(t, c, nil, 0)
}

func (tp *topo) readersWith(t *testing.T, c iptables.Config, obs dataplane.Observer, readBuffer int) []*dataplane.Reader {
	t.Helper()
	var rs []*dataplane.Reader
	for q := range c.Queues {
		r, err := dataplane.Open(context.Background(), dataplane.ReaderConfig{
			Queue:     c.QueueBase + q,
			FailOpen:  c.FailOpen,
			AllowMark: c.Marks.Allow, DenyMark: c.Marks.Deny, MarkMask: c.Marks.Mask,
			NetNS:      tp.nodeFD,
			Decider:    tp.decider,
			NewDecoder: func() dataplane.Decoder { return filter.NewDecoder() },
			Observer:   obs,
			ReadBuffer: readBuffer,
			Log:        zerolog.New(io.Discard),
		})
		if err != nil {
			t.Fatalf("open reader %d: %v", c.QueueBase+q, err)
		}
		rs = append(rs, r)
	}
	t.Cleanup(func() {
		for _, r := range rs {
			r.Close()
		}
	})
	return rs
}

func sum(rs []*dataplane.Reader) dataplane.CounterValues {
	var v dataplane.CounterValues
	for _, r := range rs {
		v = v.Add(r.Counters().Values())
	}
	return v
}

// queued is how many packets the node's queues have carried (per netns).
func (tp *topo) queued(t *testing.T) uint64 {
	t.Helper()
	st, err := dataplane.ParseQueueStats(strings.NewReader(tp.node.Run("cat", dataplane.ProcQueuePath)))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, s := range st {
		n += uint64(s.IDSequence)
	}
	return n
}

func (tp *topo) serve(t *testing.T, _ string, addr netip.Addr, port int) {
	tp.b.ServeEcho(t, addr, uint16(port))
}

func (tp *topo) dial(addr netip.Addr, port int, timeout time.Duration) (net.Conn, error) {
	return tp.a.Dial(addr, uint16(port), timeout)
}

var echo = nstest.Echo

var baseConfig = iptables.Config{Marks: iptables.DefaultMarks, QueueBase: queueBase, Queues: 2, Deny: iptables.Drop}

// TestVerdictsAndFastPath: allowed connections work both families, denied
// ones time out (drop) or are refused at once (reject), and after the first
// packet an allowed connection never reaches the queue again.
func TestVerdictsAndFastPath(t *testing.T) {
	for _, b := range []iptables.Backend{iptables.Auto, iptables.Legacy} {
		t.Run("backend="+map[iptables.Backend]string{iptables.Auto: "auto", iptables.Legacy: "legacy"}[b], func(t *testing.T) {
			testVerdictsAndFastPath(t, b)
		})
	}
}

func testVerdictsAndFastPath(t *testing.T, b iptables.Backend) {
	tp := setupWith(t, b)
	tp.install(t, baseConfig)
	rs := tp.readers(t, baseConfig)
	for _, addr := range []netip.Addr{podB4, podB6} {
		tp.serve(t, "tcp", addr, portAllowed)
		tp.serve(t, "tcp", addr, portDenied)
	}

	for _, addr := range []netip.Addr{podB4, podB6} {
		t.Run("allow "+addr.String(), func(t *testing.T) {
			before := tp.queued(t)
			c, err := tp.dial(addr, portAllowed, 2*time.Second)
			if err != nil {
				t.Fatalf("allowed connect failed: %v\n%s", err, tp.diagnose())
			}
			defer c.Close()
			for i := range 100 {
				if err := echo(c, "ping "+strconv.Itoa(i)); err != nil {
					t.Fatalf("round trip %d: %v", i, err)
				}
			}
			delta := tp.queued(t) - before
			t.Logf("%s: connect + 100 round trips: %d packet(s) queued", addr, delta)
			if delta != 1 {
				t.Errorf("queued %d packets for one connection, want exactly 1 (the SYN): fast path broken", delta)
			}
			ct := tp.node.Run("conntrack", "-L", "-p", "tcp", "--dport", strconv.Itoa(portAllowed), "-f", map[bool]string{true: "ipv4", false: "ipv6"}[addr.Is4()])
			if !strings.Contains(ct, "mark=65536") {
				t.Errorf("conntrack entry lacks the allow connmark 0x10000:\n%s", ct)
			}
		})
		t.Run("drop "+addr.String(), func(t *testing.T) {
			before, queuedBefore := sum(rs).Denied, tp.queued(t)
			start := time.Now()
			// 1.5s: long enough for the first SYN retransmission (1s).
			c, err := tp.dial(addr, portDenied, 1500*time.Millisecond)
			if err == nil {
				c.Close()
				t.Fatal("denied connect succeeded")
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("denied connect with drop: %v, want a timeout", err)
			}
			t.Logf("drop: connect failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			denied, requeued := sum(rs).Denied-before, tp.queued(t)-queuedBefore
			t.Logf("drop: %d SYNs queued and denied", requeued)
			if denied < 2 || requeued != denied {
				t.Errorf("SYN and its retransmission: %d queued, %d denied; want each SYN queued and denied (>= 2)", requeued, denied)
			}
			// Why the deny is not saved in the connmark: a dropped first
			// packet leaves no conntrack entry to carry it.
			fam := map[bool]string{true: "ipv4", false: "ipv6"}[addr.Is4()]
			if ct, _ := tp.node.Try("conntrack", "-L", "-f", fam, "-p", "tcp", "--dport", strconv.Itoa(portDenied)); strings.Contains(ct, "dport=") {
				t.Errorf("a denied flow left a conntrack entry:\n%s", ct)
			}
		})
	}

	// Pod to the node itself goes through INPUT: policed too.
	gw := netip.MustParseAddr("10.99.1.1")
	tp.node.ServeEcho(t, gw, portAllowed)
	tp.node.ServeEcho(t, gw, portDenied)
	t.Run("pod to node", func(t *testing.T) {
		before := tp.queued(t)
		c, err := tp.dial(gw, portAllowed, 2*time.Second)
		if err != nil {
			t.Fatalf("a -> node:%d (allowed): %v", portAllowed, err)
		}
		if err := echo(c, "to the node"); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if c, err := tp.dial(gw, portDenied, 500*time.Millisecond); err == nil {
			c.Close()
			t.Fatalf("a -> node:%d (denied) succeeded", portDenied)
		}
		if d := tp.queued(t) - before; d != 2 {
			t.Errorf("pod -> node: %d packets queued, want 2 (one allowed SYN, one denied)", d)
		}
	})

	rejecting := baseConfig
	rejecting.Deny = iptables.Reject
	tp.install(t, rejecting)
	for _, addr := range []netip.Addr{podB4, podB6} {
		t.Run("reject "+addr.String(), func(t *testing.T) {
			start := time.Now()
			c, err := tp.dial(addr, portDenied, 3*time.Second)
			took := time.Since(start)
			if err == nil {
				c.Close()
				t.Fatal("denied connect succeeded")
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("denied connect with reject: %v, want ECONNREFUSED", err)
			}
			t.Logf("reject: refused after %v", took.Round(time.Microsecond))
			if took > 500*time.Millisecond {
				t.Errorf("reject took %v, want well under the drop timeout", took)
			}
		})
	}
	t.Logf("counters: %+v", sum(rs))
	if v := sum(rs); v.Malformed != 0 || v.VerdictErrors != 0 || v.RecvErrors != 0 || v.Requeued != 0 {
		t.Errorf("unexpected error counters: %+v", v)
	}
}

// TestRestart: with the readers gone an established connection keeps
// flowing (its connmark is accepted in the kernel), new connections fail
// closed (or pass with fail-open), and new readers pick up again.
func TestRestart(t *testing.T) {
	tp := setup(t)
	tp.install(t, baseConfig)
	tp.serve(t, "tcp", podB4, portAllowed)
	tp.serve(t, "tcp", podB4, portAllowed2)
	tp.serve(t, "tcp", podB6, portAllowed)

	rs := tp.readers(t, baseConfig)
	c6, err := tp.dial(podB6, portAllowed, 2*time.Second)
	if err != nil {
		t.Fatalf("allowed IPv6 connect: %v", err)
	}
	defer c6.Close()
	c, err := tp.dial(podB4, portAllowed, 2*time.Second)
	if err != nil {
		t.Fatalf("allowed connect: %v", err)
	}
	defer c.Close()
	if err := echo(c, "before"); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := r.Close(); err != nil {
			t.Fatalf("close reader: %v", err)
		}
	}
	if n := len(strings.TrimSpace(tp.node.Run("cat", dataplane.ProcQueuePath))); n != 0 {
		t.Fatalf("queues still bound after Close")
	}
	for i := range 20 {
		if err := echo(c, "agent down "+strconv.Itoa(i)); err != nil {
			t.Fatalf("established connection broke while the agent was down: %v", err)
		}
	}
	t.Log("established connection: 20 round trips with no agent")
	// Neighbour discovery must work with no agent: forget every neighbour
	// and the IPv6 connection must still find its way.
	for _, ns := range []*nstest.Namespace{tp.node, tp.a, tp.b} {
		ns.Run("ip", "-6", "neigh", "flush", "all", "nud", "all") // the topology's static entries too
	}
	if err := echo(c6, "after neighbour flush"); err != nil {
		t.Fatalf("IPv6 connection broke after a neighbour flush with no agent: %v", err)
	}
	nd := 0
	for _, line := range strings.Split(tp.node.Run("ip6tables", "-L", iptables.ChainInput, "-v", "-x", "-n"), "\n") {
		if f := strings.Fields(line); strings.Contains(line, "RETURN") && len(f) > 0 && f[0] != "0" {
			nd++
		}
	}
	t.Logf("IPv6 connection survived a neighbour flush with no agent; %d ICMPv6 ND RETURN rules in %s matched packets", nd, iptables.ChainInput)
	if c2, err := tp.dial(podB4, portAllowed2, time.Second); err == nil {
		c2.Close()
		t.Fatal("new connection succeeded with no agent and no fail-open")
	} else {
		t.Logf("new connection with no agent (fail-closed): %v", err)
	}

	rs = tp.readers(t, baseConfig)
	tp.install(t, baseConfig) // what a restarted agent does
	if err := echo(c, "after restart"); err != nil {
		t.Fatalf("established connection broke across restart: %v", err)
	}
	c3, err := tp.dial(podB4, portAllowed2, 2*time.Second)
	if err != nil {
		t.Fatalf("new connection after restart: %v", err)
	}
	c3.Close()
	for _, r := range rs {
		r.Close()
	}

	open := baseConfig
	open.FailOpen = true
	tp.install(t, open)
	c4, err := tp.dial(podB4, portAllowed2, 2*time.Second)
	if err != nil {
		t.Fatalf("fail-open: new connection with no agent failed: %v", err)
	}
	c4.Close()
	t.Log("fail-open: new connection with no agent passed")
}

// TestMalformed sends raw packets the decoder cannot read: they are denied
// (counted, dropped by the deny rule) and the reader lives on.
func TestMalformed(t *testing.T) {
	tp := setup(t)
	tp.install(t, baseConfig)
	rs := tp.readers(t, baseConfig)
	tp.serve(t, "tcp", podB4, portAllowed)

	// IPv6 SYN to an allowed port behind a 128-byte destination options
	// header: conntrack tracks it as NEW, but the 128-byte copy range ends
	// inside the extension header, so the decoder cannot find the ports.
	before := tp.queued(t)
	deny6Before := denyCount(t, tp, "ip6tables")
	pkt6 := synBehindDestOpts(t, podA6, podB6, portAllowed)
	if err := tp.a.Do(func() error { return sendRaw(unix.AF_INET6, podB6, pkt6) }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return sum(rs).Malformed >= 1 }, "malformed counter")
	if d := tp.queued(t) - before; d != 1 {
		t.Errorf("queued %d packets, want 1", d)
	}
	if got := denyCount(t, tp, "ip6tables") - deny6Before; got != 1 {
		t.Errorf("ip6tables NFQPOLICY-DENY counted %d packets, want 1", got)
	}
	t.Logf("IPv6 SYN behind 128-byte dest options: queued, malformed, denied; counters %+v", sum(rs))

	// IPv4 SYN whose TCP header is cut short (10 of 20 bytes): conntrack
	// calls it INVALID, not NEW, so it never reaches the queue.
	before = tp.queued(t)
	pkt4 := truncatedTCP4(podA4, podB4, portAllowed)
	if err := tp.a.Do(func() error { return sendRaw(unix.AF_INET, podB4, pkt4) }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	t.Logf("IPv4 truncated TCP header: %d packet(s) queued (conntrack state INVALID is not NEW)", tp.queued(t)-before)
	if d := tp.queued(t) - before; d != 0 {
		t.Errorf("truncated IPv4 TCP was queued %d times; expected conntrack to mark it INVALID", d)
	}

	// The reader is alive and still decides.
	c, err := tp.dial(podB4, portAllowed, 2*time.Second)
	if err != nil {
		t.Fatalf("connect after malformed packets: %v", err)
	}
	c.Close()
	if v := sum(rs); v.RecvErrors != 0 || v.VerdictErrors != 0 {
		t.Errorf("error counters: %+v", v)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// denyCount is the packet counter of the first rule in NFQPOLICY-DENY.
func denyCount(t *testing.T, tp *topo, bin string) uint64 {
	t.Helper()
	out := tp.node.Run(bin, "-L", iptables.ChainDeny, "-v", "-x", "-n")
	var total uint64
	for _, line := range strings.Split(out, "\n")[2:] {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		total += n
	}
	return total
}

func sendRaw(family int, dst netip.Addr, pkt []byte) error {
	fd, err := unix.Socket(family, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	var sa unix.Sockaddr
	if dst.Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
		return fmt.Errorf("sendto %s: %w", dst, err)
	}
	return nil
}

func synBehindDestOpts(t *testing.T, src, dst netip.Addr, port uint16) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(port), Seq: 1, SYN: true, Window: 65535}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, tcp); err != nil {
		t.Fatal(err)
	}
	seg := buf.Bytes()
	// Destination options: next header TCP, length 15 (=128 bytes), one
	// PadN option filling the rest.
	opts := make([]byte, 128)
	opts[0], opts[1], opts[2], opts[3] = byte(layers.IPProtocolTCP), 15, 1, 124
	hdr := make([]byte, 40)
	hdr[0] = 6 << 4
	binary.BigEndian.PutUint16(hdr[4:], uint16(len(opts)+len(seg)))
	hdr[6], hdr[7] = byte(layers.IPProtocolIPv6Destination), 64
	copy(hdr[8:24], src.AsSlice())
	copy(hdr[24:40], dst.AsSlice())
	return append(append(hdr, opts...), seg...)
}

func truncatedTCP4(src, dst netip.Addr, port uint16) []byte {
	hdr := make([]byte, 20)
	hdr[0], hdr[8], hdr[9] = 0x45, 64, byte(layers.IPProtocolTCP)
	binary.BigEndian.PutUint16(hdr[2:], 30)
	copy(hdr[12:16], src.AsSlice())
	copy(hdr[16:20], dst.AsSlice())
	tcp := make([]byte, 10)
	binary.BigEndian.PutUint16(tcp[0:], 40001)
	binary.BigEndian.PutUint16(tcp[2:], port)
	return append(hdr, tcp...)
}

// stall is an observer that blocks its reader once, long enough for the
// kernel to overflow the reader's socket.
type stall struct{ done atomic.Bool }

func (s *stall) OnVerdict(filter.Flow, filter.Verdict, []byte, time.Time, time.Duration) {
	if s.done.CompareAndSwap(false, true) {
		time.Sleep(300 * time.Millisecond)
	}
}

// TestOverflow floods new UDP flows at readers with a tiny socket buffer
// while one of them stalls: the kernel reports ENOBUFS, the readers count
// it and carry on, and the flows were spread over both queues.
func TestOverflow(t *testing.T) {
	tp := setup(t)
	tp.install(t, baseConfig)
	rs := tp.readersWith(t, baseConfig, &stall{}, 1) // the kernel rounds 1 up to its minimum
	tp.serve(t, "tcp", podB4, portAllowed)

	// --queue-balance hashes the addresses only (not the ports: both
	// directions of a flow must meet in one queue), so the flood comes
	// from 16 source addresses to give both queues a share.
	const sources, flows = 16, 640
	var conns []*net.UDPConn
	for i := range sources {
		src := netip.AddrFrom4([4]byte{10, 99, 1, byte(10 + i)})
		tp.a.Run("ip", "addr", "add", src.String()+"/32", "dev", "eth0")
		if err := tp.a.Do(func() error {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: src.AsSlice()})
			conns = append(conns, c)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}
	for i := range flows {
		if _, err := conns[i%sources].WriteToUDP([]byte("x"), &net.UDPAddr{IP: podB4.AsSlice(), Port: 20000 + i}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	waitFor(t, func() bool { return sum(rs).NoBufs > 0 }, "an ENOBUFS report")
	time.Sleep(500 * time.Millisecond) // let the stalled reader drain
	st, err := dataplane.ParseQueueStats(strings.NewReader(tp.node.Run("cat", dataplane.ProcQueuePath)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %d new flows: readers %+v; kernel %+v", flows, sum(rs), st)
	if len(st) != 2 {
		t.Fatalf("kernel shows %d bound queues, want 2", len(st))
	}
	var userDropped uint32
	for _, q := range st {
		if q.IDSequence == 0 {
			t.Errorf("queue %d carried no packet: --queue-balance did not spread the flows", q.Queue)
		}
		if q.Waiting != 0 {
			t.Errorf("queue %d still holds %d packets without a verdict", q.Queue, q.Waiting)
		}
		userDropped += q.UserDropped
	}
	if userDropped == 0 {
		t.Error("the kernel dropped nothing for a full socket, yet ENOBUFS was reported")
	}
	if v := sum(rs); v.Denied == 0 || v.Denied+uint64(userDropped) > flows {
		t.Errorf("denied %d + kernel-dropped %d does not fit %d flows", v.Denied, userDropped, flows)
	}
	c, err := tp.dial(podB4, portAllowed, 2*time.Second)
	if err != nil {
		t.Fatalf("allowed connect after the overflow: %v", err)
	}
	c.Close()
}

// TestQueueTaken: a second reader on a bound queue (say, two agents during
// a rollout) fails with an error that says why, and the first keeps
// working.
func TestQueueTaken(t *testing.T) {
	tp := setup(t)
	c := baseConfig
	c.Queues = 1
	tp.install(t, c)
	tp.readers(t, c)
	_, err := dataplane.Open(context.Background(), dataplane.ReaderConfig{
		Queue: c.QueueBase, AllowMark: c.Marks.Allow, DenyMark: c.Marks.Deny, MarkMask: c.Marks.Mask,
		NetNS: tp.nodeFD, Decider: tp.decider, NewDecoder: func() dataplane.Decoder { return filter.NewDecoder() },
		Log: zerolog.New(io.Discard),
	})
	if err == nil || !strings.Contains(err.Error(), "another process is bound to this queue") {
		t.Fatalf("second reader on queue %d: %v, want a clear EBUSY error", c.QueueBase, err)
	}
	t.Logf("second reader: %v", err)
	tp.serve(t, "tcp", podB4, portAllowed)
	conn, err := tp.dial(podB4, portAllowed, 2*time.Second)
	if err != nil {
		t.Fatalf("first reader stopped working: %v", err)
	}
	conn.Close()
}

// TestForeignMarkSurvives: a packet carrying kube-proxy's masquerade bit
// (0x4000, set before FORWARD) still carries it after our verdict and
// the NF_REPEAT round (or SNAT would break), and leaves without our bits.
func TestForeignMarkSurvives(t *testing.T) {
	tp := setup(t)
	tp.install(t, baseConfig)
	tp.readers(t, baseConfig)
	tp.serve(t, "tcp", podB4, portAllowed)
	// What kube-proxy's KUBE-MARK-MASQ does for service traffic.
	tp.node.Run("iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", strconv.Itoa(portAllowed), "-j", "MARK", "--set-xmark", "0x4000/0x4000")
	// Counting rules (no target) at the last hook the packet passes on the
	// node: marked as it should be, and any at all.
	syn := []string{"-p", "tcp", "--dport", strconv.Itoa(portAllowed), "--tcp-flags", "SYN,ACK", "SYN"}
	tp.node.Run(append(append([]string{"iptables", "-t", "mangle", "-A", "POSTROUTING"}, syn...), "-m", "mark", "--mark", "0x4000/0x34000")...)
	tp.node.Run(append([]string{"iptables", "-t", "mangle", "-A", "POSTROUTING"}, syn...)...)

	before := tp.queued(t)
	c, err := tp.dial(podB4, portAllowed, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d := tp.queued(t) - before; d != 1 {
		t.Fatalf("%d packets queued, want the SYN", d)
	}
	out := tp.node.Run("iptables", "-t", "mangle", "-L", "POSTROUTING", "-v", "-x", "-n")
	var counts []string
	for _, line := range strings.Split(out, "\n")[2:] {
		if f := strings.Fields(line); len(f) > 0 {
			counts = append(counts, f[0])
		}
	}
	t.Logf("SYNs leaving with mark 0x4000 and none of 0x30000: %s of %s", counts[0], counts[1])
	if len(counts) != 2 || counts[0] != "1" || counts[1] != "1" {
		t.Errorf("mangle POSTROUTING counters %v, want [1 1] (the SYN, with 0x4000 kept and our bits cleared):\n%s", counts, out)
	}
}
