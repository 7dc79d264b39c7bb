package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Message types from linux/netfilter/nfnetlink_conntrack.h.
const (
	ctMsgNew    = 0
	ctMsgGet    = 1
	ctMsgDelete = 2

	nlmsgHdrLen = unix.SizeofNlMsghdr // 16
	nfgenHdrLen = 4                   // struct nfgenmsg
)

func ctType(msg uint16) uint16 { return unix.NFNL_SUBSYS_CTNETLINK<<8 | msg }

// recvTimeout bounds every receive: ctnetlink answers synchronously, so a
// receive that waits this long means the socket is out of step, and the
// recheck goroutine must not hang on it forever.
const recvTimeout = 5 * time.Second

// recvBufSize exceeds the largest datagram a netlink dump sends (the
// kernel caps a dump skb at 32 KiB), so a receive is never truncated.
const recvBufSize = 64 << 10

// nlSocket is a NETLINK_NETFILTER socket. It is bound to the network
// namespace of the thread that opened it for its whole life.
type nlSocket struct {
	fd  int
	seq uint32
}

func openSocket() (*nlSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netfilter netlink socket: %w", err)
	}
	// Error replies then carry only the failed message's header, not the
	// whole request: a batch of failed deletes stays small in the receive
	// buffer. Kernels before 4.3 lack the option and echo everything,
	// which costs space, not correctness.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket receive timeout: %w", err)
	}
	return &nlSocket{fd: fd, seq: uint32(time.Now().UnixNano())}, nil
}

func (s *nlSocket) close() {
	if s != nil && s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}

func (s *nlSocket) nextSeq() uint32 {
	s.seq++
	return s.seq
}

func (s *nlSocket) send(b []byte) error {
	for {
		err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err == unix.EINTR {
			continue
		}
		return err
	}
}

// recv reads one datagram into buf; flags are passed to recvmsg.
func (s *nlSocket) recv(buf []byte, flags int) (int, error) {
	for {
		n, _, rflags, _, err := unix.Recvmsg(s.fd, buf, nil, flags)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return 0, errors.New("netlink datagram truncated")
		}
		return n, nil
	}
}

// appendHeader appends a netlink and an nfgenmsg header; the length is
// patched by finishMessage.
func appendHeader(b []byte, typ, flags uint16, seq uint32, family uint8) []byte {
	var h [nlmsgHdrLen + nfgenHdrLen]byte
	binary.NativeEndian.PutUint16(h[4:6], typ)
	binary.NativeEndian.PutUint16(h[6:8], flags)
	binary.NativeEndian.PutUint32(h[8:12], seq)
	h[16] = family
	h[17] = unix.NFNETLINK_V0
	return append(b, h[:]...)
}

func finishMessage(b []byte, start int) {
	binary.NativeEndian.PutUint32(b[start:start+4], uint32(len(b)-start))
}

// appendAttrU32 appends a big-endian u32 attribute (ctnetlink's byte order).
func appendAttrU32(b []byte, typ uint16, v uint32) []byte {
	var a [8]byte
	binary.NativeEndian.PutUint16(a[0:2], 8)
	binary.NativeEndian.PutUint16(a[2:4], typ)
	binary.BigEndian.PutUint32(a[4:8], v)
	return append(b, a[:]...)
}

// appendRaw appends an attribute copied from a dump, padded to 4 bytes.
func appendRaw(b, attr []byte) []byte {
	b = append(b, attr...)
	var pad [3]byte
	return append(b, pad[:align4(len(attr))-len(attr)]...)
}

// dumpRequest is a dump of the entries whose connmark under mask equals
// mark, filtered in the kernel, of both families (AF_UNSPEC).
func dumpRequest(seq, mark, mask uint32) []byte {
	b := appendHeader(nil, ctType(ctMsgGet), unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, unix.AF_UNSPEC)
	b = appendAttrU32(b, ctaMark, mark)
	b = appendAttrU32(b, ctaMarkMask, mask)
	finishMessage(b, 0)
	return b
}

// nlError reads the errno of an NLMSG_ERROR or NLMSG_DONE payload (0 is
// an acknowledgement).
func nlError(payload []byte) syscall.Errno {
	if len(payload) < 4 {
		return 0
	}
	code := int32(binary.NativeEndian.Uint32(payload[0:4]))
	if code >= 0 {
		return 0
	}
	return syscall.Errno(-code)
}

// dump streams the entries marked mark/mask to fn, one datagram at a time
// through buf. fn gets the entry's family and attributes, which alias buf
// and are overwritten by the next receive. An error from fn or ctx stops
// the dump with the rest of it still pending on the socket: the caller
// must close the socket then.
func (s *nlSocket) dump(ctx context.Context, buf []byte, mark, mask uint32, fn func(family uint8, attrs []byte) error) error {
	seq := s.nextSeq()
	if err := s.send(dumpRequest(seq, mark, mask)); err != nil {
		return fmt.Errorf("conntrack dump request: %w", err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := s.recv(buf, 0)
		if err != nil {
			if err == unix.EAGAIN {
				return fmt.Errorf("conntrack dump: no answer within %v", recvTimeout)
			}
			return fmt.Errorf("conntrack dump: %w", err)
		}
		b := buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < nlmsgHdrLen || l > len(b) {
				return fmt.Errorf("conntrack dump: bad message length %d", l)
			}
			typ := binary.NativeEndian.Uint16(b[4:6])
			mseq := binary.NativeEndian.Uint32(b[8:12])
			payload := b[nlmsgHdrLen:l]
			b = b[min(align4(l), len(b)):]
			if mseq != seq {
				continue // a late reply to something else
			}
			switch typ {
			case unix.NLMSG_DONE:
				if errno := nlError(payload); errno != 0 {
					return fmt.Errorf("conntrack dump: %w", errno)
				}
				return nil
			case unix.NLMSG_ERROR:
				if errno := nlError(payload); errno != 0 {
					return fmt.Errorf("conntrack dump: %w", errno)
				}
			case ctType(ctMsgNew):
				if len(payload) < nfgenHdrLen {
					return errors.New("conntrack dump: entry without nfgenmsg header")
				}
				if err := fn(payload[0], payload[nfgenHdrLen:]); err != nil {
					return err
				}
			}
		}
	}
}

