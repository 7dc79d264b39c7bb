package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The first byte a client sends tells the server what the connection is.
const (
	modePing = 'p' // answer one byte, then wait for the client's reset
	modeBulk = 'b' // count everything until the client goes away
)

// server is the Go server in the server pod's namespace.
type server struct {
	ln       *net.TCPListener
	received atomic.Int64 // bytes of bulk connections
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[*net.TCPConn]struct{} // open, for close
}

// startServer listens on port on every address of ns (the server pod
// holds the cache-miss lane's many server addresses too).
func startServer(ns *netNS, port uint16) (*server, error) {
	var ln net.Listener
	addr := netip.AddrPortFrom(netip.IPv4Unspecified(), port).String()
	if err := ns.Do(func() (err error) {
		ln, err = (&net.ListenConfig{}).Listen(context.Background(), "tcp4", addr)
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns.Name, err)
	}
	s := &server{ln: ln.(*net.TCPListener), conns: map[*net.TCPConn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.AcceptTCP()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. a connection reset before accept
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c)
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
		}
	}()
	return s, nil
}

func (s *server) serve(c *net.TCPConn) {
	// Closing first must never leave TIME_WAIT behind on this side either.
	_ = c.SetLinger(0)
	defer c.Close()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	switch b[0] {
	case modePing:
		if _, err := c.Write(b[:]); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c) // until the client's reset
	case modeBulk:
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			s.received.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
}

// close stops accepting and cuts the connections still open: a client
// that vanished without its reset must not keep close waiting.
func (s *server) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// connResult is what a connection-rate run measured.
type connResult struct {
	ok, failed int
	elapsed    time.Duration
	// connect holds the time connect() took for each successful
	// connection: from sending the SYN to processing the SYN-ACK.
	connect []time.Duration
	// firstErr is the first failure, for the report.
	firstErr error
}

func (r connResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

// Source ports the clients bind explicitly, handed out in turn across
// all workers and all phases of a run, so that a 4-tuple repeats only
// after the whole range has been used (about 55,000 connections; a run
// makes fewer): a connection never meets a socket or conntrack entry left
// by an earlier one.
const (
	firstPort = 10000
	lastPort  = 65000
)

// portCursor hands out source ports; safe for concurrent use.
type portCursor struct{ n atomic.Uint64 }

func (c *portCursor) next() int {
	return firstPort + int((c.n.Add(1)-1)%(lastPort-firstPort))
}

// connRate runs workers clients in the client namespace, each opening,
// using (one byte each way) and resetting connections of the pairs tg
// hands out one after the other, until d has passed, ctx ends, or
// maxConns connections (0: no limit) were attempted in total.
func connRate(ctx context.Context, ns *netNS, tg *targets, ports *portCursor, workers int, d time.Duration, maxConns int) (connResult, error) {
	results := make([]connResult, workers)
	errs := make([]error, workers)
	var attempts atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The thread stays in the namespace and is discarded when
			// this goroutine ends.
			if err := ns.EnterForGood(); err != nil {
				errs[w] = err
				return
			}
			results[w] = connLoop(ctx, tg, ports, deadline, &attempts, int64(maxConns))
		}()
	}
	wg.Wait()
	total := connResult{elapsed: time.Since(start)}
	for i, r := range results {
		if errs[i] != nil {
			return connResult{}, errs[i]
		}
		total.ok += r.ok
		total.failed += r.failed
		total.connect = append(total.connect, r.connect...)
		if total.firstErr == nil {
			total.firstErr = r.firstErr
		}
	}
	return total, ctx.Err()
}

// connLoop is one worker. It uses blocking system calls on its own
// thread: cheaper than the Go netpoller for this pattern, and the client
// must cost as little as it can, since it shares two cores with what it
// measures.
func connLoop(ctx context.Context, tg *targets, ports *portCursor, deadline time.Time, attempts *atomic.Int64, maxConns int64) connResult {
	var r connResult
	sa := &unix.SockaddrInet4{}
	local := &unix.SockaddrInet4{}
	var b [1]byte
	fail := func(err error) {
		r.failed++
		if r.firstErr == nil {
			r.firstErr = err
		}
	}
	for {
		// Every time: a failed connection takes a second.
		if time.Now().After(deadline) || ctx.Err() != nil {
			return r
		}
		if maxConns > 0 && attempts.Add(1) > maxConns {
			return r
		}
		c := tg.next()
		sa.Addr, sa.Port = c.dst.Addr().As4(), int(c.dst.Port())
		local.Addr, local.Port = c.src.As4(), ports.next()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fail(fmt.Errorf("socket: %w", err))
			continue
		}
		if err := prepare(fd, local); err != nil {
			unix.Close(fd)
			fail(err)
			continue
		}
		t0 := time.Now()
		if err := unix.Connect(fd, sa); err != nil {
			unix.Close(fd)
			fail(fmt.Errorf("connect from port %d: %w", local.Port, err))
			continue
		}
		took := time.Since(t0)
		b[0] = modePing
		if _, err := unix.Write(fd, b[:]); err != nil {
			unix.Close(fd)
			fail(fmt.Errorf("write: %w", err))
			continue
		}
		if n, err := unix.Read(fd, b[:]); err != nil || n != 1 {
			unix.Close(fd)
			fail(fmt.Errorf("read answer: n=%d: %w", n, err))
			continue
		}
		unix.Close(fd) // SO_LINGER 0: a reset, no TIME_WAIT
		r.ok++
		r.connect = append(r.connect, took)
	}
}

