package main

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
)

// synTap watches the node forward connection openings: a packet socket on
// the client's link sees each SYN come in, one on the server's link sees
// it go out, and the kernel stamps both. The difference is the time the
// node held the SYN: routing and the filter hook, and with a queue rule
// the wait in the queue, the reader's wake-up, its verdict and the
// reinjection. That is the queue-to-verdict latency measured on the wire,
// whatever the reader reports about itself. Only the sequential phases
// run it: a packet socket costs every packet of its link a look.
type synTap struct {
	in, out *tapSide
	wg      sync.WaitGroup
	stop    atomic.Bool
}

// tapSide is one link's socket and the first time it saw each source
// port's SYN.
type tapSide struct {
	fd       int
	outgoing bool // count packets leaving (server link) or arriving (client link)
	seen     map[uint16]time.Time
	err      error
}

// synFilter selects what the tap times: TCP SYNs without ACK to dst.
type synFilter struct {
	dst netip.AddrPort
}

// openSynTap opens the tap in ns on links inIf (where SYNs arrive) and
// outIf (where they leave) and starts reading.
func openSynTap(ns *netNS, inIf, outIf string, f synFilter) (*synTap, error) {
	t := &synTap{}
	var err error
	if err = ns.do(func() error {
		if t.in, err = openTapSide(inIf, false); err != nil {
			return err
		}
		if t.out, err = openTapSide(outIf, true); err != nil {
			unix.Close(t.in.fd)
			return err
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("SYN tap in %s: %w", ns.name, err)
	}
	for _, s := range []*tapSide{t.in, t.out} {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			s.err = s.read(&t.stop, f)
		}()
	}
	return t, nil
}

func openTapSide(ifName string, outgoing bool) (*tapSide, error) {
	ifi, err := net.InterfaceByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", ifName, err)
	}
	proto := int(htons(unix.ETH_P_ALL)) // outgoing packets reach ETH_P_ALL sockets only
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
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
		{"bind", func() error {
			return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
		}},
	} {
		if err := o.set(); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("packet socket on %s: %s: %w", ifName, o.name, err)
		}
	}
	return &tapSide{fd: fd, outgoing: outgoing, seen: map[uint16]time.Time{}}, nil
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
		if !ok || (ll.Pkttype == unix.PACKET_OUTGOING) != s.outgoing {
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

// close stops the tap and returns, per SYN seen on both links, how long
// the node held it, and how many SYNs were seen coming in but not going
// out (dropped, or still held).
func (t *synTap) close() (held []time.Duration, lost int, err error) {
	t.stop.Store(true)
	t.wg.Wait()
	if err := errors.Join(t.in.err, t.out.err); err != nil {
		return nil, 0, err
	}
	return matchSYNs(t.in.seen, t.out.seen)
}

// matchSYNs pairs arrivals with departures by source port. A departure
// before its arrival means the clocks or the pairing are wrong: an error.
func matchSYNs(in, out map[uint16]time.Time) (held []time.Duration, lost int, err error) {
	for port, t0 := range in {
		t1, ok := out[port]
		if !ok {
			lost++
			continue
		}
		d := t1.Sub(t0)
		if d < 0 {
			return nil, 0, fmt.Errorf("SYN from port %d left the node %v before it arrived", port, -d)
		}
		held = append(held, d)
	}
	return held, lost, nil
}
