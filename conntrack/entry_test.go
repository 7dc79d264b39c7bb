package conntrack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"golang.org/x/sys/unix"
)

var testMarks = Marks{Allow: 0x10000, Deny: 0x20000, Mask: 0x30000}

// TestParseEntry: the flow handed to the engine is the one its first
// packet showed (client as sent, server as translated), ports only where
// the decoder has them, and broken entries are errors.
func TestParseEntry(t *testing.T) {
	ext := netip.MustParseAddr("192.0.2.7")
	tests := []struct {
		name    string
		family  uint8
		attrs   []byte
		want    filter.Flow
		wantErr string
	}{
		{
			name:   "ipv4 tcp",
			family: unix.AF_INET,
			attrs:  fakeEntry{src: ext, dst: podC4, proto: 6, sport: 40000, dport: 80, mark: 0x10000, id: 7}.attrs(),
			want:   filter.Flow{Src: ext, Dst: podC4, SrcPort: 40000, DstPort: 80, Proto: 6},
		},
		{
			name:   "ipv6 udp",
			family: unix.AF_INET6,
			attrs:  fakeEntry{src: podA6, dst: podC6, proto: 17, sport: 5353, dport: 53, mark: 0x10000}.attrs(),
			want:   filter.Flow{Src: podA6, Dst: podC6, SrcPort: 5353, DstPort: 53, Proto: 17},
		},
		{
			name:   "service DNAT: destination is the backend the reply comes from",
			family: unix.AF_INET,
			attrs:  fakeEntry{src: podA4, dst: serviceIP4, replySrc: podC4, proto: 6, sport: 41000, dport: 443, rport: 8443, mark: 0x10000}.attrs(),
			want:   filter.Flow{Src: podA4, Dst: podC4, SrcPort: 41000, DstPort: 8443, Proto: 6},
		},
		{
			name:   "sctp keeps ports",
			family: unix.AF_INET,
			attrs:  fakeEntry{src: podA4, dst: podB4, proto: 132, sport: 1000, dport: 2000, mark: 0x10000}.attrs(),
			want:   filter.Flow{Src: podA4, Dst: podB4, SrcPort: 1000, DstPort: 2000, Proto: 132},
		},
		{
			name:   "icmp has no ports (the echo id is not one)",
			family: unix.AF_INET,
			attrs:  fakeEntry{src: podA4, dst: podB4, proto: 1, sport: 999, mark: 0x10000}.attrs(),
			want:   filter.Flow{Src: podA4, Dst: podB4, Proto: 1},
		},
		{
			name:   "reply tuple missing: original destination",
			family: unix.AF_INET,
			attrs: append(tupleAttr(ctaTupleOrig, ext, podB4, 6, 1234, 80),
				attr(ctaMark, be32(0x10000))...),
			want: filter.Flow{Src: ext, Dst: podB4, SrcPort: 1234, DstPort: 80, Proto: 6},
		},
		{
			name:    "no original tuple",
			family:  unix.AF_INET,
			attrs:   append(tupleAttr(ctaTupleReply, podB4, ext, 6, 80, 1234), attr(ctaMark, be32(0x10000))...),
			wantErr: "without original tuple",
		},
		{
			name:    "original tuple without addresses",
			family:  unix.AF_INET,
			attrs:   nested(ctaTupleOrig, nested(ctaTupleProto, attr(ctaProtoNum, []byte{6}))),
			wantErr: "without addresses",
		},
		{
			name:    "address of a bad length",
			family:  unix.AF_INET,
			attrs:   nested(ctaTupleOrig, nested(ctaTupleIP, attr(ctaIPv4Src, []byte{1, 2, 3}), attr(ctaIPv4Dst, podB4.AsSlice())), nested(ctaTupleProto, attr(ctaProtoNum, []byte{6}))),
			wantErr: "without addresses",
		},
		{
			name:    "attribute longer than the message",
			family:  unix.AF_INET,
			attrs:   fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x10000}.attrs()[:30],
			wantErr: "truncated",
		},
		{
			name:    "garbage tail",
			family:  unix.AF_INET,
			attrs:   append(fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x10000}.attrs(), 0xff, 0xff),
			wantErr: "truncated",
		},
		{
			name:    "empty",
			family:  unix.AF_INET,
			attrs:   nil,
			wantErr: "without original tuple",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e entry
			err := parseEntry(tt.family, tt.attrs, &e)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.flow != tt.want {
				t.Errorf("flow %+v, want %+v", e.flow, tt.want)
			}
			if e.family != tt.family {
				t.Errorf("family %d, want %d", e.family, tt.family)
			}
			// The delete names the entry by the dumped original tuple,
			// byte for byte.
			if l := binary.NativeEndian.Uint16(e.origTuple[0:2]); int(l) != len(e.origTuple) ||
				binary.NativeEndian.Uint16(e.origTuple[2:4])&nlaTypeMask != ctaTupleOrig ||
				!bytes.HasPrefix(tt.attrs, e.origTuple) {
				t.Errorf("origTuple is not the dumped CTA_TUPLE_ORIG: % x", e.origTuple)
			}
		})
	}
}

