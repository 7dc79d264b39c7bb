// Package nstest creates throw-away network namespaces for the dataplane's
// kernel tests. Every test namespace is named with a prefix unique to the
// test run, deleted when the test ends (pass or fail), and namespaces left
// by earlier killed runs (same fixed stem) are swept first. Nothing here
// ever touches the root namespace: every command runs through
// `ip netns exec`.
package nstest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Stem starts the name of every namespace these tests create.
const Stem = "nfqpdp"

// Require skips t, loudly, unless it runs as root with the tools it needs.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP KERNEL TEST: needs root (network namespaces, iptables, NFQUEUE)")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIP KERNEL TEST: %s not in PATH", tool)
		}
	}
}

// Sweep deletes namespaces named Stem-* that no live process of ours owns:
// leftovers of runs that were killed before their cleanup ran. A run's
// names carry its pid, so a concurrent run's namespaces are left alone.
func Sweep(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, Stem+"-") {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(strings.TrimPrefix(name, Stem+"-"), "%d", &pid); err == nil && pid > 0 {
			if unix.Kill(pid, 0) == nil && pid != os.Getpid() {
				continue // a run still alive owns it
			}
		}
		if pid == os.Getpid() {
			continue
		}
		if err := exec.Command("ip", "netns", "del", name).Run(); err == nil {
			t.Logf("swept stale namespace %s", name)
		}
	}
}

// Namespace is one test namespace.
type Namespace struct {
	Name string
	t    testing.TB
}

// New creates a namespace named Stem-PID-suffix with lo up and deletes it
// when t ends.
func New(t testing.TB, suffix string) *Namespace {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%s", Stem, os.Getpid(), suffix)
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &Namespace{Name: name, t: t}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.Run("ip", "link", "set", "lo", "up")
	// No duplicate address detection: a link-local address still in DAD
	// delays the first IPv6 exchange by a second (the first SYN is lost),
	// which would pass for a dataplane fault.
	ns.Run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
	ns.Run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
	return ns
}

// Path is the namespace's bind mount, usable with setns.
func (ns *Namespace) Path() string { return "/var/run/netns/" + ns.Name }

// Prefix is the command prefix that runs a command inside the namespace.
func (ns *Namespace) Prefix() []string { return []string{"ip", "netns", "exec", ns.Name} }

// Run runs a command inside the namespace and fails the test if it fails.
func (ns *Namespace) Run(args ...string) string {
	ns.t.Helper()
	out, err := ns.Try(args...)
	if err != nil {
		ns.t.Fatalf("%v", err)
	}
	return out
}

// Try runs a command inside the namespace and returns its combined output.
func (ns *Namespace) Try(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Run(); err != nil {
		return b.String(), fmt.Errorf("[%s] %s: %w: %s", ns.Name, strings.Join(args, " "), err, b.String())
	}
	return b.String(), nil
}

// Start starts a long-running command inside the namespace, killed (by its
// own pid) when t ends.
func (ns *Namespace) Start(args ...string) *exec.Cmd {
	ns.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	if err := cmd.Start(); err != nil {
		ns.t.Fatalf("start %v in %s: %v", args, ns.Name, err)
	}
	ns.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// Do runs fn on an OS thread switched into the namespace, so that sockets
// fn creates live in it (they stay there after Do returns). The thread is
// switched back afterwards; if that fails the thread is never reused (it
// stays locked and exits with the goroutine), so nothing else can run in
// the wrong namespace.
func (ns *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open(ns.Path())
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", ns.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			runtime.UnlockOSThread()
			return
		}
		// Never run fn anywhere but in the namespace asked for: compare
		// the thread's namespace with the target's identity.
		var want, got unix.Stat_t
		ferr := unix.Fstat(int(target.Fd()), &want)
		if ferr == nil {
			ferr = unix.Stat("/proc/thread-self/ns/net", &got)
		}
		if ferr == nil && (want.Dev != got.Dev || want.Ino != got.Ino) {
			ferr = fmt.Errorf("thread is in netns %d:%d after setns, want %s (%d:%d)", got.Dev, got.Ino, ns.Name, want.Dev, want.Ino)
		}
		if ferr == nil {
			ferr = fn()
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- fmt.Errorf("setns back from %s: %w", ns.Name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("netns %s: function did not return in 30s", ns.Name)
	}
}
