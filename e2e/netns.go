package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
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

// NamePrefix starts the name of every namespace this package creates; the
// pid that follows it lets a sweep tell a dead run's leftovers from a live
// run's namespaces.
const NamePrefix = "nfqp-"

var staleName = regexp.MustCompile(`^` + NamePrefix + `(\d+)-`)

// NS is a named network namespace created by this package.
type NS struct {
	Name string
	fd   int
}

// addNS creates the named namespace and opens it.
func addNS(ctx context.Context, name string) (*NS, error) {
	if err := run(ctx, nil, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	fd, err := unix.Open(netnsDir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = run(context.Background(), nil, "ip", "netns", "del", name)
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	return &NS{Name: name, fd: fd}, nil
}

// del kills whatever still runs in the namespace and deletes it.
func (n *NS) del() error {
	if n.fd >= 0 {
		unix.Close(n.fd)
		n.fd = -1
	}
	return deleteNamedNS(n.Name)
}

func deleteNamedNS(name string) error {
	killNSProcesses(name)
	if err := run(context.Background(), nil, "ip", "netns", "del", name); err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// killNSProcesses ends the processes living in a namespace of ours (agents
// of a run that was killed before it could stop them): the namespace only
// goes away once nothing uses it.
func killNSProcesses(name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// SweepStale deletes namespaces named NamePrefix+"<pid>-..." whose pid is
// no longer running: the leftovers of a run that was killed. It returns the
// names it deleted.
func SweepStale() ([]string, error) {
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

// pidAlive reports whether pid runs; a zombie (killed, not yet reaped)
// counts as dead.
func pidAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the parenthesised command name, which may itself
	// hold spaces and parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn
// creates stay in the namespace after Do returns, so fn need only create
// them. A thread that cannot be switched back is never returned to the
// scheduler: it stays locked and exits with the goroutine.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", n.Name, err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", n.Name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// ipBatch runs iproute2 commands (one per line, `ip -batch` syntax) inside
// the namespace with a single fork.
func (n *NS) ipBatch(ctx context.Context, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	in := strings.Join(lines, "\n") + "\n"
	if err := run(ctx, strings.NewReader(in), "ip", "-n", n.Name, "-batch", "-"); err != nil {
		return fmt.Errorf("configure namespace %s: %w", n.Name, err)
	}
	return nil
}

// sysctl sets kernel parameters ("net.ipv4.ip_forward=1") inside the
// namespace by writing /proc/sys from a thread that has entered it: the
// net.* entries there belong to the reading thread's namespace, and a
// thousand-pod topology saves a thousand forks.
func (n *NS) sysctl(kv ...string) error {
	return n.Do(func() error {
		for _, e := range kv {
			key, val, ok := strings.Cut(e, "=")
			if !ok || !strings.HasPrefix(key, "net.") {
				return fmt.Errorf("sysctl %q: want net.KEY=VALUE", e)
			}
			path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
			if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", key, n.Name, err)
			}
		}
		return nil
	})
}

// run executes a command and folds its stderr into the error.
func run(ctx context.Context, stdin *strings.Reader, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}