// TestShouldCut: the recheck decision, entry by entry, for a policy change
// that isolates pod c so that only pod a reaches it on TCP 80.
func TestShouldCut(t *testing.T) {
	rs := compileYAML(t, clusterIsolateC)
	ext := netip.MustParseAddr("192.0.2.7")
	noDeny := Marks{Allow: 0x10000, Mask: 0x30000}
	tests := []struct {
		name  string
		marks Marks
		e     fakeEntry
		want  bool
	}{
		{"allowed flow to c now denied", testMarks, fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x10000}, true},
		{"allowed flow to c still allowed (from a, tcp 80)", testMarks, fakeEntry{src: podA4, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x10000}, false},
		{"from a but another port", testMarks, fakeEntry{src: podA4, dst: podC4, proto: 6, sport: 1, dport: 81, mark: 0x10000}, true},
		{"from a, udp 80", testMarks, fakeEntry{src: podA4, dst: podC4, proto: 17, sport: 1, dport: 80, mark: 0x10000}, true},
		{"ipv6 to c now denied", testMarks, fakeEntry{src: podB6, dst: podC6, proto: 6, sport: 1, dport: 80, mark: 0x10000}, true},
		{"to b: not isolated", testMarks, fakeEntry{src: ext, dst: podB4, proto: 6, sport: 1, dport: 80, mark: 0x10000}, false},
		{"via service DNAT to c", testMarks, fakeEntry{src: ext, dst: serviceIP4, replySrc: podC4, proto: 6, sport: 1, dport: 80, rport: 80, mark: 0x10000}, true},
		{"via service DNAT to b", testMarks, fakeEntry{src: ext, dst: serviceIP4, replySrc: podB4, proto: 6, sport: 1, dport: 80, rport: 80, mark: 0x10000}, false},
		{"foreign bits beside our allow", testMarks, fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x10000 | 0x4000 | 0x1}, true},
		{"unmarked: not ours", testMarks, fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0}, false},
		{"no mark attribute: not ours", testMarks, fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, noMark: true}, false},
		{"foreign bits only: not ours", testMarks, fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x4000}, false},
		{"both our bits: neither value", testMarks, fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x30000}, false},
		{"saved denial now allowed: re-decide", testMarks, fakeEntry{src: ext, dst: podB4, proto: 6, sport: 1, dport: 80, mark: 0x20000}, true},
		{"saved denial still denied", testMarks, fakeEntry{src: ext, dst: podC4, proto: 6, sport: 1, dport: 80, mark: 0x20000}, false},
		{"deny value unset: deny-marked entries ignored", noDeny, fakeEntry{src: ext, dst: podB4, proto: 6, sport: 1, dport: 80, mark: 0x20000}, false},
		{"deny value unset: unmarked never matches deny 0", noDeny, fakeEntry{src: ext, dst: podB4, proto: 6, sport: 1, dport: 80, mark: 0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e entry
			if err := parseEntry(unix.AF_INET, tt.e.attrs(), &e); err != nil {
				t.Fatal(err)
			}
			if got := shouldCut(rs, tt.marks, &e); got != tt.want {
				t.Errorf("shouldCut = %v, want %v (flow %+v, verdict %s)", got, tt.want, e.flow, rs.Describe(rs.Decide(e.flow)))
			}
		})
	}
}

