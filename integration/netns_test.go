package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	inetns "github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// nsStem starts the name of every network namespace these tests create;
// the run's pid follows, so a sweep can tell dead runs' leftovers from a
// live run's namespaces.
const nsStem = "nfqpfs"

func requireKernel(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP KERNEL TEST: needs root (network namespaces, iptables, NFQUEUE)")
	}
	for _, tool := range append([]string{"ip", "iptables", "ipset"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP KERNEL TEST: %s not in PATH", tool)
		}
	}
}

// sweepNamespaces deletes nsStem namespaces whose run is gone.
func sweepNamespaces(t *testing.T) {
	t.Helper()
	deleted, err := inetns.Sweep(nsStem + "-")
	for _, name := range deleted {
		t.Logf("deleted stale namespace %s", name)
	}
	if err != nil {
		t.Logf("sweep stale namespaces: %v", err)
	}
}

// netns is a named network namespace the test created.
type netns struct {
	name string
	ns   *inetns.NS
}

// newNetns creates a namespace and deletes it (and whatever still runs in
// it) when the test ends.
func newNetns(t *testing.T, suffix string) *netns {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%s", nsStem, os.Getpid(), suffix)
	ns, err := inetns.Create(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	n := &netns{name: name, ns: ns}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	n.ip(t, "link set lo up")
	return n
}

// ip runs one iproute2 command inside the namespace (ip -n), never in the
// root namespace.
func (n *netns) ip(t *testing.T, args string) {
	t.Helper()
	if err := n.ns.IPBatch(context.Background(), []string{args}); err != nil {
		t.Fatal(err)
	}
}

// exec runs a command inside the namespace.
func (n *netns) exec(t *testing.T, name string, args ...string) {
	t.Helper()
	if _, err := n.ns.Exec(context.Background(), name, args...); err != nil {
		t.Fatal(err)
	}
}

// do runs fn on an OS thread inside the namespace; sockets fn creates stay
// there.
func (n *netns) do(fn func() error) error { return n.ns.Do(fn) }

func (n *netns) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := n.do(func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func (n *netns) dial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// serve accepts on l until the test ends and runs handle for every
// connection; at the end it closes the listener and every connection and
// waits for the handlers.
func serve(t *testing.T, l net.Listener, handle func(net.Conn)) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			}()
		}
	}()
}

// echo serves l: every connection gets back what it sends.
func echo(t *testing.T, l net.Listener) {
	serve(t, l, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// forward accepts on l (a listener in another namespace) and relays each
// connection to target in the test's own namespace. It is how processes in
// a test namespace reach the loopback-only API server without any link or
// address being added to the root namespace.
func forward(t *testing.T, l net.Listener, target string) {
	serve(t, l, func(c net.Conn) {
		up, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			return
		}
		defer up.Close()
		go func() {
			_, _ = io.Copy(up, c)
			up.Close()
		}()
		_, _ = io.Copy(c, up)
	})
}
