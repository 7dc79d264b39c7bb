package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testPrefix starts the name of every namespace these tests create; the
// test process's pid follows it, so Sweep can tell its leftovers apart.
const testPrefix = "nfqpnt-"

func TestOwner(t *testing.T) {
	for _, tc := range []struct {
		name, prefix, ns string
		pid              int
		ok               bool
	}{
		{"pid and suffix", "nfqp-", "nfqp-123-n0", 123, true},
		{"pid then dash only", "nfqp-", "nfqp-7-", 7, true},
		{"other prefix", "nfqp-", "nfqpfs-123-a", 0, false},
		{"no dash after pid", "nfqp-", "nfqp-123", 0, false},
		{"letters in pid", "nfqp-", "nfqp-12x-a", 0, false},
		{"empty pid", "nfqp-", "nfqp--a", 0, false},
		{"pid zero", "nfqp-", "nfqp-0-a", 0, false},
		{"pid out of range", "nfqp-", "nfqp-99999999999999999999999-a", 0, false},
		{"prefix with regexp characters", "a.b-", "axb-1-c", 0, false},
		{"prefix with regexp characters matching", "a.b-", "a.b-1-c", 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, ok := Owner(tc.prefix, tc.ns)
			if pid != tc.pid || ok != tc.ok {
				t.Errorf("Owner(%q, %q) = %d, %v; want %d, %v", tc.prefix, tc.ns, pid, ok, tc.pid, tc.ok)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	closed := &NS{Name: "x", fd: -1}
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"empty name", func() error { _, err := Create(context.Background(), ""); return err }, "namespace name"},
		{"name with slash", func() error { _, err := Create(context.Background(), "../etc"); return err }, "namespace name"},
		{"name with blank", func() error { _, err := Open("a b"); return err }, "namespace name"},
		{"name like a flag", func() error { return Delete("-all") }, "namespace name"},
		{"dot dot", func() error { return Delete("..") }, "namespace name"},
		{"sysctl without value", func() error { return closed.Sysctl("net.ipv4.ip_forward") }, "want net.KEY=VALUE"},
		{"sysctl outside net", func() error { return closed.Sysctl("kernel.panic=1") }, "want net.KEY=VALUE"},
		{"sysctl leaving /proc/sys/net", func() error { return closed.Sysctl("net/../../kernel/panic=1") }, "want net.KEY=VALUE"},
		{"do on a closed handle", func() error { return closed.Do(func() error { return nil }) }, "handle closed"},
		{"enter a closed handle", closed.EnterForGood, "handle closed"},
		{"sweep without prefix", func() error { _, err := Sweep(""); return err }, "empty prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestAlive(t *testing.T) {
	reaped := exec.Command("true")
	if err := reaped.Run(); err != nil {
		t.Fatal(err)
	}
	zombie := exec.Command("true")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = zombie.Wait() })
	waitZombie(t, zombie.Process.Pid)
	for _, tc := range []struct {
		name string
		pid  int
		want bool
	}{
		{"this process", os.Getpid(), true},
		{"reaped child", reaped.Process.Pid, false},
		{"zombie child", zombie.Process.Pid, false},
		{"pid zero", 0, false},
		{"negative pid", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Alive(tc.pid); got != tc.want {
				t.Errorf("Alive(%d) = %v, want %v", tc.pid, got, tc.want)
			}
		})
	}
}

// waitZombie waits until the unreaped child pid has exited.
func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var si unix.Siginfo
		// WNOWAIT leaves the child a zombie.
		if err := unix.Waitid(unix.P_PID, pid, &si, unix.WEXITED|unix.WNOWAIT, nil); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("child %d did not exit", pid)
}

// requireKernel skips t, loudly, unless it runs as root with iproute2.
func requireKernel(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP KERNEL TEST: needs root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("SKIP KERNEL TEST: ip (iproute2) not in PATH")
	}
}

// threadNS identifies the network namespace of the calling goroutine's
// thread.
func threadNS(t *testing.T) [2]uint64 {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint64{st.Dev, st.Ino}
}

