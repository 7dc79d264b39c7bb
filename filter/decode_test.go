package filter_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/probe"
)

func mustPacket(t testing.TB, f filter.Flow) []byte {
	t.Helper()
	b, err := probe.Packet(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func flow(src, dst string, sport, dport uint16, proto uint8) filter.Flow {
	return filter.Flow{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SrcPort: sport, DstPort: dport, Proto: proto}
}

func TestDecodeRoundTrip(t *testing.T) {
	for _, f := range []filter.Flow{
		flow("10.0.0.1", "10.0.0.2", 40000, 80, filter.ProtoTCP),
		flow("10.0.0.1", "10.0.0.2", 40001, 53, filter.ProtoUDP),
		flow("10.0.0.1", "10.0.0.2", 40002, 81, filter.ProtoSCTP),
		flow("10.0.0.1", "10.0.0.2", 0, 0, filter.ProtoICMP),
		flow("fd00::1", "fd00::2", 40000, 80, filter.ProtoTCP),
		flow("fd00::1", "fd00::2", 40001, 53, filter.ProtoUDP),
		flow("fd00::1", "fd00::2", 40002, 81, filter.ProtoSCTP),
		flow("fd00::1", "fd00::2", 0, 0, filter.ProtoICMPv6),
	} {
		d := filter.NewDecoder()
		got, err := d.Decode(mustPacket(t, f))
		if err != nil {
			t.Errorf("%v: %v", f, err)
			continue
		}
		if got != f {
			t.Errorf("decoded %+v, want %+v", got, f)
		}
	}
}

// ipv6WithExt builds an IPv6 TCP SYN behind the given extension headers,
// each 8 bytes: {next header, length 0, ...}.
func ipv6WithExt(t *testing.T, exts []layers.IPProtocol, fragOffset uint16) []byte {
	t.Helper()
	tcp := mustPacket(t, flow("fd00::1", "fd00::2", 1234, 443, filter.ProtoTCP))[40:]
	var body []byte
	for i, typ := range exts {
		next := layers.IPProtocolTCP
		if i+1 < len(exts) {
			next = exts[i+1]
		}
		h := make([]byte, 8)
		h[0] = byte(next)
		if typ == layers.IPProtocolIPv6Fragment {
			binary.BigEndian.PutUint16(h[2:4], fragOffset<<3)
		}
		body = append(body, h...)
	}
	body = append(body, tcp...)
	hdr := make([]byte, 40)
	hdr[0] = 6 << 4
	binary.BigEndian.PutUint16(hdr[4:6], uint16(len(body)))
	hdr[6] = byte(exts[0])
	hdr[7] = 64
	a, b := netip.MustParseAddr("fd00::1").As16(), netip.MustParseAddr("fd00::2").As16()
	copy(hdr[8:24], a[:])
	copy(hdr[24:40], b[:])
	return append(hdr, body...)
}

func TestDecodeIPv6ExtensionHeaders(t *testing.T) {
	want := flow("fd00::1", "fd00::2", 1234, 443, filter.ProtoTCP)
	for _, tc := range []struct {
		name    string
		exts    []layers.IPProtocol
		offset  uint16
		wantErr error
	}{
		{"hop-by-hop", []layers.IPProtocol{layers.IPProtocolIPv6HopByHop}, 0, nil},
		{"destination", []layers.IPProtocol{layers.IPProtocolIPv6Destination}, 0, nil},
		{"routing", []layers.IPProtocol{layers.IPProtocolIPv6Routing}, 0, nil},
		{"first fragment", []layers.IPProtocol{layers.IPProtocolIPv6Fragment}, 0, nil},
		{"chain", []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing, layers.IPProtocolIPv6Destination}, 0, nil},
		{"later fragment", []layers.IPProtocol{layers.IPProtocolIPv6Fragment}, 100, filter.ErrLateFragment},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := ipv6WithExt(t, tc.exts, tc.offset)
			if tc.exts[0] == layers.IPProtocolIPv6HopByHop {
				// A hop-by-hop header needs valid options: two PadN bytes
				// then a PadN of 4 fills the 6 option bytes.
				pkt[40+2], pkt[40+3] = 1, 4
			}
			got, err := filter.NewDecoder().Decode(pkt)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && got != want {
				t.Errorf("decoded %+v, want %+v", got, want)
			}
		})
	}
}

