package realcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// forwarder accepts TCP connections on a root-namespace loopback port and
// relays each to target inside ns: users and tests reach the API server
// without the root namespace getting an address, route or rule.
type forwarder struct {
	ln     net.Listener
	ns     *netns.NS
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newForwarder(listen string, ns *netns.NS, target string) (*forwarder, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("forwarder: listen %s: %w", listen, err)
	}
	f := &forwarder{ln: ln, ns: ns, target: target, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Addr is the root-namespace address clients connect to.
func (f *forwarder) Addr() string { return f.ln.Addr().String() }

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			f.relay(c)
		}()
	}
}

func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

// dial opens a TCP connection from inside the forwarder's namespace: the
// socket is created on a thread that has entered it, and a socket keeps
// its namespace for life.
func dialIn(ctx context.Context, ns *netns.NS, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

func (f *forwarder) relay(c net.Conn) {
	up, err := dialIn(context.Background(), f.ns, "tcp", f.target)
	if err != nil {
		return
	}
	if !f.track(up) {
		up.Close()
		return
	}
	defer f.untrack(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}

// Close stops accepting, cuts every relayed connection and waits for the
// relays to end.
func (f *forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// DialFrom opens a TCP connection to addr from inside ns (a node's or the
// control plane's namespace), as a client living there would.
func DialFrom(ctx context.Context, ns *netns.NS, addr string) (net.Conn, error) {
	return dialIn(ctx, ns, "tcp", addr)
}