// TestKernel creates namespaces, enters them, runs commands in them,
// deletes them and sweeps a dead owner's leftover, all under testPrefix.
func TestKernel(t *testing.T) {
	requireKernel(t)
	if swept, err := Sweep(testPrefix); err != nil {
		t.Fatalf("sweep before test: %v", err)
	} else if len(swept) > 0 {
		t.Logf("swept stale namespaces %v", swept)
	}
	mine := fmt.Sprintf("%s%d-", testPrefix, os.Getpid())
	t.Cleanup(func() {
		entries, _ := os.ReadDir(Dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), mine) {
				t.Errorf("namespace %s left behind", e.Name())
				_ = Delete(e.Name())
			}
		}
	})
	ctx := context.Background()
	create := func(t *testing.T, suffix string, opts ...Option) *NS {
		t.Helper()
		n, err := Create(ctx, mine+suffix, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Delete() })
		return n
	}
	root := threadNS(t)

	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"do enters and leaves", func(t *testing.T) {
			n := create(t, "do")
			var inside [2]uint64
			var l net.Listener
			if err := n.Do(func() (err error) {
				inside = threadNS(t)
				l, err = net.Listen("tcp", "127.0.0.1:0")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if inside != [2]uint64{n.dev, n.ino} || inside == root {
				t.Errorf("fn ran in namespace %v, want %v (root %v)", inside, [2]uint64{n.dev, n.ino}, root)
			}
			if got := threadNS(t); got != root {
				t.Errorf("after Do the goroutine is in %v, want root %v", got, root)
			}
			// The listener stays in the namespace: lo is down there, and the
			// root namespace has no listener on that port.
			if c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
				c.Close()
				t.Errorf("dial %s from the root namespace reached the namespace's listener", l.Addr())
			}
		}},
		{"do returns fn's error", func(t *testing.T) {
			n := create(t, "doerr")
			want := errors.New("from fn")
			if err := n.Do(func() error { return want }); !errors.Is(err, want) {
				t.Errorf("Do = %v, want %v", err, want)
			}
			if got := threadNS(t); got != root {
				t.Errorf("after a failing fn the goroutine is in %v, want root %v", got, root)
			}
		}},
		{"enter for good", func(t *testing.T) {
			n := create(t, "enter")
			errc := make(chan error, 1)
			var got [2]uint64
			go func() {
				if err := n.EnterForGood(); err != nil {
					errc <- err
					return
				}
				var st unix.Stat_t
				err := unix.Stat("/proc/thread-self/ns/net", &st)
				got = [2]uint64{st.Dev, st.Ino}
				errc <- err
			}()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if got != [2]uint64{n.dev, n.ino} {
				t.Errorf("goroutine in %v after EnterForGood, want %v", got, [2]uint64{n.dev, n.ino})
			}
		}},
		{"ip batch, sysctl and exec", func(t *testing.T) {
			n := create(t, "cmds")
			if err := n.IPBatch(ctx, []string{"link set lo up", "addr add 10.250.0.1/32 dev lo"}); err != nil {
				t.Fatal(err)
			}
			out, err := n.Exec(ctx, "ip", "-o", "addr", "show", "dev", "lo")
			if err != nil || !strings.Contains(out, "10.250.0.1/32") {
				t.Errorf("ip addr in namespace: %v: %q, want 10.250.0.1/32", err, out)
			}
			if err := n.Sysctl("net.ipv4.ip_forward=1", "net.ipv4.conf.all.forwarding=1"); err != nil {
				t.Fatal(err)
			}
			out, err = n.Exec(ctx, "cat", "/proc/sys/net/ipv4/ip_forward")
			if err != nil || strings.TrimSpace(out) != "1" {
				t.Errorf("ip_forward in namespace: %v: %q, want 1", err, out)
			}
			if _, err := n.Exec(ctx, "sh", "-c", "echo boom >&2; exit 3"); err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), n.Name) {
				t.Errorf("failing command: error %v, want one naming %s with its output", err, n.Name)
			}
			if err := n.IPBatch(ctx, []string{"link set nosuchdev up"}); err == nil {
				t.Error("ip batch on a missing device succeeded")
			}
		}},
		{"create refuses an existing name unless replacing", func(t *testing.T) {
			n := create(t, "replace")
			if _, err := Create(ctx, n.Name); err == nil {
				t.Fatal("creating an existing namespace succeeded")
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			m := create(t, "replace", Replace())
			if m.ino == n.ino {
				t.Errorf("Replace kept the old namespace (inode %d)", n.ino)
			}
		}},
		{"open and close keep the namespace", func(t *testing.T) {
			n := create(t, "open")
			o, err := Open(n.Name)
			if err != nil {
				t.Fatal(err)
			}
			if o.ino != n.ino {
				t.Errorf("Open gave inode %d, want %d", o.ino, n.ino)
			}
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(Dir + "/" + n.Name); err != nil {
				t.Errorf("Close removed the namespace: %v", err)
			}
			if _, err := Open(mine + "nosuch"); err == nil {
				t.Error("opening a missing namespace succeeded")
			}
		}},
		{"delete kills what runs inside", func(t *testing.T) {
			n, err := Create(ctx, mine+"del")
			if err != nil {
				t.Fatal(err)
			}
			cmd := n.Command(ctx, "sleep", "60")
			if err := cmd.Start(); err != nil {
				_ = n.Delete()
				t.Fatal(err)
			}
			waitInside(t, n.Name, cmd.Process.Pid)
			if err := n.Delete(); err != nil {
				t.Fatal(err)
			}
			werr := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Errorf("process in the deleted namespace ended with %v, want SIGKILL", werr)
			}
			if _, err := os.Stat(Dir + "/" + n.Name); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("namespace still mounted after Delete: %v", err)
			}
			if err := n.Do(func() error { return nil }); err == nil {
				t.Error("Do on a deleted namespace succeeded")
			}
		}},
		{"sweep deletes only dead owners' namespaces", func(t *testing.T) {
			dead := exec.Command("true")
			if err := dead.Run(); err != nil {
				t.Fatal(err)
			}
			deadName := fmt.Sprintf("%s%d-sweep", testPrefix, dead.Process.Pid)
			d, err := Create(ctx, deadName, Replace())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = Delete(deadName) })
			d.Close()
			live := create(t, "sweep")
			other := fmt.Sprintf("nfqpntx-%d-sweep", dead.Process.Pid)
			o, err := Create(ctx, other, Replace())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = o.Delete() })
			swept, err := Sweep(testPrefix)
			if err != nil {
				t.Fatal(err)
			}
			if len(swept) != 1 || swept[0] != deadName {
				t.Errorf("Sweep = %v, want [%s]", swept, deadName)
			}
			for name, want := range map[string]bool{deadName: false, live.Name: true, other: true} {
				_, err := os.Stat(Dir + "/" + name)
				if got := err == nil; got != want {
					t.Errorf("%s exists = %v after sweep, want %v", name, got, want)
				}
			}
		}},
	} {
		t.Run(tc.name, tc.run)
	}
}

// waitInside waits until pid has entered the named namespace (ip netns exec
// switches before it execs the command).
func waitInside(t *testing.T, name string, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		for _, f := range strings.Fields(string(out)) {
			if f == fmt.Sprint(pid) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d never showed up in %s", pid, name)
}
