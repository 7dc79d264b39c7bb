package dataplane

import (
	"encoding/binary"
	"errors"
	"testing"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"golang.org/x/sys/unix"
)

// packetMsg builds a NFQNL_MSG_PACKET as the kernel sends it: packet
// header, mark (when non-zero), an attribute the reader skips, payload.
func packetMsg(id, mark uint32, payload []byte) []byte {
	b := make([]byte, 4096)
	off := nlmsgHdrLen + nfgenHdrLen
	var hdr [7]byte // packet_id, hw_protocol, hook
	binary.BigEndian.PutUint32(hdr[0:4], id)
	binary.BigEndian.PutUint16(hdr[4:6], 0x0800)
	hdr[6] = 2
	off += putAttr(b[off:], nfqaPacketHdr|0x8000, hdr[:]) // with NLA_F_NESTED set: the type mask must drop it
	if mark != 0 {
		var m [4]byte
		binary.BigEndian.PutUint32(m[:], mark)
		off += putAttr(b[off:], nfqaMark, m[:])
	}
	off += putAttr(b[off:], 5, []byte{0, 0, 0, 7}) // NFQA_IFINDEX_INDEV
	off += putAttr(b[off:], nfqaPayload, payload)
	putNlmsg(b, off, nfqnlMsgPacket, 0, 0, 100)
	return b[:off]
}

func TestParsePacket(t *testing.T) {
	payload := []byte{0x45, 0, 0, 40, 1} // odd length: the next attribute is padded
	for _, tt := range []struct {
		name string
		id   uint32
		mark uint32
	}{{"unmarked", 7, 0}, {"marked", 0xfffffffe, 0x4000}} {
		t.Run(tt.name, func(t *testing.T) {
			two := append(packetMsg(tt.id, tt.mark, payload), packetMsg(tt.id+1, 0, nil)...)
			m, rest, err := nextMessage(two)
			if err != nil {
				t.Fatal(err)
			}
			if m.typ != nfnlSubsysQueue<<8|nfqnlMsgPacket {
				t.Fatalf("type %#x", m.typ)
			}
			p, err := parsePacket(m.body[nfgenHdrLen:])
			if err != nil {
				t.Fatal(err)
			}
			if !p.hasID || p.id != tt.id || p.mark != tt.mark || string(p.payload) != string(payload) {
				t.Fatalf("parsed %+v, want id %d mark %#x payload %x", p, tt.id, tt.mark, payload)
			}
			m, rest, err = nextMessage(rest)
			if err != nil || len(rest) != 0 {
				t.Fatalf("second message: %v, %d bytes left", err, len(rest))
			}
			if p, err := parsePacket(m.body[nfgenHdrLen:]); err != nil || p.id != tt.id+1 || len(p.payload) != 0 {
				t.Fatalf("second packet %+v, %v", p, err)
			}
		})
	}
}

func TestParseDamaged(t *testing.T) {
	msg := packetMsg(9, 0, []byte{1, 2, 3, 4})
	for _, n := range []int{0, 3, nlmsgHdrLen - 1} {
		if _, _, err := nextMessage(msg[:n]); !errors.Is(err, errTruncated) {
			t.Errorf("%d bytes: err %v, want truncated", n, err)
		}
	}
	// The header says more than was read.
	if _, _, err := nextMessage(msg[:len(msg)-1]); !errors.Is(err, errTruncated) {
		t.Errorf("short message: err %v, want truncated", err)
	}
	// An attribute running past the end: an error, but the id read
	// before it is kept (the reader answers such a packet).
	body := msg[nlmsgHdrLen+nfgenHdrLen:]
	bad := append([]byte(nil), body...)
	last := len(bad) - align4(nlaHdrLen+4)
	binary.NativeEndian.PutUint16(bad[last:], 200)
	p, err := parsePacket(bad)
	if err == nil || !p.hasID || p.id != 9 {
		t.Errorf("parsed %+v, %v; want the id and an error", p, err)
	}
	// Short fixed attributes.
	if _, err := parsePacket([]byte{6, 0, nfqaPacketHdr, 0, 1, 2, 0, 0}); err == nil {
		t.Error("a 2-byte packet header was accepted")
	}
	if _, err := parsePacket([]byte{6, 0, nfqaMark, 0, 1, 2, 0, 0}); err == nil {
		t.Error("a 2-byte mark was accepted")
	}
	if p, err := parsePacket(nil); err != nil || p.hasID {
		t.Errorf("no attributes: %+v, %v", p, err)
	}
}

