package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, nsStem+"-") {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(strings.TrimPrefix(name, nsStem+"-"), "%d", &pid); err == nil && pid > 0 {
			if pid == os.Getpid() || unix.Kill(pid, 0) == nil {
				continue // a live run owns it
			}
		}
		if err := exec.Command("ip", "netns", "del", name).Run(); err == nil {
			t.Logf("deleted stale namespace %s", name)
		}
	}
}

// netns is a named network namespace the test created.
type netns struct {
	name string
	fd   int
}

// newNetns creates a namespace and deletes it when the test ends.
func newNetns(t *testing.T, suffix string) *netns {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%s", nsStem, os.Getpid(), suffix)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("open namespace %s: %v", name, err)
	}
	n := &netns{name: name, fd: fd}
	t.Cleanup(func() {
		unix.Close(fd)
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	n.ip(t, "link set lo up")
	return n
}

// ip runs one iproute2 command inside the namespace (ip -n), never in the
// root namespace.
func (n *netns) ip(t *testing.T, args string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"-n", n.name}, strings.Fields(args)...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, args, err, out)
	}
}

// exec runs a command inside the namespace.
func (n *netns) exec(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("in %s: %s %v: %v: %s", n.name, name, args, err, out)
	}
}

// do runs fn on an OS thread inside the namespace; sockets fn creates stay
// there. A thread that cannot return to its namespace stays locked and dies
// with the goroutine instead of running other goroutines in the wrong place.
func (n *netns) do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s: %w", n.name, err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("leave %s: %w", n.name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

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
