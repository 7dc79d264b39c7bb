package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Attribute numbers from linux/netfilter/nfnetlink_conntrack.h.
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaMark       = 8
	ctaID         = 12
	ctaZone       = 18
	ctaMarkMask   = 21

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER.
	nlaTypeMask = 0x3fff
)

var errShortAttr = errors.New("truncated netlink attribute")

// attrIter walks the netlink attributes of b in place: val and raw alias
// b, so walking a dump allocates nothing.
type attrIter struct {
	b   []byte
	typ uint16
	val []byte // the payload
	raw []byte // header and payload, without trailing padding
	err error
}

func (it *attrIter) next() bool {
	if len(it.b) == 0 {
		return false
	}
	if len(it.b) < 4 {
		it.err = errShortAttr
		return false
	}
	l := int(binary.NativeEndian.Uint16(it.b[0:2]))
	if l < 4 || l > len(it.b) {
		it.err = errShortAttr
		return false
	}
	it.typ = binary.NativeEndian.Uint16(it.b[2:4]) & nlaTypeMask
	it.raw = it.b[:l]
	it.val = it.b[4:l]
	it.b = it.b[min(align4(l), len(it.b)):]
	return true
}

func align4(n int) int { return (n + 3) &^ 3 }

// tuple is one direction of a conntrack entry.
type tuple struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
	proto            uint8
	hasProto         bool
}

func parseTuple(b []byte) (tuple, error) {
	var t tuple
	it := attrIter{b: b}
	for it.next() {
		switch it.typ {
		case ctaTupleIP:
			ip := attrIter{b: it.val}
			for ip.next() {
				switch ip.typ {
				case ctaIPv4Src, ctaIPv6Src:
					t.src, _ = netip.AddrFromSlice(ip.val)
				case ctaIPv4Dst, ctaIPv6Dst:
					t.dst, _ = netip.AddrFromSlice(ip.val)
				}
			}
			if ip.err != nil {
				return t, ip.err
			}
		case ctaTupleProto:
			p := attrIter{b: it.val}
			for p.next() {
				switch {
				case p.typ == ctaProtoNum && len(p.val) == 1:
					t.proto, t.hasProto = p.val[0], true
				case p.typ == ctaProtoSrcPort && len(p.val) == 2:
					t.srcPort = binary.BigEndian.Uint16(p.val)
				case p.typ == ctaProtoDstPort && len(p.val) == 2:
					t.dstPort = binary.BigEndian.Uint16(p.val)
				}
			}
			if p.err != nil {
				return t, p.err
			}
		}
	}
	if it.err != nil {
		return t, it.err
	}
	// AddrFromSlice leaves the zero Addr for a length other than 4 or 16.
	if !t.src.IsValid() || !t.dst.IsValid() || !t.hasProto {
		return t, errors.New("tuple without addresses or protocol")
	}
	return t, nil
}

// entry is what a recheck needs of one conntrack entry. origTuple and zone
// alias the dump buffer: an entry is only valid until the next receive.
type entry struct {
	family    uint8
	flow      filter.Flow
	mark      uint32
	hasMark   bool
	id        uint32
	hasID     bool
	origTuple []byte // the CTA_TUPLE_ORIG attribute as dumped, header included
	zone      []byte // the CTA_ZONE attribute as dumped; nil when absent
}

// parseEntry reads one ctnetlink entry (the attributes after the nfgenmsg
// header) into e.
//
// The flow is rebuilt the way the verdict engine saw its first packet. The
// filter hooks run after DNAT (nat PREROUTING) and before SNAT (nat
// POSTROUTING), so the engine saw the client's address and port as sent
// (the original tuple's source) and the server as translated, which is
// where the reply comes from (the reply tuple's source). Without NAT the
// reply's source is the original destination; with kube-proxy's Service
// DNAT it is the backend pod, not the ClusterIP, which is what policies
// name. Ports count only for TCP, UDP and SCTP, as in the decoder.
func parseEntry(family uint8, b []byte, e *entry) error {
	*e = entry{family: family}
	var orig, reply tuple
	var hasOrig, hasReply bool
	it := attrIter{b: b}
	for it.next() {
		switch it.typ {
		case ctaTupleOrig:
			t, err := parseTuple(it.val)
			if err != nil {
				return fmt.Errorf("original tuple: %w", err)
			}
			orig, hasOrig, e.origTuple = t, true, it.raw
		case ctaTupleReply:
			if t, err := parseTuple(it.val); err == nil {
				reply, hasReply = t, true
			}
		case ctaMark:
			if len(it.val) == 4 {
				e.mark, e.hasMark = binary.BigEndian.Uint32(it.val), true
			}
		case ctaID:
			if len(it.val) == 4 {
				e.id, e.hasID = binary.BigEndian.Uint32(it.val), true
			}
		case ctaZone:
			e.zone = it.raw
		}
	}
	if it.err != nil {
		return it.err
	}
	if !hasOrig {
		return errors.New("entry without original tuple")
	}
	f := filter.Flow{Src: orig.src, Dst: orig.dst, SrcPort: orig.srcPort, DstPort: orig.dstPort, Proto: orig.proto}
	if hasReply {
		f.Dst, f.DstPort = reply.src, reply.srcPort
	}
	switch f.Proto {
	case filter.ProtoTCP, filter.ProtoUDP, filter.ProtoSCTP:
	default:
		f.SrcPort, f.DstPort = 0, 0
	}
	e.flow = f
	return nil
}

// Marks are the connmark bits the dataplane writes: Mask selects ours,
// Allow is the value of an allowed flow, Deny the value of a denied one
// (0: the dataplane never saves denials in the connmark).
type Marks struct {
	Allow, Deny, Mask uint32
}

// Validate refuses marks a recheck could confuse with each other or with
// unmarked entries.
func (m Marks) Validate() error {
	switch {
	case m.Mask == 0:
		return fmt.Errorf("marks %#x,%#x/%#x: mask is zero", m.Allow, m.Deny, m.Mask)
	case m.Allow == 0:
		return fmt.Errorf("marks %#x,%#x/%#x: allow value is zero (that is every unmarked entry)", m.Allow, m.Deny, m.Mask)
	case m.Allow&^m.Mask != 0 || m.Deny&^m.Mask != 0:
		return fmt.Errorf("marks %#x,%#x/%#x: values must lie inside the mask", m.Allow, m.Deny, m.Mask)
	case m.Allow == m.Deny:
		return fmt.Errorf("marks %#x,%#x/%#x: allow and deny are equal", m.Allow, m.Deny, m.Mask)
	}
	return nil
}

// shouldCut reports whether an entry has to go under rs: an allowed flow
// the policy now denies, or a flow saved as denied that it now allows (so
// that it is decided afresh rather than kept by a stale mark). Entries
// without our mark are not ours and stay.
func shouldCut(rs *filter.Ruleset, m Marks, e *entry) bool {
	if !e.hasMark {
		return false
	}
	switch e.mark & m.Mask {
	case m.Allow:
		return !rs.Decide(e.flow).Allow
	case m.Deny:
		return m.Deny != 0 && rs.Decide(e.flow).Allow
	}
	return false
}
