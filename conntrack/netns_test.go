package conntrack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"

	inetns "github.com/nfqpolicy/nfqpolicy/internal/netns"
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
	t.Helper()
	deleted, err := inetns.Sweep(nsStem + "-")
	for _, name := range deleted {
		t.Logf("swept stale namespace %s", name)
	}
	if err != nil {
		t.Logf("sweep stale namespaces: %v", err)
	}
}

// newNetns creates an empty namespace, deleted when t ends. A leftover of
// the same name (an earlier run with this pid) is replaced.
func newNetns(t testing.TB, suffix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%s", nsStem, os.Getpid(), suffix)
	ns, err := inetns.Create(context.Background(), name, inetns.Replace())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	return name
}

// inNetns runs fn on an OS thread switched into the namespace: sockets fn
// opens belong to it for good. The thread is switched back afterwards, or,
// if that fails, never reused.
func inNetns(name string, fn func() error) error {
	ns, err := inetns.Open(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(fn)
}
