package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = "/run/netns"

// namePrefix starts every namespace this harness creates. It differs from
// the e2e package's "nfqp-" so that neither sweep touches the other's
// namespaces; the pid after it tells a dead run's leftovers from a live
// run's.
const namePrefix = "nfqbench-"

var staleName = regexp.MustCompile(`^` + namePrefix + `(\d+)-`)

// netNS is a named network namespace the harness created.
type netNS struct {
	name string
	fd   int
}

func addNS(ctx context.Context, name string) (*netNS, error) {
	if err := runCmd(ctx, nil, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	fd, err := unix.Open(netnsDir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = runCmd(context.Background(), nil, "ip", "netns", "del", name)
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	return &netNS{name: name, fd: fd}, nil
}

// del kills what still runs in the namespace and deletes it.
func (n *netNS) del() error {
	if n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
	}
	return deleteNamedNS(n.name)
}

func deleteNamedNS(name string) error {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := runCmd(context.Background(), nil, "ip", "netns", "del", name); err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// sweepStale deletes namespaces a killed run of this harness left behind.
func sweepStale() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweep stale namespaces: %w", err)
	}
	var deleted []string
	var errs []error
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pidAlive(pid) {
			continue
		}
		if err := deleteNamedNS(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, e.Name())
	}
	return deleted, errors.Join(errs...)
}

// sweepStaleDirs removes the temporary directories (snapshot copy, agent
// binary, logs) that killed runs left in dir; they are named like the
// namespaces.
func sweepStaleDirs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sweep stale directories: %w", err)
	}
	var deleted []string
	var errs []error
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pidAlive(pid) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("sweep stale directories: %w", err))
			continue
		}
		deleted = append(deleted, p)
	}
	return deleted, errors.Join(errs...)
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// do runs fn on an OS thread inside the namespace; sockets fn creates stay
// in it. A thread that cannot be switched back stays locked and dies with
// the goroutine.
func (n *netNS) do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", n.name, err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", n.name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// enterForGood moves the calling goroutine's thread into the namespace for
// the rest of the goroutine's life: the load generators make thousands of
// sockets per second and two setns calls per socket would be part of what
// they measure. The thread is discarded when the goroutine returns, since
// it stays locked.
func (n *netNS) enterForGood() error {
	runtime.LockOSThread()
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter namespace %s: %w", n.name, err)
	}
	return nil
}

// ipBatch runs iproute2 commands inside the namespace with one fork.
func (n *netNS) ipBatch(ctx context.Context, lines []string) error {
	in := strings.Join(lines, "\n") + "\n"
	if err := runCmd(ctx, strings.NewReader(in), "ip", "-n", n.name, "-batch", "-"); err != nil {
		return fmt.Errorf("configure namespace %s: %w", n.name, err)
	}
	return nil
}

// exec runs a command inside the namespace.
func (n *netNS) exec(ctx context.Context, name string, args ...string) error {
	return runCmd(ctx, nil, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// runCmd executes a command and folds its stderr into the error.
func runCmd(ctx context.Context, stdin *strings.Reader, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}