// TestDeleteMessage: a delete request carries the dumped original tuple,
// the ID and the zone, in one well-formed netlink message per entry.
func TestDeleteMessage(t *testing.T) {
	raw := fakeEntry{src: podA4, dst: podC4, proto: 6, sport: 1234, dport: 80, mark: 0x10000, id: 0xdeadbeef}.attrs()
	raw = append(raw, attr(ctaZone, be16(7))...)
	var e entry
	if err := parseEntry(unix.AF_INET, raw, &e); err != nil {
		t.Fatal(err)
	}
	var d deleteBatch
	d.add(&e, 41)
	d.add(&e, 42)
	if d.n != 2 {
		t.Fatalf("n = %d", d.n)
	}
	b := d.buf
	for i := range 2 {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l > len(b) || l%4 != 0 {
			t.Fatalf("message %d: length %d of %d", i, l, len(b))
		}
		if typ := binary.NativeEndian.Uint16(b[4:6]); typ != 1<<8|2 {
			t.Errorf("type %#x, want ctnetlink delete 0x102", typ)
		}
		if fl := binary.NativeEndian.Uint16(b[6:8]); fl != unix.NLM_F_REQUEST {
			t.Errorf("flags %#x, want request without ack", fl)
		}
		if seq := binary.NativeEndian.Uint32(b[8:12]); seq != uint32(41+i) {
			t.Errorf("seq %d", seq)
		}
		if b[16] != unix.AF_INET {
			t.Errorf("family %d", b[16])
		}
		it := attrIter{b: b[20:l]}
		var got []uint16
		for it.next() {
			got = append(got, it.typ)
			switch it.typ {
			case ctaTupleOrig:
				if !bytes.Equal(it.raw, e.origTuple) {
					t.Errorf("tuple differs from the dumped one")
				}
			case ctaID:
				if v := binary.BigEndian.Uint32(it.val); v != 0xdeadbeef {
					t.Errorf("id %#x", v)
				}
			case ctaZone:
				if v := binary.BigEndian.Uint16(it.val); v != 7 {
					t.Errorf("zone %d", v)
				}
			}
		}
		if it.err != nil || len(got) != 3 || got[0] != ctaTupleOrig || got[1] != ctaID || got[2] != ctaZone {
			t.Errorf("attributes %v (err %v), want tuple, id, zone", got, it.err)
		}
		b = b[l:]
	}
	if len(b) != 0 {
		t.Errorf("%d trailing bytes", len(b))
	}
}

func TestMarksValidate(t *testing.T) {
	tests := []struct {
		m    Marks
		want string
	}{
		{Marks{0x10000, 0x20000, 0x30000}, ""},
		{Marks{0x10000, 0, 0x30000}, ""},
		{Marks{0x10000, 0x20000, 0}, "mask is zero"},
		{Marks{0, 0x20000, 0x30000}, "allow value is zero"},
		{Marks{0x10000, 0x40000, 0x30000}, "inside the mask"},
		{Marks{0x10000, 0x10000, 0x30000}, "equal"},
	}
	for _, tt := range tests {
		err := tt.m.Validate()
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%+v: err %v, want %q", tt.m, err, tt.want)
		}
		r, err := NewRechecker(tt.m.Allow, tt.m.Deny, tt.m.Mask, nopLog)
		if (err == nil) != (tt.want == "") {
			t.Errorf("NewRechecker(%+v): err %v", tt.m, err)
		}
		if r != nil {
			r.Close()
		}
	}
}
