package filter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Decode errors. A packet that yields one is denied by the caller.
var (
	ErrEmpty        = errors.New("empty packet")
	ErrVersion      = errors.New("not an IPv4 or IPv6 packet")
	ErrNoTransport  = errors.New("transport header missing or truncated")
	ErrLateFragment = errors.New("non-first fragment: no transport header")
)

// Decoder reads the Flow out of a raw IP packet (an NFQUEUE payload starts
// at the IP header). Its layers are allocated once, so decoding allocates
// nothing; a Decoder is therefore not safe for concurrent use: give each
// queue reader its own.
type Decoder struct {
	ip4   layers.IPv4
	ip6   layers.IPv6
	tcp   layers.TCP
	udp   layers.UDP
	icmp4 layers.ICMPv4
	icmp6 layers.ICMPv6
	sctp  sctpHeader
	// one instance per extension header type, because the type decides
	// how its length is read and DecodeFromBytes is not told the type
	route, dest, frag, ah ip6Ext

	p4, p6  *gopacket.DecodingLayerParser
	decoded []gopacket.LayerType
}

// NewDecoder returns a Decoder for IPv4 and IPv6 packets carrying TCP, UDP,
// SCTP, ICMP or ICMPv6, through IPv6 extension headers.
func NewDecoder() *Decoder {
	d := &Decoder{decoded: make([]gopacket.LayerType, 0, 8)}
	d.route.typ, d.dest.typ, d.frag.typ, d.ah.typ = layers.LayerTypeIPv6Routing, layers.LayerTypeIPv6Destination, layers.LayerTypeIPv6Fragment, layers.LayerTypeIPSecAH
	transport := []gopacket.DecodingLayer{&d.tcp, &d.udp, &d.sctp}
	d.p4 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv4, append([]gopacket.DecodingLayer{&d.ip4, &d.icmp4}, transport...)...)
	d.p6 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv6, append([]gopacket.DecodingLayer{&d.ip6, &d.icmp6, &d.route, &d.dest, &d.frag, &d.ah}, transport...)...)
	// Application payloads are none of our business: stop at transport.
	d.p4.IgnoreUnsupported = true
	d.p6.IgnoreUnsupported = true
	return d
}

// Decode returns the flow of pkt. Truncation past the transport ports is
// fine (the queue copies only the first bytes of a packet); a packet whose
// IP or transport header is missing or inconsistent is an error.
func (d *Decoder) Decode(pkt []byte) (Flow, error) {
	if len(pkt) == 0 {
		return Flow{}, ErrEmpty
	}
	d.decoded = d.decoded[:0]
	// The helpers fill f through a pointer: passing a Flow by value down
	// and back up costs more than the rest of the work after parsing.
	var f Flow
	var err error
	switch pkt[0] >> 4 {
	case 4:
		if err := d.p4.DecodeLayers(pkt, &d.decoded); err != nil {
			return Flow{}, fmt.Errorf("decode IPv4: %w", err)
		}
		err = d.flow4(&f)
	case 6:
		if err := d.p6.DecodeLayers(pkt, &d.decoded); err != nil {
			return Flow{}, fmt.Errorf("decode IPv6: %w", err)
		}
		err = d.flow6(&f)
	default:
		err = ErrVersion
	}
	return f, err
}

func (d *Decoder) flow4(f *Flow) error {
	if len(d.decoded) == 0 || d.decoded[0] != layers.LayerTypeIPv4 {
		return ErrVersion
	}
	f.Src = netip.AddrFrom4([4]byte(d.ip4.SrcIP))
	f.Dst = netip.AddrFrom4([4]byte(d.ip4.DstIP))
	f.Proto = uint8(d.ip4.Protocol)
	if d.ip4.FragOffset != 0 {
		return ErrLateFragment
	}
	if d.ip4.Flags&layers.IPv4MoreFragments != 0 {
		// The parser stops at a first fragment; its transport header is
		// whole all the same, so read the ports from it directly.
		return d.transport(f, d.ip4.Payload)
	}
	return d.finish(f)
}

func (d *Decoder) flow6(f *Flow) error {
	if len(d.decoded) == 0 || d.decoded[0] != layers.LayerTypeIPv6 {
		return ErrVersion
	}
	f.Src = netip.AddrFrom16([16]byte(d.ip6.SrcIP)).Unmap()
	f.Dst = netip.AddrFrom16([16]byte(d.ip6.DstIP)).Unmap()
	// The protocol is the Next Header of the last header decoded.
	next := d.ip6.NextHeader
	if d.ip6.HopByHop != nil {
		next = d.ip6.HopByHop.NextHeader
	}
	for _, lt := range d.decoded[1:] {
		switch lt {
		case layers.LayerTypeIPv6Routing:
			next = d.route.next
		case layers.LayerTypeIPv6Destination:
			next = d.dest.next
		case layers.LayerTypeIPSecAH:
			next = d.ah.next
		case layers.LayerTypeIPv6Fragment:
			next = d.frag.next
			if d.frag.fragOffset != 0 {
				f.Proto = uint8(next)
				return ErrLateFragment
			}
		}
	}
	f.Proto = uint8(next)
	return d.finish(f)
}