func TestAppendVerdict(t *testing.T) {
	ne := binary.NativeEndian
	for _, tt := range []struct {
		name     string
		verdict  int
		mark     uint32
		withMark bool
	}{{"repeat with mark", nfqueue.NfRepeat, 0x14000, true}, {"drop", nfqueue.NfDrop, 0, false}} {
		t.Run(tt.name, func(t *testing.T) {
			b := appendVerdict(make([]byte, 0, verdictLen), 101, 0x01020304, tt.verdict, tt.mark, tt.withMark)
			want := verdictLen
			if !tt.withMark {
				want -= nlaHdrLen + 4
			}
			if len(b) != want || int(ne.Uint32(b[0:4])) != want {
				t.Fatalf("length %d (header %d), want %d", len(b), ne.Uint32(b[0:4]), want)
			}
			if typ := ne.Uint16(b[4:6]); typ != nfnlSubsysQueue<<8|nfqnlMsgVerdict {
				t.Errorf("type %#x", typ)
			}
			if flags := ne.Uint16(b[6:8]); flags != unix.NLM_F_REQUEST {
				t.Errorf("flags %#x", flags)
			}
			if q := binary.BigEndian.Uint16(b[18:20]); q != 101 {
				t.Errorf("queue %d", q)
			}
			a := b[20:]
			if ne.Uint16(a[0:2]) != 12 || ne.Uint16(a[2:4]) != nfqaVerdictHdr ||
				binary.BigEndian.Uint32(a[4:8]) != uint32(tt.verdict) || binary.BigEndian.Uint32(a[8:12]) != 0x01020304 {
				t.Errorf("verdict header % x", a[:12])
			}
			if tt.withMark {
				a = a[12:]
				if ne.Uint16(a[0:2]) != 8 || ne.Uint16(a[2:4]) != nfqaMark || binary.BigEndian.Uint32(a[4:8]) != tt.mark {
					t.Errorf("mark % x", a)
				}
			}
		})
	}
}

func TestConfigMsg(t *testing.T) {
	b := configMsg(100, bindSeq, nfqueue.NfQnlCopyPacket, CopyRange, 8192, nfqueue.NfQaCfgFlagGSO|nfqueue.NfQaCfgFlagFailOpen)
	ne := binary.NativeEndian
	if int(ne.Uint32(b[0:4])) != len(b) || ne.Uint16(b[4:6]) != nfnlSubsysQueue<<8|nfqnlMsgConfig ||
		ne.Uint16(b[6:8]) != unix.NLM_F_REQUEST|unix.NLM_F_ACK || ne.Uint32(b[8:12]) != bindSeq {
		t.Fatalf("header % x", b[:16])
	}
	got := map[uint16][]byte{}
	for a := b[20:]; len(a) > 0; {
		n := int(ne.Uint16(a[0:2]))
		got[ne.Uint16(a[2:4])] = a[4:n]
		a = a[align4(n):]
	}
	be := binary.BigEndian
	if c := got[nfqaCfgCmd]; len(c) != 4 || c[0] != nfqnlCfgCmdBind {
		t.Errorf("command % x", c)
	}
	if p := got[nfqaCfgParams]; len(p) != 5 || be.Uint32(p[0:4]) != CopyRange || p[4] != nfqueue.NfQnlCopyPacket {
		t.Errorf("params % x", p)
	}
	if l := got[nfqaCfgQueueMaxLen]; len(l) != 4 || be.Uint32(l) != 8192 {
		t.Errorf("queue length % x", l)
	}
	want := uint32(nfqueue.NfQaCfgFlagGSO | nfqueue.NfQaCfgFlagFailOpen)
	if f, m := got[nfqaCfgFlags], got[nfqaCfgMask]; len(f) != 4 || len(m) != 4 || be.Uint32(f) != want || be.Uint32(m) != want {
		t.Errorf("flags % x mask % x", f, m)
	}
	if _, ok := got[nfqaCfgFlags]; !ok {
		t.Error("no flags")
	}
	if b := configMsg(100, bindSeq, nfqueue.NfQnlCopyPacket, CopyRange, 8192, 0); len(b) >= 20+8+12+8+8+8 {
		t.Errorf("no flags, yet %d bytes", len(b))
	}
}

func TestAckErrno(t *testing.T) {
	ack := make([]byte, 20)
	if err := ackErrno(ack); err != nil {
		t.Errorf("ack: %v", err)
	}
	e := int32(-int32(unix.EPERM))
	binary.NativeEndian.PutUint32(ack[0:4], uint32(e))
	if err := ackErrno(ack); !errors.Is(err, unix.EPERM) {
		t.Errorf("err %v, want EPERM", err)
	}
	if err := ackErrno(ack[:2]); !errors.Is(err, errTruncated) {
		t.Errorf("short: %v", err)
	}
}

// TestWireAllocs: splitting, parsing and encoding a verdict allocate
// nothing; with TestHandleAllocs that is the whole per-packet path.
func TestWireAllocs(t *testing.T) {
	msg := packetMsg(3, 0x4000, syn4(t, 80))
	buf := make([]byte, 0, verdictLen)
	n := testing.AllocsPerRun(1000, func() {
		m, _, err := nextMessage(msg)
		if err != nil {
			t.Fatal(err)
		}
		p, err := parsePacket(m.body[nfgenHdrLen:])
		if err != nil {
			t.Fatal(err)
		}
		buf = appendVerdict(buf[:0], 100, p.id, nfqueue.NfRepeat, p.mark|0x10000, true)
	})
	if n != 0 {
		t.Errorf("%.0f allocations per packet, want 0", n)
	}
}
