package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// Source ports are handed out from this range, in order, per source
// namespace, so that no probe reuses the 5-tuple of an earlier one (until
// 25000 ports have been handed out in one namespace, minutes later): a UDP
// or SCTP flow of an earlier scenario may still be in conntrack with the
// verdict of an earlier policy.
const (
	firstSourcePort = 40000
	lastSourcePort  = 65000
)

// portAllocator hands out source ports in one namespace, skipping the
// ports its servers listen on.
type portAllocator struct {
	next atomic.Uint32
	skip map[uint16]bool
}

func (p *portAllocator) get() uint16 {
	for {
		n := p.next.Add(1) - 1
		port := uint16(firstSourcePort + n%(lastSourcePort-firstSourcePort))
		if !p.skip[port] {
			return port
		}
	}
}

// outcome is what one probe attempt saw.
type outcome struct {
	allowed bool
	detail  string // connected, timeout, refused, ...
	err     error  // the harness failed, not the network
}

// prober sends probes inside one topology.
type prober struct {
	t       *topology
	sctp    *sctpRegistry
	ports   map[*NS]*portAllocator
	timeout time.Duration
}

func newProber(t *topology, s *servers, keys []serverKey, timeout time.Duration) *prober {
	p := &prober{t: t, sctp: s.sctp, ports: map[*NS]*portAllocator{}, timeout: timeout}
	for _, ns := range t.all() {
		p.ports[ns] = &portAllocator{skip: map[uint16]bool{}}
	}
	for _, k := range keys {
		p.ports[t.nsOf(k.place)].skip[uint16(k.port)] = true
	}
	return p
}

func (p *prober) once(ctx context.Context, src, dst endpoint, port int, proto string) outcome {
	ns := p.t.nsOf(src.place)
	sport := p.ports[ns].get()
	switch proto {
	case "TCP":
		return p.tcp(ctx, ns, src.addr, sport, netip.AddrPortFrom(dst.addr, uint16(port)))
	case "UDP":
		return p.udp(ctx, ns, src.addr, sport, netip.AddrPortFrom(dst.addr, uint16(port)))
	case "SCTP":
		return p.sctpInit(ctx, ns, src.addr, sport, netip.AddrPortFrom(dst.addr, uint16(port)))
	}
	return outcome{err: fmt.Errorf("unknown protocol %q", proto)}
}

// classify turns a socket error into a verdict. A drop shows as a timeout;
// a reject as a refusal or an unreachable error; a local netfilter drop of
// the node's own traffic as EPERM.
func classify(err error) outcome {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return outcome{detail: "timeout"}
	case errors.Is(err, syscall.ECONNREFUSED):
		return outcome{detail: "refused"}
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return outcome{detail: "unreachable"}
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return outcome{detail: "blocked locally"}
	case errors.Is(err, syscall.ECONNRESET):
		return outcome{detail: "reset"}
	}
	return outcome{err: err}
}

func (p *prober) tcp(ctx context.Context, ns *NS, src netip.Addr, sport uint16, dst netip.AddrPort) outcome {
	var o outcome
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: p.timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, sport))}
		c, err := d.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			o = classify(err)
			return nil
		}
		// Reset rather than close: thousands of probes would otherwise
		// leave as many TIME_WAIT sockets behind.
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
		o = outcome{allowed: true, detail: "connected"}
		return nil
	})
	if err != nil {
		return outcome{err: err}
	}
	return o
}

func (p *prober) udp(ctx context.Context, ns *NS, src netip.Addr, sport uint16, dst netip.AddrPort) outcome {
	var c *net.UDPConn
	err := ns.Do(func() (err error) {
		c, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, sport)), net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		return outcome{err: fmt.Errorf("udp socket in %s: %w", ns.Name, err)}
	}
	defer c.Close()
	deadline := time.Now().Add(p.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	msg := fmt.Appendf(nil, "nfqp-probe %s:%d > %s", src, sport, dst)
	if _, err := c.Write(msg); err != nil {
		return classify(err)
	}
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return classify(err)
		}
		if string(buf[:n]) == string(msg) {
			return outcome{allowed: true, detail: "echoed"}
		}
	}
}

// sctpInit sends an SCTP INIT from a raw socket and waits for the
// destination namespace's raw receiver to see it.
func (p *prober) sctpInit(ctx context.Context, ns *NS, src netip.Addr, sport uint16, dst netip.AddrPort) outcome {
	tag := rand.Uint32() | 1 // nonzero, as RFC 9260 requires
	arrived, cancel := p.sctp.expect(tag, sport, dst.Port())
	defer cancel()

	if src.Is4() != dst.Addr().Is4() {
		return outcome{err: fmt.Errorf("SCTP from %s to %s: mixed address families", src, dst.Addr())}
	}
	af := unix.AF_INET
	var srcSA, dstSA unix.Sockaddr
	if src.Is4() {
		srcSA, dstSA = &unix.SockaddrInet4{Addr: src.As4()}, &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	} else {
		af = unix.AF_INET6
		srcSA, dstSA = &unix.SockaddrInet6{Addr: src.As16()}, &unix.SockaddrInet6{Addr: dst.Addr().As16()}
	}
	var fd int
	err := ns.Do(func() (err error) {
		fd, err = unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		return err
	})
	if err != nil {
		return outcome{err: fmt.Errorf("raw SCTP socket in %s: %w", ns.Name, err)}
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, srcSA); err != nil {
		return outcome{err: fmt.Errorf("bind raw SCTP socket to %s: %w", src, err)}
	}
	buf := gopacket.NewSerializeBuffer()
	err = gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true},
		&layers.SCTP{SrcPort: layers.SCTPPort(sport), DstPort: layers.SCTPPort(dst.Port())},
		&layers.SCTPInit{
			SCTPChunk:                      layers.SCTPChunk{Type: layers.SCTPChunkTypeInit},
			InitiateTag:                    tag,
			AdvertisedReceiverWindowCredit: 65535,
			OutboundStreams:                1,
			InboundStreams:                 1,
			InitialTSN:                     tag,
		})
	if err != nil {
		return outcome{err: fmt.Errorf("build SCTP INIT: %w", err)}
	}
	if err := unix.Sendto(fd, buf.Bytes(), 0, dstSA); err != nil {
		return classify(err)
	}
	timer := time.NewTimer(p.timeout)
	defer timer.Stop()
	select {
	case <-arrived:
		return outcome{allowed: true, detail: "INIT arrived"}
	case <-timer.C:
		return outcome{detail: "timeout"}
	case <-ctx.Done():
		return outcome{err: ctx.Err()}
	}
}