// finish reads the ports from whichever transport layer was decoded. The
// parser skips a transport header it cannot decode (truncated) only by
// returning an error, so a TCP, UDP or SCTP flow without its layer in
// decoded means the packet ended where the header should be.
func (d *Decoder) finish(f *Flow) error {
	last := d.decoded[len(d.decoded)-1]
	// Switch on the protocol byte (a jump table), then check the layer:
	// LayerType values are variables, so switching on them compares one
	// by one.
	switch f.Proto {
	case ProtoTCP:
		if last != layers.LayerTypeTCP {
			return ErrNoTransport
		}
		f.SrcPort, f.DstPort = uint16(d.tcp.SrcPort), uint16(d.tcp.DstPort)
	case ProtoUDP:
		if last != layers.LayerTypeUDP {
			return ErrNoTransport
		}
		f.SrcPort, f.DstPort = uint16(d.udp.SrcPort), uint16(d.udp.DstPort)
	case ProtoSCTP:
		if last != layers.LayerTypeSCTP {
			return ErrNoTransport
		}
		f.SrcPort, f.DstPort = d.sctp.src, d.sctp.dst
	case ProtoICMP:
		if last != layers.LayerTypeICMPv4 {
			return ErrNoTransport
		}
	case ProtoICMPv6:
		if last != layers.LayerTypeICMPv6 {
			return ErrNoTransport
		}
	}
	return nil
}

// transport decodes the ports of a first IPv4 fragment.
func (d *Decoder) transport(f *Flow, payload []byte) error {
	var err error
	switch f.Proto {
	case ProtoTCP:
		if err = d.tcp.DecodeFromBytes(payload, gopacket.NilDecodeFeedback); err == nil {
			f.SrcPort, f.DstPort = uint16(d.tcp.SrcPort), uint16(d.tcp.DstPort)
		}
	case ProtoUDP:
		if err = d.udp.DecodeFromBytes(payload, gopacket.NilDecodeFeedback); err == nil {
			f.SrcPort, f.DstPort = uint16(d.udp.SrcPort), uint16(d.udp.DstPort)
		}
	case ProtoSCTP:
		if err = d.sctp.DecodeFromBytes(payload, gopacket.NilDecodeFeedback); err == nil {
			f.SrcPort, f.DstPort = d.sctp.src, d.sctp.dst
		}
	}
	if err != nil {
		return ErrNoTransport
	}
	return nil
}

// sctpHeader decodes the SCTP common header's ports. gopacket's SCTP layer
// is not a DecodingLayer, and the ports are all a verdict needs.
type sctpHeader struct {
	src, dst uint16
	payload  []byte
}

func (s *sctpHeader) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	if len(data) < 12 {
		df.SetTruncated()
		return ErrNoTransport
	}
	s.src = binary.BigEndian.Uint16(data[0:2])
	s.dst = binary.BigEndian.Uint16(data[2:4])
	s.payload = data[12:]
	return nil
}

func (s *sctpHeader) CanDecode() gopacket.LayerClass    { return layers.LayerTypeSCTP }
func (s *sctpHeader) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }
func (s *sctpHeader) LayerPayload() []byte              { return s.payload }

// ip6Ext decodes one kind of IPv6 extension header far enough to skip it:
// its Next Header and length, and for fragments the offset.
type ip6Ext struct {
	typ        gopacket.LayerType
	next       layers.IPProtocol
	fragOffset uint16
	payload    []byte
}

func (e *ip6Ext) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	if len(data) < 8 {
		df.SetTruncated()
		return fmt.Errorf("%v header truncated", e.typ)
	}
	e.next = layers.IPProtocol(data[0])
	var n int
	switch e.typ {
	case layers.LayerTypeIPv6Fragment:
		n = 8
		e.fragOffset = binary.BigEndian.Uint16(data[2:4]) >> 3
	case layers.LayerTypeIPSecAH:
		n = (int(data[1]) + 2) * 4
	default:
		n = (int(data[1]) + 1) * 8
	}
	if n > len(data) {
		df.SetTruncated()
		return fmt.Errorf("%v header longer than the packet", e.typ)
	}
	e.payload = data[n:]
	return nil
}

func (e *ip6Ext) CanDecode() gopacket.LayerClass { return e.typ }

func (e *ip6Ext) NextLayerType() gopacket.LayerType {
	if e.typ == layers.LayerTypeIPv6Fragment && e.fragOffset != 0 {
		return gopacket.LayerTypeFragment
	}
	return e.next.LayerType()
}

func (e *ip6Ext) LayerPayload() []byte { return e.payload }
