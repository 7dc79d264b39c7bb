package syntap

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

func TestSynSourcePort(t *testing.T) {
	f := synFilter{dst: netip.AddrPortFrom(netip.MustParseAddr("10.7.0.81"), 8080)}
	ipPkt := synPacket(netip.MustParseAddr("10.1.0.83"), f.dst, 40001)
	frame := func(edit func(b []byte)) []byte {
		b := append(make([]byte, 14), ipPkt...)
		binary.BigEndian.PutUint16(b[12:14], 0x0800)
		if edit != nil {
			edit(b)
		}
		return b
	}
	const tcpOff = 14 + 20
	for _, tc := range []struct {
		name  string
		frame []byte
		port  uint16
		ok    bool
	}{
		{"SYN to the server", frame(nil), 40001, true},
		{"SYN-ACK", frame(func(b []byte) { b[tcpOff+13] |= 0x10 }), 0, false},
		{"plain ACK", frame(func(b []byte) { b[tcpOff+13] = 0x10 }), 0, false},
		{"other destination", frame(func(b []byte) { b[14+19]++ }), 0, false},
		{"other port", frame(func(b []byte) { b[tcpOff+3]++ }), 0, false},
		{"UDP", frame(func(b []byte) { b[14+9] = unix.IPPROTO_UDP }), 0, false},
		{"IPv6 ethertype", frame(func(b []byte) { binary.BigEndian.PutUint16(b[12:14], 0x86dd) }), 0, false},
		{"truncated in TCP", frame(nil)[:tcpOff+10], 0, false},
		{"bad IHL", frame(func(b []byte) { b[14] = 0x42 }), 0, false},
		{"empty", nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, ok := synSourcePort(tc.frame, f)
			if ok != tc.ok || port != tc.port {
				t.Fatalf("got %d, %v; want %d, %v", port, ok, tc.port, tc.ok)
			}
		})
	}
	// IP options move the TCP header.
	withOpts := frame(nil)
	withOpts = append(withOpts[:tcpOff:tcpOff], append([]byte{1, 1, 1, 0}, withOpts[tcpOff:]...)...)
	withOpts[14] = 0x46
	if port, ok := synSourcePort(withOpts, f); !ok || port != 40001 {
		t.Fatalf("with IP options: %d, %v", port, ok)
	}
}

func TestKernelStamp(t *testing.T) {
	cmsg := func(level, typ int32, data []byte) []byte {
		b := make([]byte, unix.CmsgSpace(len(data)))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(len(data)))
		copy(b[unix.CmsgLen(0):], data)
		return b
	}
	ts := make([]byte, 16)
	binary.NativeEndian.PutUint64(ts[0:8], 1700000000)
	binary.NativeEndian.PutUint64(ts[8:16], 123456789)
	want := time.Unix(1700000000, 123456789)
	for _, tc := range []struct {
		name    string
		oob     []byte
		wantErr string
	}{
		{"timestamp", cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS, ts), ""},
		{"after another message", append(cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, make([]byte, 4)), cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS, ts)...), ""},
		{"none", nil, "no kernel timestamp"},
		{"other message only", cmsg(unix.SOL_IP, 1, make([]byte, 4)), "no kernel timestamp"},
		{"short data", cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS, ts[:8]), "no kernel timestamp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kernelStamp(tc.oob)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(want) {
				t.Fatalf("got %v, %v; want %v", got, err, want)
			}
		})
	}
}

