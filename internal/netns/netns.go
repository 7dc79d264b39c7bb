// Package netns creates, enters, runs commands in and deletes named network
// namespaces (the `ip netns` kind, bind-mounted under Dir), and sweeps stale
// ones: namespaces named prefix+"<pid>-..." whose owner pid is dead, the
// leftovers of a run that was killed before it could clean up.
//
// Entering happens on a locked OS thread; a thread that cannot be switched
// back is never handed back to the Go scheduler, so no other goroutine can
// ever run in the wrong namespace.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// Dir is where `ip netns add` bind-mounts named namespaces.
const Dir = "/run/netns"

// cmdTimeout bounds each iproute2 command this package runs itself (add,
// del, pids, batch): a wedged `ip` must fail a run, not hang it.
const cmdTimeout = 30 * time.Second

// NS is an open named network namespace.
type NS struct {
	Name string
	fd   int
	// dev and ino identify the namespace, so Do can check that setns took
	// the thread where it was asked to.
	dev, ino uint64
}

// Option changes how Create makes a namespace.
type Option func(*createOptions)

type createOptions struct {
	replace bool
}

// Replace makes Create delete a namespace of the same name first. Names
// carry the creator's pid, and pids get reused (in containers, often): a
// leftover with this run's own name is one no sweep can claim, since its
// pid looks alive.
func Replace() Option { return func(o *createOptions) { o.replace = true } }

// Create makes the named namespace (`ip netns add`) and opens it.
func Create(ctx context.Context, name string, opts ...Option) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	var o createOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.replace {
		if _, err := os.Stat(Dir + "/" + name); err == nil {
			if err := Delete(name); err != nil {
				return nil, fmt.Errorf("replace namespace %s: %w", name, err)
			}
		}
	}
	if err := run(ctx, nil, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	n, err := Open(name)
	if err != nil {
		_ = run(context.Background(), nil, "ip", "netns", "del", name)
		return nil, err
	}
	return n, nil
}

// Open opens an existing named namespace; Close releases it without
// deleting it.
func Open(name string) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Open(Dir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat namespace %s: %w", name, err)
	}
	return &NS{Name: name, fd: fd, dev: st.Dev, ino: st.Ino}, nil
}

// checkName refuses names `ip netns` would misread or that would leave Dir.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/ \t\n\x00") || strings.HasPrefix(name, "-") {
		return fmt.Errorf("namespace name %q: want a non-empty name without '/', blanks or a leading '-'", name)
	}
	return nil
}

// Close releases the handle; the namespace stays.
func (n *NS) Close() error {
	if n.fd < 0 {
		return nil
	}
	err := unix.Close(n.fd)
	n.fd = -1
	if err != nil {
		return fmt.Errorf("close namespace %s: %w", n.Name, err)
	}
	return nil
}

// Delete releases the handle, kills whatever still runs in the namespace
// and deletes it.
func (n *NS) Delete() error {
	_ = n.Close()
	return Delete(n.Name)
}

