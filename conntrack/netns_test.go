package conntrack

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// nsStem starts the name of every namespace these tests create; the
// creating process's pid follows, so a sweep can tell a live run's
// namespaces from a killed one's.
const nsStem = "nfqpct"

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP KERNEL TEST: needs root (network namespaces, conntrack netlink)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("SKIP KERNEL TEST: ip (iproute2) not in PATH")
	}
}

// sweepNetns deletes namespaces of ours left by runs that were killed
// before their cleanup ran.
func sweepNetns(t testing.TB) {
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
				continue
			}
		}
		if err := exec.Command("ip", "netns", "del", name).Run(); err == nil {
			t.Logf("swept stale namespace %s", name)
		}
	}
}

// newNetns creates an empty namespace, deleted when t ends.
func newNetns(t testing.TB, suffix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%s", nsStem, os.Getpid(), suffix)
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// inNetns runs fn on an OS thread switched into the namespace: sockets fn
// opens belong to it for good. The thread is switched back afterwards, or,
// if that fails, never reused (it stays locked and exits with its
// goroutine).
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + name)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back from %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
