// Package nstest creates throw-away network namespaces for the dataplane's
// kernel tests. Every test namespace is named with a prefix unique to the
// test run, deleted when the test ends (pass or fail), and namespaces left
// by earlier killed runs (same fixed stem) are swept first. Nothing here
// ever touches the root namespace: every command runs through
// `ip netns exec`.
package nstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	inetns "github.com/nfqpolicy/nfqpolicy/internal/netns"
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

// Sweep deletes namespaces named Stem-PID-* whose PID no longer runs:
// leftovers of runs that were killed before their cleanup ran. A run's
// names carry its pid, so a concurrent run's namespaces are left alone.
func Sweep(t testing.TB) {
	t.Helper()
	deleted, err := inetns.Sweep(Stem + "-")
	for _, name := range deleted {
		t.Logf("swept stale namespace %s", name)
	}
	if err != nil {
		t.Logf("sweep stale namespaces: %v", err)
	}
}

// Namespace is one test namespace.
type Namespace struct {
	Name string
	t    testing.TB
	ns   *inetns.NS
}

// New creates a namespace named Stem-PID-suffix with lo up and deletes it
// (killing whatever still runs in it) when t ends. A leftover of the same
// name, from an earlier run that had this pid, is replaced.
func New(t testing.TB, suffix string) *Namespace {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%s", Stem, os.Getpid(), suffix)
	n, err := inetns.Create(context.Background(), name, inetns.Replace())
	if err != nil {
		t.Fatal(err)
	}
	ns := &Namespace{Name: name, t: t, ns: n}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Error(err)
		}
	})
	ns.Run("ip", "link", "set", "lo", "up")
	// No duplicate address detection: a link-local address still in DAD
	// delays the first IPv6 exchange by a second (the first SYN is lost),
	// which would pass for a dataplane fault.
	if err := n.Sysctl("net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"); err != nil {
		t.Fatal(err)
	}
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
	if len(args) == 0 {
		return "", fmt.Errorf("[%s] no command to run", ns.Name)
	}
	return ns.ns.Exec(context.Background(), args[0], args[1:]...)
}

// Start starts a long-running command inside the namespace, killed (by its
// own pid) when t ends.
func (ns *Namespace) Start(args ...string) *exec.Cmd {
	ns.t.Helper()
	if len(args) == 0 {
		ns.t.Fatalf("start in %s: no command", ns.Name)
	}
	cmd := ns.ns.Command(context.Background(), args[0], args[1:]...)
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
// fn creates live in it (they stay there after Do returns); a thread that
// cannot be switched back is never reused. fn runs on a goroutine of its
// own, so that a hung fn fails the test after 30s instead of hanging it;
// fn must therefore not call t.Fatal.
func (ns *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- ns.ns.Do(fn) }()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("netns %s: function did not return in 30s", ns.Name)
	}
}