// The queue copies 128 bytes of each packet: a long first packet arrives
// cut short, and must still decode.
func TestDecodeCopyRangeTruncation(t *testing.T) {
	f := flow("10.1.2.3", "10.4.5.6", 5353, 443, filter.ProtoUDP)
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: f.Src.AsSlice(), DstIP: f.Dst.AsSlice()}
	udp := &layers.UDP{SrcPort: 5353, DstPort: 443}
	_ = udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, udp, gopacket.Payload(make([]byte, 1200))); err != nil {
		t.Fatal(err)
	}
	for _, pkt := range [][]byte{buf.Bytes()[:128], ipv6Long(t)[:128]} {
		got, err := filter.NewDecoder().Decode(pkt)
		if err != nil {
			t.Fatalf("truncated to copy range: %v", err)
		}
		if got.DstPort != 443 || got.Proto != filter.ProtoUDP && got.Proto != filter.ProtoTCP {
			t.Errorf("decoded %+v", got)
		}
	}
}

func ipv6Long(t *testing.T) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: netip.MustParseAddr("fd00::1").AsSlice(), DstIP: netip.MustParseAddr("fd00::2").AsSlice()}
	tcp := &layers.TCP{SrcPort: 1, DstPort: 443, SYN: true}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload(make([]byte, 1000))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeMalformed(t *testing.T) {
	syn := mustPacket(t, flow("10.0.0.1", "10.0.0.2", 40000, 80, filter.ProtoTCP))
	syn6 := mustPacket(t, flow("fd00::1", "fd00::2", 40000, 80, filter.ProtoTCP))
	lying := append([]byte(nil), syn...)
	binary.BigEndian.PutUint16(lying[2:4], 24) // total length ends inside the TCP header
	badIHL := append([]byte(nil), syn...)
	badIHL[0] = 0x43
	badOffset := append([]byte(nil), syn...)
	badOffset[20+12] = 0xf0 // TCP data offset 60 > what is there
	fragLate := append([]byte(nil), syn...)
	binary.BigEndian.PutUint16(fragLate[6:8], 10)
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{
		{"empty", nil},
		{"one byte", []byte{0x45}},
		{"version 5", append([]byte{0x55}, syn[1:]...)},
		{"IPv4 header cut", syn[:19]},
		{"TCP header cut", syn[:30]},
		{"IPv6 header cut", syn6[:39]},
		{"IPv6 TCP cut", syn6[:45]},
		{"IPv4 length ends in TCP header", lying},
		{"IHL below 5", badIHL},
		{"TCP data offset past end", badOffset},
		{"IPv4 non-first fragment", fragLate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := filter.NewDecoder().Decode(tc.pkt); err == nil {
				t.Fatal("decoded a malformed packet without error")
			}
		})
	}
}

func TestDecodeNoAllocs(t *testing.T) {
	d := filter.NewDecoder()
	for _, pkt := range [][]byte{
		mustPacket(t, flow("10.0.0.1", "10.0.0.2", 40000, 80, filter.ProtoTCP)),
		mustPacket(t, flow("fd00::1", "fd00::2", 40002, 81, filter.ProtoSCTP)),
		mustPacket(t, flow("10.0.0.1", "10.0.0.2", 40001, 53, filter.ProtoUDP)),
	} {
		if _, err := d.Decode(pkt); err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(1000, func() { _, _ = d.Decode(pkt) }); n != 0 {
			t.Errorf("Decode allocates %.1f times per packet", n)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(mustPacket(f, flow("10.0.0.1", "10.0.0.2", 40000, 80, filter.ProtoTCP)))
	f.Add(mustPacket(f, flow("fd00::1", "fd00::2", 40002, 81, filter.ProtoSCTP)))
	d := filter.NewDecoder()
	f.Fuzz(func(t *testing.T, pkt []byte) {
		fl, err := d.Decode(pkt) // must never panic
		if err == nil && !fl.Src.IsValid() {
			t.Fatalf("no error but no source address: %+v", fl)
		}
	})
}
