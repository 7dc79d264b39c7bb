package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nfqpolicy/nfqpolicy/e2e"
)

// agentProc is one running `nfqpolicy run` in the node namespace.
type agentProc struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
	client  *http.Client
}

// startAgent starts the agent inside ns and returns once /readyz says it
// enforces.
func startAgent(ctx context.Context, sp *spawner, bin string, ns *netNS, node, snapshot string, queues int, logPath string, env []string, extra ...string) (_ *agentProc, err error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("agent log: %w", err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin, "run",
		"--node-name", node,
		"--snapshot", snapshot,
		"--queues", strconv.Itoa(queues),
		"--health-addr", e2e.AgentHealthAddr}, extra...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := sp.start(cmd); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a := &agentProc{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		a.waitErr = cmd.Wait()
		lf.Close()
		close(a.exited)
	}()
	defer func() {
		if err != nil {
			err = errors.Join(err, a.stop())
		}
	}()
	a.client = &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				derr := ns.Do(func() error {
					c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
					return nil
				})
				return c, errors.Join(derr, err)
			},
			DisableKeepAlives: true,
		},
	}
	deadline := time.Now().Add(60 * time.Second)
	last := ""
	for {
		select {
		case <-a.exited:
			return nil, a.deadErr()
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		body, code, err := a.get(ctx, "/readyz")
		switch {
		case err == nil && code == http.StatusOK:
			return a, nil
		case err != nil:
			last = err.Error()
		default:
			last = strings.TrimSpace(string(body))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("agent not ready in 60s (%s); log:\n%s", last, a.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *agentProc) get(ctx context.Context, path string) ([]byte, int, error) {
	return e2e.AgentGet(ctx, a.client, path)
}

// agentStatus is the part of /debug/counters the harness reads.
type agentStatus struct {
	Ready bool `json:"ready"`
	Total struct {
		Allowed       uint64 `json:"allowed"`
		Denied        uint64 `json:"denied"`
		VerdictErrors uint64 `json:"verdict_errors"`
		NoBufs        uint64 `json:"enobufs"`
	} `json:"total"`
	Kernel []struct {
		Queue       uint16 `json:"queue"`
		Dropped     uint64 `json:"queue_dropped"`
		UserDropped uint64 `json:"user_dropped"`
	} `json:"kernel_queues"`
	CacheHits   uint64 `json:"cache_hits"`
	CacheMisses uint64 `json:"cache_misses"`
}

func (a *agentProc) status(ctx context.Context) (agentStatus, error) {
	var st agentStatus
	body, code, err := a.get(ctx, "/debug/counters")
	if err != nil {
		return st, fmt.Errorf("agent /debug/counters: %w", err)
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("agent /debug/counters: HTTP %d", code)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("agent /debug/counters: %w", err)
	}
	return st, nil
}

// allowedAtLeast returns the agent's status once it has allowed at least
// n packets since before, which it must have for n connections it
// diverts. The reader counts a verdict after sending it, so the last
// connection may complete before its count: the status is read again for
// up to a second before the shortfall is an error.
func (a *agentProc) allowedAtLeast(ctx context.Context, before agentStatus, n int) (agentStatus, error) {
	deadline := time.Now().Add(time.Second)
	for {
		st, err := a.status(ctx)
		if err != nil {
			return st, err
		}
		allowed := st.Total.Allowed - before.Total.Allowed
		if allowed >= uint64(n) {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("the agent allowed %d packets for %d connections: it is not deciding these flows", allowed, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kernelDrops sums what the kernel dropped on the agent's queues.
func (s agentStatus) kernelDrops() uint64 {
	var n uint64
	for _, q := range s.Kernel {
		n += q.Dropped + q.UserDropped
	}
	return n
}

func (a *agentProc) logTail() string {
	data, err := os.ReadFile(a.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}

func (a *agentProc) deadErr() error {
	return fmt.Errorf("agent exited (%v); log:\n%s", a.waitErr, a.logTail())
}

// stop ends the agent: SIGTERM, SIGKILL after 5s.
func (a *agentProc) stop() error {
	select {
	case <-a.exited:
		return nil
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
		return nil
	case <-time.After(5 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
		return errors.New("agent ignored SIGTERM for 5s and was killed")
	}
}