// deleteBatch collects delete requests to send in one datagram.
type deleteBatch struct {
	buf []byte
	n   int
}

// add appends the delete of e. The request names the entry by its
// original tuple (and zone) exactly as dumped, plus its ID: the kernel
// refuses the delete (ENOENT) when the tuple now belongs to a newer
// connection, which must not be cut for what the old one was. No ACK is
// asked for: the kernel answers only failures, so a batch costs one
// sendmsg and one receive of whatever failed.
func (d *deleteBatch) add(e *entry, seq uint32) {
	start := len(d.buf)
	d.buf = appendHeader(d.buf, ctType(ctMsgDelete), unix.NLM_F_REQUEST, seq, e.family)
	d.buf = appendRaw(d.buf, e.origTuple)
	if e.hasID {
		d.buf = appendAttrU32(d.buf, ctaID, e.id)
	}
	if e.zone != nil {
		d.buf = appendRaw(d.buf, e.zone)
	}
	finishMessage(d.buf, start)
	d.n++
}

func (d *deleteBatch) reset() {
	d.buf = d.buf[:0]
	d.n = 0
}

// deleteResult counts what became of a batch.
type deleteResult struct {
	deleted  int // gone because we asked
	vanished int // already gone (ENOENT: ended, or replaced by a newer connection)
	failed   int
	err      error // the first failure
}

// flush sends the batch and collects the failures. The kernel handles a
// netlink request synchronously inside sendmsg, so once send returns every
// error reply is already queued and a non-blocking drain sees them all.
func (s *nlSocket) flush(d *deleteBatch, buf []byte) deleteResult {
	var r deleteResult
	if d.n == 0 {
		return r
	}
	defer d.reset()
	if err := s.send(d.buf); err != nil {
		r.failed, r.err = d.n, fmt.Errorf("send %d conntrack deletes: %w", d.n, err)
		return r
	}
	for {
		n, err := s.recv(buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			// ENOBUFS: replies were lost, so which deletes failed is
			// unknown; count none as done.
			r.failed, r.vanished, r.err = d.n, 0, fmt.Errorf("conntrack delete replies: %w", err)
			return r
		}
		b := buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < nlmsgHdrLen || l > len(b) {
				break
			}
			typ := binary.NativeEndian.Uint16(b[4:6])
			payload := b[nlmsgHdrLen:l]
			b = b[min(align4(l), len(b)):]
			if typ != unix.NLMSG_ERROR {
				continue
			}
			switch errno := nlError(payload); errno {
			case 0:
			case unix.ENOENT:
				r.vanished++
			default:
				r.failed++
				if r.err == nil {
					r.err = fmt.Errorf("conntrack delete: %w", errno)
				}
			}
		}
	}
	r.deleted = max(d.n-r.vanished-r.failed, 0)
	return r
}

// threadNetns is the network namespace of the calling thread.
const threadNetns = "/proc/thread-self/ns/net"

// nsHandle pins the network namespace a Rechecker works in, so that a
// socket reopened later (after an aborted dump) lands in the same one, not
// in whatever namespace the thread that happens to reopen it is in.
type nsHandle struct {
	f        *os.File
	dev, ino uint64
}

// pinNetns pins the calling thread's network namespace.
func pinNetns() (*nsHandle, error) {
	f, err := os.Open(threadNetns)
	if err != nil {
		return nil, fmt.Errorf("open own network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat own network namespace: %w", err)
	}
	return &nsHandle{f: f, dev: st.Dev, ino: st.Ino}, nil
}

func (h *nsHandle) close() {
	if h != nil {
		h.f.Close()
	}
}

// openSocketIn opens a socket in the pinned namespace. When the thread
// that runs this is already there (always, in an agent process, which
// lives in one namespace) that is a plain open, needing no privilege
// beyond the socket's. Otherwise the socket is opened on a thread switched
// into the namespace for the purpose (which takes CAP_SYS_ADMIN) and
// switched back; a thread that cannot be switched back is never reused.
func openSocketIn(h *nsHandle) (*nlSocket, error) {
	if h == nil {
		return openSocket()
	}
	type result struct {
		s   *nlSocket
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var st unix.Stat_t
		if err := unix.Stat(threadNetns, &st); err == nil && st.Dev == h.dev && st.Ino == h.ino {
			s, err := openSocket()
			runtime.UnlockOSThread()
			ch <- result{s, err}
			return
		}
		orig, err := os.Open(threadNetns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("open own network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(h.f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("enter the recheck's network namespace: %w", err)}
			return
		}
		s, err := openSocket()
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			// Stay locked: the thread exits with this goroutine.
			ch <- result{s, err}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{s, err}
	}()
	r := <-ch
	return r.s, r.err
}
