package realcluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// proc is a daemon the harness started inside one network namespace.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid once done is closed
}

// startIn runs bin in the named network namespace through nsenter --net,
// which (unlike `ip netns exec`) keeps the root mount namespace: kubelet's
// volume mounts must be visible to containerd and runc. Pdeathsig ends the
// daemon if the harness dies; what it leaves (pods, shims) the sweep ends.
func startIn(ns, name, bin string, args []string, env []string, logPath string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	argv := append([]string{"--net=" + netns.Dir + "/" + ns, "--", bin}, args...)
	cmd := exec.Command("nsenter", argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM and kills the daemon if it has not exited after grace.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// exited returns an error once the daemon has exited.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(3000))
	default:
		return nil
	}
}

// tail returns the last max bytes of the daemon's log.
func (p *proc) tail(max int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no %s log: %v)", p.name, err)
	}
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}

// waitFor polls check every 100ms until it succeeds, a daemon in procs
// exits or timeout passes.
func waitFor(timeout time.Duration, what string, check func() error, procs ...*proc) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		for _, p := range procs {
			if err := p.exited(); err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
		}
		if last = check(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: after %v: %w", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
