package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// The NFQUEUE wire format (linux/netfilter/nfnetlink_queue.h) for the
// three messages the reader exchanges on go-nfqueue's netlink socket: the
// queue configuration, a queued packet and a verdict. go-nfqueue's own
// receive loop and verdict calls allocate a buffer, attributes and
// closures per packet and wake the reader through the Go netpoller; the
// reader reads and answers on the socket itself, into buffers it reuses
// (docs/performance.md).
const (
	nfnlSubsysQueue = 3

	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2
	nfqaMark       = 3
	nfqaPayload    = 10

	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxLen = 3
	nfqaCfgMask        = 4
	nfqaCfgFlags       = 5

	nfqnlCfgCmdBind = 1

	nlmsgHdrLen = unix.SizeofNlMsghdr // 16
	nfgenHdrLen = 4                   // struct nfgenmsg
	nlaHdrLen   = unix.SizeofNlAttr   // 4
	nlaTypeMask = 0x3fff              // without NLA_F_NESTED, NLA_F_NET_BYTEORDER

	// verdictLen is one verdict message with a mark: header, nfgenmsg,
	// NFQA_VERDICT_HDR (verdict, id) and NFQA_MARK.
	verdictLen = nlmsgHdrLen + nfgenHdrLen + nlaHdrLen + 8 + nlaHdrLen + 4
)

func align4(n int) int { return (n + 3) &^ 3 }

// putNlmsg writes a netlink and nfgenmsg header for queue at b[0:20].
func putNlmsg(b []byte, length int, typ, flags uint16, seq uint32, queue uint16) {
	ne := binary.NativeEndian
	ne.PutUint32(b[0:4], uint32(length))
	ne.PutUint16(b[4:6], nfnlSubsysQueue<<8|typ)
	ne.PutUint16(b[6:8], flags)
	ne.PutUint32(b[8:12], seq)
	ne.PutUint32(b[12:16], 0) // to the kernel
	b[16] = unix.AF_UNSPEC    // nfgen_family
	b[17] = 0                 // NFNETLINK_V0
	binary.BigEndian.PutUint16(b[18:20], queue)
}

// putAttr writes one attribute at b and returns its aligned length.
func putAttr(b []byte, typ uint16, data []byte) int {
	n := nlaHdrLen + len(data)
	binary.NativeEndian.PutUint16(b[0:2], uint16(n))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[4:], data)
	for i := n; i < align4(n); i++ {
		b[i] = 0
	}
	return align4(n)
}

// configMsg is the one message that binds queue and configures it: the
// kernel applies a bind command, copy parameters, queue length and flags
// from one message in that order, and acknowledges once.
func configMsg(queue uint16, seq uint32, copyMode uint8, copyRange, maxLen, flags uint32) []byte {
	b := make([]byte, 128)
	off := nlmsgHdrLen + nfgenHdrLen
	off += putAttr(b[off:], nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, unix.AF_UNSPEC})
	var params [5]byte // struct nfqnl_msg_config_params, packed
	binary.BigEndian.PutUint32(params[0:4], copyRange)
	params[4] = copyMode
	off += putAttr(b[off:], nfqaCfgParams, params[:])
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], maxLen)
	off += putAttr(b[off:], nfqaCfgQueueMaxLen, v[:])
	if flags != 0 {
		binary.BigEndian.PutUint32(v[:], flags)
		off += putAttr(b[off:], nfqaCfgFlags, v[:])
		off += putAttr(b[off:], nfqaCfgMask, v[:])
	}
	putNlmsg(b, off, nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, queue)
	return b[:off]
}

// appendVerdict appends a verdict for packet id of queue to b; with
// withMark it sets the packet mark too.
func appendVerdict(b []byte, queue uint16, id uint32, verdict int, mark uint32, withMark bool) []byte {
	off := len(b)
	b = append(b, make([]byte, verdictLen)...)
	m := b[off:]
	n := nlmsgHdrLen + nfgenHdrLen
	var vh [8]byte
	binary.BigEndian.PutUint32(vh[0:4], uint32(verdict))
	binary.BigEndian.PutUint32(vh[4:8], id)
	n += putAttr(m[n:], nfqaVerdictHdr, vh[:])
	if withMark {
		var mk [4]byte
		binary.BigEndian.PutUint32(mk[:], mark)
		n += putAttr(m[n:], nfqaMark, mk[:])
	}
	putNlmsg(m, n, nfqnlMsgVerdict, unix.NLM_F_REQUEST, 0, queue)
	return b[:off+n]
}

// packet is what the reader needs of one queued packet.
type packet struct {
	id    uint32
	hasID bool
	mark  uint32
	// payload is the copied head of the packet, from its network header;
	// it points into the receive buffer.
	payload []byte
}

// errTruncated: a message or attribute runs past the end of what was read.
var errTruncated = errors.New("truncated netlink message")

// parsePacket reads a NFQNL_MSG_PACKET's attributes (after the nfgenmsg).
func parsePacket(attrs []byte) (packet, error) {
	var p packet
	for len(attrs) >= nlaHdrLen {
		n := int(binary.NativeEndian.Uint16(attrs[0:2]))
		typ := binary.NativeEndian.Uint16(attrs[2:4]) & nlaTypeMask
		if n < nlaHdrLen || n > len(attrs) {
			return p, errTruncated
		}
		data := attrs[nlaHdrLen:n]
		switch typ {
		case nfqaPacketHdr:
			if len(data) < 4 {
				return p, fmt.Errorf("packet header of %d bytes", len(data))
			}
			p.id, p.hasID = binary.BigEndian.Uint32(data[0:4]), true
		case nfqaMark:
			if len(data) < 4 {
				return p, fmt.Errorf("mark of %d bytes", len(data))
			}
			p.mark = binary.BigEndian.Uint32(data[0:4])
		case nfqaPayload:
			p.payload = data
		}
		attrs = attrs[min(align4(n), len(attrs)):]
	}
	return p, nil
}

// message is one netlink message of a read.
type message struct {
	typ  uint16
	seq  uint32
	body []byte // after the netlink header
}

// nextMessage splits the first message off b.
func nextMessage(b []byte) (message, []byte, error) {
	if len(b) < nlmsgHdrLen {
		return message{}, nil, errTruncated
	}
	n := int(binary.NativeEndian.Uint32(b[0:4]))
	if n < nlmsgHdrLen || n > len(b) {
		return message{}, nil, errTruncated
	}
	m := message{typ: binary.NativeEndian.Uint16(b[4:6]), seq: binary.NativeEndian.Uint32(b[8:12]), body: b[nlmsgHdrLen:n]}
	return m, b[min(align4(n), len(b)):], nil
}

// ackErrno is the error an NLMSG_ERROR message carries (nil: an ack).
func ackErrno(body []byte) error {
	if len(body) < 4 {
		return errTruncated
	}
	if e := int32(binary.NativeEndian.Uint32(body[0:4])); e != 0 {
		return unix.Errno(-e)
	}
	return nil
}
