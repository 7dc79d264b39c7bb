package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// serverKey is one listening socket a group of scenarios needs: a probe
// destination address and port in a namespace.
type serverKey struct {
	place place
	addr  netip.Addr
	port  int
	proto string // TCP or UDP; SCTP is seen by the per-namespace receivers
}

// servers are the listeners of one topology: a TCP listener that accepts
// and closes, a UDP socket that echoes, per serverKey, and raw SCTP
// receivers in every namespace.
type servers struct {
	closers []io.Closer
	wg      sync.WaitGroup
	sctp    *sctpRegistry
}

func (s *servers) close() {
	for _, c := range s.closers {
		_ = c.Close()
	}
	s.wg.Wait()
}

func startServers(t *topology, keys []serverKey) (_ *servers, err error) {
	s := &servers{sctp: newSCTPRegistry()}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	for _, k := range keys {
		ns := t.nsOf(k.place)
		ap := netip.AddrPortFrom(k.addr, uint16(k.port)).String()
		switch k.proto {
		case "TCP":
			var ln net.Listener
			err := ns.Do(func() (err error) {
				ln, err = net.Listen("tcp", ap)
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("listen tcp %s in %s: %w", ap, ns.Name, err)
			}
			s.closers = append(s.closers, ln)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_ = c.Close()
				}
			}()
		case "UDP":
			var pc net.PacketConn
			err := ns.Do(func() (err error) {
				pc, err = net.ListenPacket("udp", ap)
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("listen udp %s in %s: %w", ap, ns.Name, err)
			}
			s.closers = append(s.closers, pc)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				buf := make([]byte, 2048)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						if errors.Is(err, net.ErrClosed) {
							return
						}
						continue // an ICMP error queued on the socket
					}
					_, _ = pc.WriteTo(buf[:n], from)
				}
			}()
		}
	}
	for _, ns := range t.all() {
		if ns == t.ul {
			continue
		}
		for _, af := range []int{unix.AF_INET, unix.AF_INET6} {
			f, err := openRawSCTP(ns, af)
			if err != nil {
				return nil, err
			}
			s.closers = append(s.closers, f)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.sctp.receive(f, af)
			}()
		}
	}
	return s, nil
}

// openRawSCTP opens a raw SCTP socket in ns. This kernel has no SCTP
// stack, so a raw socket is the only way to send SCTP or to see that it
// arrived; it gets a copy of every SCTP packet delivered locally, after
// the INPUT hooks.
func openRawSCTP(ns *NS, af int) (*os.File, error) {
	var fd int
	err := ns.Do(func() (err error) {
		fd, err = unix.Socket(af, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("raw SCTP socket in %s: %w", ns.Name, err)
	}
	return os.NewFile(uintptr(fd), "sctp-raw-"+ns.Name), nil
}

// sctpRegistry matches arriving SCTP INITs to the probes waiting for them
// by the INIT's initiate tag, which each probe attempt picks uniquely.
type sctpRegistry struct {
	mu    sync.Mutex
	waits map[uint32]sctpWait
}

type sctpWait struct {
	sport, dport uint16
	arrived      chan struct{}
}

func newSCTPRegistry() *sctpRegistry {
	return &sctpRegistry{waits: map[uint32]sctpWait{}}
}

// expect registers tag; the returned channel closes when the INIT arrives.
func (r *sctpRegistry) expect(tag uint32, sport, dport uint16) (<-chan struct{}, func()) {
	w := sctpWait{sport: sport, dport: dport, arrived: make(chan struct{})}
	r.mu.Lock()
	r.waits[tag] = w
	r.mu.Unlock()
	return w.arrived, func() {
		r.mu.Lock()
		delete(r.waits, tag)
		r.mu.Unlock()
	}
}

func (r *sctpRegistry) deliver(tag uint32, sport, dport uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.waits[tag]
	if !ok || w.sport != sport || w.dport != dport {
		return
	}
	delete(r.waits, tag)
	close(w.arrived)
}

// receive reads one raw socket until it is closed. IPv4 raw sockets deliver
// the IP header, IPv6 ones only the payload.
func (r *sctpRegistry) receive(f *os.File, af int) {
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			continue
		}
		pkt := buf[:n]
		if af == unix.AF_INET {
			if len(pkt) < 20 {
				continue
			}
			ihl := int(pkt[0]&0x0f) * 4
			if ihl < 20 || len(pkt) < ihl {
				continue
			}
			pkt = pkt[ihl:]
		}
		// Common header (12 bytes), then the INIT chunk: type 1, flags,
		// length, initiate tag.
		if len(pkt) < 20 || pkt[12] != 1 {
			continue
		}
		r.deliver(binary.BigEndian.Uint32(pkt[16:20]), binary.BigEndian.Uint16(pkt[0:2]), binary.BigEndian.Uint16(pkt[2:4]))
	}
}
