package scale

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// verdict is what a probe connection saw. The agents run with
// --deny-action reject, so a denied connection fails at once with a reset
// instead of timing out, and every probe ends within a round trip.
type verdict int8

const (
	unknown verdict = iota // timed out or failed otherwise
	allowed                // connected
	denied                 // refused (the agent's reset)
)

// podNS is a pod stand-in on node 0: a namespace with one address, wired
// to the node namespace by a veth whose node end carries the pod CIDR's
// gateway address.
type podNS struct {
	ns   *netns.NS
	addr netip.Addr
}

// newPodNS creates pod host h of node 0 and wires it to node.
func newPodNS(ctx context.Context, node *nodeNS, h int, cleanup func(func())) (*podNS, error) {
	ns, err := newNS(ctx, fmt.Sprintf("p%d", h), cleanup)
	if err != nil {
		return nil, err
	}
	addr, gw := podAddr(node.index, h), podAddr(node.index, 1)
	hostIf := fmt.Sprintf("vp%d", h)
	// Created inside the node namespace, the peer moved straight into the
	// pod's: no link ever exists in the root namespace.
	if err := node.ns.IPBatch(ctx, []string{
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", hostIf, ns.Name),
		fmt.Sprintf("addr add %s/32 dev %s", gw, hostIf),
		fmt.Sprintf("link set %s up", hostIf),
		fmt.Sprintf("route add %s/32 dev %s", addr, hostIf),
	}); err != nil {
		return nil, err
	}
	if err := ns.IPBatch(ctx, []string{
		fmt.Sprintf("addr add %s/32 dev eth0", addr),
		"link set eth0 up",
		fmt.Sprintf("route add %s/32 dev eth0", gw),
		fmt.Sprintf("route add default via %s", gw),
	}); err != nil {
		return nil, err
	}
	return &podNS{ns: ns, addr: addr}, nil
}

// listen serves probePort: every connection is accepted and closed.
func (p *podNS) listen(cleanup func(func())) error {
	var l net.Listener
	if err := p.ns.Do(func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(p.addr.String(), strconv.Itoa(probePort)))
		return err
	}); err != nil {
		return err
	}
	cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return nil
}

// result is one probe connection.
type result struct {
	done time.Time
	v    verdict
}

// prober sends one new connection after another from a pod to a target,
// each a new flow (a fresh source port) that the agent's queue decides,
// and keeps the recent results.
type prober struct {
	from   *podNS
	target string

	mu      sync.Mutex
	results []result
	wake    chan struct{}
}

func newProber(from *podNS, to netip.Addr) *prober {
	return &prober{from: from, target: net.JoinHostPort(to.String(), strconv.Itoa(probePort)), wake: make(chan struct{})}
}

// run probes every interval until ctx ends.
func (p *prober) run(ctx context.Context, interval time.Duration) {
	for ctx.Err() == nil {
		v := p.once()
		p.mu.Lock()
		p.results = append(p.results, result{done: time.Now(), v: v})
		if len(p.results) > 4096 {
			p.results = append(p.results[:0], p.results[len(p.results)-1024:]...)
		}
		close(p.wake)
		p.wake = make(chan struct{})
		p.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}

func (p *prober) once() verdict {
	var (
		c   net.Conn
		err error
	)
	if derr := p.from.ns.Do(func() error {
		c, err = net.DialTimeout("tcp", p.target, 300*time.Millisecond)
		return nil
	}); derr != nil {
		return unknown
	}
	switch {
	case err == nil:
		c.Close()
		return allowed
	case errors.Is(err, syscall.ECONNREFUSED):
		return denied
	}
	return unknown
}

// waitFor returns how long after since the first probe ending after since
// saw want, or an error after timeout.
func (p *prober) waitFor(ctx context.Context, want verdict, since time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for _, r := range p.results {
			if r.done.After(since) && r.v == want {
				p.mu.Unlock()
				return r.done.Sub(since), nil
			}
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			return 0, fmt.Errorf("%s: no %v verdict within %v", p.target, want, timeout)
		case <-wake:
		}
	}
}

func (v verdict) String() string {
	switch v {
	case allowed:
		return "allowed"
	case denied:
		return "denied"
	}
	return "unknown"
}