func TestMatchSYNs(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	at := func(us int) time.Time { return t0.Add(time.Duration(us) * time.Microsecond) }
	held, unmatched, inverted, err := matchSYNs(
		map[uint16]time.Time{1: at(0), 2: at(100), 3: at(200)},
		map[uint16]time.Time{1: at(5), 3: at(270), 9: at(1)}, // 2 never left; 9 never came in
	)
	if err != nil {
		t.Fatal(err)
	}
	if unmatched != 2 || len(held) != 2 || inverted != 0 {
		t.Fatalf("held %v unmatched %d, want two held and two unmatched", held, unmatched)
	}
	sum := held[0] + held[1]
	if sum != 75*time.Microsecond {
		t.Fatalf("held %v, want 5us and 70us", held)
	}
	if _, _, _, err := matchSYNs(map[uint16]time.Time{1: at(10), 2: at(10)}, map[uint16]time.Time{1: at(5), 2: at(11)}); err != nil {
		t.Fatalf("one inverted SYN of two: %v", err)
	}
	if _, _, _, err := matchSYNs(map[uint16]time.Time{1: at(10), 2: at(10)}, map[uint16]time.Time{1: at(5), 2: at(9)}); err == nil {
		t.Fatal("a tap whose SYNs all left before they arrived was accepted")
	}
	// One inverted SYN among many is left out and counted.
	in, out := map[uint16]time.Time{}, map[uint16]time.Time{}
	for p := range uint16(200) {
		in[p], out[p] = at(int(p)*10), at(int(p)*10+3)
	}
	out[7] = at(60)
	held, unmatched, inverted, err = matchSYNs(in, out)
	if err != nil || len(held) != 199 || unmatched != 0 || inverted != 1 {
		t.Fatalf("held %d unmatched %d inverted %d err %v, want 199, 0, 1, nil", len(held), unmatched, inverted, err)
	}
}

// TestSynOnlyFilter runs the tap's socket filter in x/net/bpf's
// interpreter over the frames it must keep and drop.
func TestSynOnlyFilter(t *testing.T) {
	prog := make([]bpf.Instruction, len(synOnly))
	for i, ins := range synOnly {
		prog[i] = bpf.RawInstruction{Op: ins.Code, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}.Disassemble()
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	ipPkt := synPacket(netip.MustParseAddr("10.1.0.83"), netip.MustParseAddrPort("10.7.0.81:8080"), 40001)
	frame := func(edit func(b []byte) []byte) []byte {
		b := append(make([]byte, 14), ipPkt...)
		binary.BigEndian.PutUint16(b[12:14], 0x0800)
		if edit != nil {
			b = edit(b)
		}
		return b
	}
	const tcpOff = 14 + 20
	for _, tc := range []struct {
		name string
		b    []byte
		keep bool
	}{
		{"SYN", frame(nil), true},
		{"SYN with ECN bits", frame(func(b []byte) []byte { b[tcpOff+13] |= 0xc0; return b }), true},
		{"SYN-ACK", frame(func(b []byte) []byte { b[tcpOff+13] |= 0x10; return b }), false},
		{"ACK", frame(func(b []byte) []byte { b[tcpOff+13] = 0x10; return b }), false},
		{"RST", frame(func(b []byte) []byte { b[tcpOff+13] = 0x04; return b }), false},
		{"UDP", frame(func(b []byte) []byte { b[14+9] = unix.IPPROTO_UDP; return b }), false},
		{"ARP", frame(func(b []byte) []byte { binary.BigEndian.PutUint16(b[12:14], 0x0806); return b }), false},
		{"SYN behind IP options", frame(func(b []byte) []byte {
			b = append(b[:tcpOff:tcpOff], append([]byte{1, 1, 1, 0}, b[tcpOff:]...)...)
			b[14] = 0x46
			return b
		}), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := vm.Run(tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if (n > 0) != tc.keep {
				t.Fatalf("filter returned %d, want keep=%v", n, tc.keep)
			}
		})
	}
}

// synPacket is an IPv4 TCP SYN from src:srcPort to dst (no options,
// checksums left zero: neither the tap nor its filter looks at them).
func synPacket(src netip.Addr, dst netip.AddrPort, srcPort uint16) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], 40)
	b[8] = 64
	b[9] = unix.IPPROTO_TCP
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(b[12:16], s4[:])
	copy(b[16:20], d4[:])
	tcp := b[20:]
	binary.BigEndian.PutUint16(tcp[0:2], srcPort)
	binary.BigEndian.PutUint16(tcp[2:4], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:8], 1)
	tcp[12] = 5 << 4
	tcp[13] = 0x02
	binary.BigEndian.PutUint16(tcp[14:16], 64240)
	return b
}
