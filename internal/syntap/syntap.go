// Package syntap times how long a node (a network namespace that routes)
// holds a TCP SYN: packet sockets on the link a SYN arrives on and the link
// it leaves by, kernel time stamps on both, paired by source port. The
// dataplane benchmark (bench/dataplane) and the real-node measurement
// (realcluster) use it.
package syntap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// Tap watches the node forward connection openings: a packet socket on
// the client's link sees each SYN come in, one on the server's link sees
// it go out, and the kernel stamps both. The difference is the time the
// node held the SYN: routing and the filter hook, and with a queue rule
// the wait in the queue, the reader's wake-up, its verdict and the
// reinjection. That is the queue-to-verdict latency measured on the wire,
// whatever the reader reports about itself. Only the sequential phases
// run it: a packet socket costs every packet of its link a look.
type Tap struct {
	in, out *tapSide
	wg      sync.WaitGroup
	stop    atomic.Bool
}

// tapSide is one link's socket and the first time it saw each source
// port's SYN.
type tapSide struct {
	fd       int
	ifindex  int
	outgoing bool // count packets leaving (server link) or arriving (client link)
	seen     map[uint16]time.Time
	err      error
}

// synFilter selects what the tap times: TCP SYNs without ACK to dst.
type synFilter struct {
	dst netip.AddrPort
}

// Open opens a tap in ns on links inIf (where SYNs arrive) and outIf
// (where they leave), timing the SYNs (without ACK) of IPv4 TCP
// connections to dst, and starts reading. It waits until the kernel's
// time stamps can be trusted (see KeepStamping).
func Open(ns *netns.NS, inIf, outIf string, dst netip.AddrPort) (*Tap, error) {
	f := synFilter{dst: dst}
	t := &Tap{}
	var err error
	if err = ns.Do(func() error {
		if t.in, err = openTapSide(inIf, false); err != nil {
			return err
		}
		if t.out, err = openTapSide(outIf, true); err != nil {
			unix.Close(t.in.fd)
			return err
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("SYN tap in %s: %w", ns.Name, err)
	}
	for _, s := range []*tapSide{t.in, t.out} {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			s.err = s.read(&t.stop, f)
		}()
	}
	time.Sleep(tapSettle)
	return t, nil
}

func openTapSide(ifName string, outgoing bool) (*tapSide, error) {
	ifi, err := net.InterfaceByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", ifName, err)
	}
	// Protocol 0 receives nothing until bind, which comes after the
	// filter: no packet of another link or another kind slips in first.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	tv := unix.Timeval{Usec: 100_000} // how often the reader looks at stop
	for _, o := range []struct {
		name string
		set  func() error
	}{
		{"SO_TIMESTAMPNS", func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) }},
		{"SO_RCVBUF", func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20) }},
		{"SO_RCVTIMEO", func() error { return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) }},
		{"SO_ATTACH_FILTER", func() error {
			return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(synOnly)), Filter: &synOnly[0]})
		}},
		// Outgoing packets reach ETH_P_ALL sockets only.
		{"bind", func() error {
			return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
		}},
	} {
		if err := o.set(); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("packet socket on %s: %s: %w", ifName, o.name, err)
		}
	}
	return &tapSide{fd: fd, ifindex: ifi.Index, outgoing: outgoing, seen: map[uint16]time.Time{}}, nil
}