// prepare sets the options every client socket gets and binds it.
func prepare(fd int, local *unix.SockaddrInet4) error {
	// A dropped SYN must cost a failure, not the rest of the phase.
	tv := unix.Timeval{Sec: 1}
	for _, o := range []struct {
		name string
		set  func() error
	}{
		{"SO_REUSEADDR", func() error { return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }},
		{"SO_LINGER", func() error {
			return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}},
		{"SO_SNDTIMEO", func() error { return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv) }},
		{"SO_RCVTIMEO", func() error { return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) }},
	} {
		if err := o.set(); err != nil {
			return fmt.Errorf("%s: %w", o.name, err)
		}
	}
	if err := unix.Bind(fd, local); err != nil {
		return fmt.Errorf("bind port %d: %w", local.Port, err)
	}
	return nil
}

// throughputResult is what a bulk run measured at the receiver.
type throughputResult struct {
	bytes   int64
	elapsed time.Duration
}

func (t throughputResult) gbps() float64 {
	if t.elapsed <= 0 {
		return 0
	}
	return float64(t.bytes) * 8 / t.elapsed.Seconds() / 1e9
}

// bulkWarmup is sent before the measured window starts: slow start and
// the first packet's trip through the queue are not what (d) and (e)
// compare.
const bulkWarmup = 200 * time.Millisecond

// throughput sends one TCP flow from the client namespace to dst as fast
// as it goes and counts what the server receives during d, after a
// warm-up.
func throughput(ctx context.Context, ns *netNS, src netip.Addr, dst netip.AddrPort, srv *server, d time.Duration) (throughputResult, error) {
	var stop atomic.Bool
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			if err := ns.EnterForGood(); err != nil {
				return err
			}
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			defer unix.Close(fd)
			if err := prepare(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
				return err
			}
			if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}); err != nil {
				return fmt.Errorf("connect: %w", err)
			}
			buf := make([]byte, 256<<10)
			buf[0] = modeBulk
			for !stop.Load() {
				if _, err := unix.Write(fd, buf); err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
					return fmt.Errorf("write: %w", err)
				}
				buf[0] = 0
			}
			return nil
		}()
	}()
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-done:
			if err == nil {
				err = errors.New("sender stopped early")
			}
			return fmt.Errorf("bulk sender: %w", err)
		case <-time.After(d):
			return nil
		}
	}
	finish := func(err error) (throughputResult, error) {
		stop.Store(true)
		select {
		case serr := <-done:
			err = errors.Join(err, serr)
		case <-time.After(5 * time.Second):
			err = errors.Join(err, errors.New("bulk sender did not stop"))
		}
		return throughputResult{}, err
	}
	if err := sleep(bulkWarmup); err != nil {
		return finish(err)
	}
	b0, t0 := srv.received.Load(), time.Now()
	if err := sleep(d); err != nil {
		return finish(err)
	}
	res := throughputResult{bytes: srv.received.Load() - b0, elapsed: time.Since(t0)}
	if _, err := finish(nil); err != nil {
		return res, err
	}
	if res.bytes == 0 {
		return res, errors.New("bulk flow: the server received nothing")
	}
	return res, nil
}

// clientSocket is a client socket made ahead in a lane's client
// namespace (a socket belongs to the namespace it was created in, whatever
// thread uses it later), bound to its source port, for a connection to
// dst.
type clientSocket struct {
	fd   int
	dst  unix.SockaddrInet4
	port int
}

// openClientSockets makes n client sockets in ns for the next n pairs of
// tg. The SYN hold rounds use them to interleave the lanes connection by
// connection from one thread: no hand-off to a thread in each namespace
// between connections.
func openClientSockets(ns *netNS, n int, tg *targets, ports *portCursor) ([]clientSocket, error) {
	out := make([]clientSocket, 0, n)
	err := ns.Do(func() error {
		for range n {
			c := tg.next()
			local := &unix.SockaddrInet4{Addr: c.src.As4(), Port: ports.next()}
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			if err := prepare(fd, local); err != nil {
				unix.Close(fd)
				return err
			}
			out = append(out, clientSocket{fd: fd, dst: unix.SockaddrInet4{Addr: c.dst.Addr().As4(), Port: int(c.dst.Port())}, port: local.Port})
		}
		return nil
	})
	if err != nil {
		closeClientSockets(out)
		return nil, fmt.Errorf("client sockets in %s: %w", ns.Name, err)
	}
	return out, nil
}

// closeClientSockets closes sockets not used.
func closeClientSockets(cs []clientSocket) {
	for _, c := range cs {
		unix.Close(c.fd)
	}
}

// ping connects c, sends a byte, reads the answer and resets the
// connection (closing the socket); took is connect()'s time.
func (c clientSocket) ping() (took time.Duration, err error) {
	defer unix.Close(c.fd) // SO_LINGER 0: a reset, no TIME_WAIT
	t0 := time.Now()
	if err := unix.Connect(c.fd, &c.dst); err != nil {
		return 0, fmt.Errorf("connect from port %d: %w", c.port, err)
	}
	took = time.Since(t0)
	b := [1]byte{modePing}
	if _, err := unix.Write(c.fd, b[:]); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	if n, err := unix.Read(c.fd, b[:]); err != nil || n != 1 {
		return 0, fmt.Errorf("read answer: n=%d: %w", n, err)
	}
	return took, nil
}
