package probe

import (
	"encoding/binary"
	"fmt"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Packet serializes the first packet of flow f as the kernel would queue
// it: a TCP SYN, a UDP datagram with a few bytes of payload, an SCTP INIT,
// or an ICMP echo request, behind an IPv4 or IPv6 header with valid
// lengths and checksums.
func Packet(f filter.Flow) ([]byte, error) {
	if !f.Src.IsValid() || !f.Dst.IsValid() || f.Src.Is4() != f.Dst.Is4() {
		return nil, fmt.Errorf("packet: source %v and destination %v must be addresses of one family", f.Src, f.Dst)
	}
	var (
		net   gopacket.SerializableLayer
		netL  gopacket.NetworkLayer
		ipNxt layers.IPProtocol = layers.IPProtocol(f.Proto)
	)
	if f.Src.Is4() {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: ipNxt, SrcIP: f.Src.AsSlice(), DstIP: f.Dst.AsSlice(), Flags: layers.IPv4DontFragment}
		net, netL = ip, ip
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: ipNxt, SrcIP: f.Src.AsSlice(), DstIP: f.Dst.AsSlice()}
		net, netL = ip, ip
	}
	var ls []gopacket.SerializableLayer
	switch f.Proto {
	case filter.ProtoTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(f.SrcPort), DstPort: layers.TCPPort(f.DstPort), SYN: true, Seq: 1, Window: 64240}
		if err := tcp.SetNetworkLayerForChecksum(netL); err != nil {
			return nil, fmt.Errorf("packet: %w", err)
		}
		ls = []gopacket.SerializableLayer{net, tcp}
	case filter.ProtoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.SrcPort), DstPort: layers.UDPPort(f.DstPort)}
		if err := udp.SetNetworkLayerForChecksum(netL); err != nil {
			return nil, fmt.Errorf("packet: %w", err)
		}
		ls = []gopacket.SerializableLayer{net, udp, gopacket.Payload("probe")}
	case filter.ProtoSCTP:
		ls = []gopacket.SerializableLayer{net, &layers.SCTP{SrcPort: layers.SCTPPort(f.SrcPort), DstPort: layers.SCTPPort(f.DstPort)}, gopacket.Payload(SCTPInitChunk(0x1234abcd))}
	case filter.ProtoICMP:
		ls = []gopacket.SerializableLayer{net, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1}}
	case filter.ProtoICMPv6:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
		if err := icmp.SetNetworkLayerForChecksum(netL); err != nil {
			return nil, fmt.Errorf("packet: %w", err)
		}
		ls = []gopacket.SerializableLayer{net, icmp, &layers.ICMPv6Echo{Identifier: 1, SeqNumber: 1}}
	default:
		return nil, fmt.Errorf("packet: protocol %d is not TCP, UDP, SCTP, ICMP or ICMPv6", f.Proto)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, fmt.Errorf("packet: serialize %v: %w", f, err)
	}
	return buf.Bytes(), nil
}

// SCTPInitChunk returns an SCTP INIT chunk (RFC 9260 3.3.2) with the given
// initiate tag. gopacket decodes INIT chunks but cannot serialize them.
func SCTPInitChunk(tag uint32) []byte {
	c := make([]byte, 20)
	c[0] = 1 // INIT
	binary.BigEndian.PutUint16(c[2:4], 20)
	binary.BigEndian.PutUint32(c[4:8], tag)      // initiate tag
	binary.BigEndian.PutUint32(c[8:12], 65535)   // a_rwnd
	binary.BigEndian.PutUint16(c[12:14], 1)      // outbound streams
	binary.BigEndian.PutUint16(c[14:16], 1)      // inbound streams
	binary.BigEndian.PutUint32(c[16:20], 0x1000) // initial TSN
	return c
}