// synOnly is a classic BPF program passing IPv4 TCP segments with SYN set
// and ACK clear, the only packets the tap times: a SYN per connection
// instead of every packet, so the socket's buffer does not overflow while
// its reader waits for a CPU. synSourcePort checks the rest.
var synOnly = []unix.SockFilter{
	{Code: 0x28, K: 12},                  // ldh [12]: ethertype
	{Code: 0x15, Jt: 0, Jf: 7, K: 0x800}, // jeq IPv4
	{Code: 0x30, K: 23},                  // ldb [23]: IP protocol
	{Code: 0x15, Jt: 0, Jf: 5, K: 6},     // jeq TCP
	{Code: 0xb1, K: 14},                  // ldxb 4*([14]&0xf): IP header length
	{Code: 0x50, K: 14 + 13},             // ldb [x+27]: TCP flags
	{Code: 0x54, K: 0x12},                // and SYN|ACK
	{Code: 0x15, Jt: 0, Jf: 1, K: 0x02},  // jeq SYN alone
	{Code: 0x06, K: 0xffff},              // ret: keep
	{Code: 0x06, K: 0},                   // ret: drop
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (s *tapSide) read(stop *atomic.Bool, f synFilter) error {
	defer unix.Close(s.fd)
	buf := make([]byte, 256)
	oob := make([]byte, 128)
	for !stop.Load() {
		n, oobn, _, from, err := unix.Recvmsg(s.fd, buf, oob, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Ifindex != s.ifindex || (ll.Pkttype == unix.PACKET_OUTGOING) != s.outgoing {
			continue
		}
		port, ok := synSourcePort(buf[:n], f)
		if !ok {
			continue
		}
		ts, err := kernelStamp(oob[:oobn])
		if err != nil {
			return err
		}
		if _, dup := s.seen[port]; !dup { // a retransmission keeps the first
			s.seen[port] = ts
		}
	}
	return nil
}

// synSourcePort returns the source port of frame when it is an Ethernet
// frame carrying an IPv4 TCP SYN (without ACK) to f.dst.
func synSourcePort(frame []byte, f synFilter) (uint16, bool) {
	const eth = 14
	if len(frame) < eth+20 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 {
		return 0, false
	}
	ip := frame[eth:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+14 {
		return 0, false
	}
	if netip.AddrFrom4([4]byte(ip[16:20])) != f.dst.Addr() {
		return 0, false
	}
	tcp := ip[ihl:]
	if binary.BigEndian.Uint16(tcp[2:4]) != f.dst.Port() {
		return 0, false
	}
	const syn, ack = 0x02, 0x10
	if tcp[13]&(syn|ack) != syn {
		return 0, false
	}
	return binary.BigEndian.Uint16(tcp[0:2]), true
}

// kernelStamp reads the SCM_TIMESTAMPNS control message.
func kernelStamp(oob []byte) (time.Time, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, fmt.Errorf("packet socket control message: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec), nil
		}
	}
	return time.Time{}, errors.New("packet socket: no kernel timestamp on a packet")
}

// tapSettle is how long a new tap waits before traffic: the kernel
// turns receive time stamps on for the whole stack lazily (a static key
// flipped from a work queue), and a SYN that arrives before that is
// stamped only when the tap reads it, possibly after it has left. See
// also KeepStamping.
const tapSettle = 20 * time.Millisecond

// KeepStamping holds a socket that asks for receive time stamps, so that
// the kernel keeps stamping every packet from now until the returned
// function is called: taps opened and closed round after round would
// otherwise switch stamping off and on, and on a loaded machine the
// deferred switch-on lags the next tap by tens of milliseconds (up to a
// tenth of a round's SYNs came out stamped late).
func KeepStamping() (func(), error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("time stamp socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("time stamp socket: %w", err)
	}
	time.Sleep(200 * time.Millisecond)
	return func() { unix.Close(fd) }, nil
}

// Close stops the tap and returns, per SYN seen on both links, how long
// the node held it, how many SYNs were seen on one link only (dropped by
// the node, or missed by the tap), and how many were dropped from the
// figures for leaving before they arrived (see matchSYNs).
func (t *Tap) Close() (held []time.Duration, unmatched, inverted int, err error) {
	t.stop.Store(true)
	t.wg.Wait()
	if err := errors.Join(t.in.err, t.out.err); err != nil {
		return nil, 0, 0, err
	}
	return matchSYNs(t.in.seen, t.out.seen)
}

// matchSYNs pairs arrivals with departures by source port. A departure
// before its arrival is a SYN whose arrival was stamped late (by the
// tap's read rather than by the stack): it is left out and counted, and
// the report prints the count. More than half means the clocks or the
// pairing are wrong: an error.
func matchSYNs(in, out map[uint16]time.Time) (held []time.Duration, unmatched, inverted int, err error) {
	for port := range out {
		if _, ok := in[port]; !ok {
			unmatched++
		}
	}
	var worst time.Duration
	for port, t0 := range in {
		t1, ok := out[port]
		if !ok {
			unmatched++
			continue
		}
		d := t1.Sub(t0)
		if d < 0 {
			inverted++
			worst = min(worst, d)
			continue
		}
		held = append(held, d)
	}
	if inverted > len(held) {
		return nil, 0, 0, fmt.Errorf("%d of %d SYNs left the node before they arrived (up to %v): the tap's time stamps are wrong", inverted, len(held)+inverted, -worst)
	}
	return held, unmatched, inverted, nil
}