// Delete kills whatever runs in the named namespace and deletes it: `ip
// netns del` only unmounts the name, and a process left inside would keep
// the namespace (and its addresses, routes and rules) alive unseen.
func Delete(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	killProcesses(name)
	if err := run(context.Background(), nil, "ip", "netns", "del", name); err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// killProcesses ends the processes living in the named namespace (never
// this one, should it have been moved there).
func killProcesses(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn
// creates stay in the namespace after Do returns, so fn need only create
// them. Do runs fn on the calling goroutine (which may call t.Fatal from
// fn); a thread that cannot be switched back stays locked and exits with
// the goroutine instead of returning to the scheduler.
func (n *NS) Do(fn func() error) error {
	if n.fd < 0 {
		return fmt.Errorf("enter namespace %s: handle closed", n.Name)
	}
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
	// Run fn nowhere but in the namespace asked for.
	ferr := n.checkEntered()
	if ferr == nil {
		ferr = fn()
	}
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", n.Name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// checkEntered reports an error unless the calling thread is in n.
func (n *NS) checkEntered() error {
	var got unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &got); err != nil {
		return fmt.Errorf("check namespace %s: %w", n.Name, err)
	}
	if got.Dev != n.dev || got.Ino != n.ino {
		return fmt.Errorf("thread is in namespace %d:%d after setns, want %s (%d:%d)", got.Dev, got.Ino, n.Name, n.dev, n.ino)
	}
	return nil
}

// EnterForGood moves the calling goroutine's thread into the namespace for
// the rest of the goroutine's life, for loops that make so many sockets
// that two setns calls per socket would show in what they measure. The
// thread stays locked, so it is discarded when the goroutine returns.
func (n *NS) EnterForGood() error {
	if n.fd < 0 {
		return fmt.Errorf("enter namespace %s: handle closed", n.Name)
	}
	runtime.LockOSThread()
	if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter namespace %s: %w", n.Name, err)
	}
	return n.checkEntered()
}

// Command returns a command that runs inside the namespace (`ip netns
// exec`), for the caller to start, wait for or kill.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Exec runs a command inside the namespace and returns its combined output;
// a failure's error holds that output too. Only ctx bounds it.
func (n *NS) Exec(ctx context.Context, name string, args ...string) (string, error) {
	cmd := n.Command(ctx, name, args...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Run(); err != nil {
		argv := strings.Join(append([]string{name}, args...), " ")
		if msg := strings.TrimSpace(b.String()); msg != "" {
			return b.String(), fmt.Errorf("in %s: %s: %w: %s", n.Name, argv, err, msg)
		}
		return b.String(), fmt.Errorf("in %s: %s: %w", n.Name, argv, err)
	}
	return b.String(), nil
}

// IPBatch runs iproute2 commands (one per line, `ip -batch` syntax) inside
// the namespace with a single fork.
func (n *NS) IPBatch(ctx context.Context, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	in := strings.Join(lines, "\n") + "\n"
	if err := run(ctx, strings.NewReader(in), "ip", "-n", n.Name, "-batch", "-"); err != nil {
		return fmt.Errorf("configure namespace %s: %w", n.Name, err)
	}
	return nil
}

// Sysctl sets net.* kernel parameters ("net.ipv4.ip_forward=1") inside the
// namespace by writing /proc/sys from a thread that has entered it: the
// net.* entries there belong to the writing thread's namespace, and a
// topology of a thousand namespaces saves a thousand forks.
func (n *NS) Sysctl(kv ...string) error {
	for _, e := range kv {
		key, _, ok := strings.Cut(e, "=")
		if !ok || !strings.HasPrefix(key, "net.") || strings.Contains(key, "..") || strings.Contains(key, "/") {
			return fmt.Errorf("sysctl %q: want net.KEY=VALUE", e)
		}
	}
	return n.Do(func() error {
		for _, e := range kv {
			key, val, _ := strings.Cut(e, "=")
			path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
			if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", key, n.Name, err)
			}
		}
		return nil
	})
}

// Owner returns the pid in a name made as prefix+"<pid>-...", and false
// for any other name.
func Owner(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	m := ownerPID.FindStringSubmatch(rest)
	if m == nil {
		return 0, false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

var ownerPID = regexp.MustCompile(`^(\d+)-`)

// Alive reports whether pid runs; a zombie (killed, not yet reaped)
// counts as dead.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
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

// Sweep deletes the namespaces named prefix+"<pid>-..." whose pid is no
// longer running and returns the names it deleted. Namespaces of live
// owners, this process included, and names without a pid are left alone.
func Sweep(prefix string) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("sweep stale namespaces: empty prefix would match other owners' namespaces")
	}
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweep stale namespaces: %w", err)
	}
	var deleted []string
	var errs []error
	for _, e := range entries {
		pid, ok := Owner(prefix, e.Name())
		if !ok || Alive(pid) {
			continue
		}
		if err := Delete(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, e.Name())
	}
	return deleted, errors.Join(errs...)
}

// run executes a command, bounded by cmdTimeout, and folds its stderr into
// the error.
func run(ctx context.Context, stdin io.Reader, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
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
