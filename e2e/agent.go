package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agent's health endpoint inside each node namespace. Probe servers
// bind node addresses, never loopback, so this cannot collide with them.
// AgentHealthAddr is where the agents started here serve /readyz and
// /debug/counters inside their node namespace.
const AgentHealthAddr = "127.0.0.1:9901"

// agentPoll is the snapshot poll interval the agents get: a swap takes
// about two polls (the source waits for two identical reads).
const agentPoll = 50 * time.Millisecond

// agentSet is the nfqpolicy agents of one topology, one per node
// namespace, all following the same snapshot file.
type agentSet struct {
	dir      string // snapshot file and agent logs
	snapshot string
	last     []byte // content of the snapshot file
	agents   []*agentProc
	log      zerolog.Logger
}

// agentProc is one running `nfqpolicy run`.
type agentProc struct {
	node    string
	ns      *NS
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
	client  *http.Client
}

// startAgents writes first's snapshot and starts one agent per node
// namespace of t, returning once every agent reports ready.
func startAgents(ctx context.Context, bin string, args []string, t *topology, first *prepared, log zerolog.Logger) (_ *agentSet, err error) {
	dir, err := os.MkdirTemp("", "nfqp-e2e-")
	if err != nil {
		return nil, fmt.Errorf("agent directory: %w", err)
	}
	a := &agentSet{dir: dir, snapshot: filepath.Join(dir, "snapshot.json"), log: log}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.stop())
		}
	}()
	if a.last, err = writeSnapshot(a.snapshot, first); err != nil {
		return nil, err
	}
	for i, node := range t.pl.Nodes {
		p, err := a.start(bin, args, node.Name, t.nodes[i])
		if err != nil {
			return nil, err
		}
		a.agents = append(a.agents, p)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range a.agents {
		if err := p.waitReady(ctx, deadline); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *agentSet) start(bin string, args []string, node string, ns *NS) (*agentProc, error) {
	logPath := filepath.Join(a.dir, "agent-"+node+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("agent log: %w", err)
	}
	argv := []string{"netns", "exec", ns.Name, bin, "run",
		"--node-name", node,
		"--queues", "1",
		"--health-addr", AgentHealthAddr,
		// Each agent its own debug socket: the default path is the host's,
		// where agents of one topology (or a real agent) would replace
		// each other's. Later args (a test's own --debug-socket) win.
		"--debug-socket", filepath.Join(a.dir, "debug-"+node+".sock"),
	}
	if a.snapshot != "" {
		// Without one (Cluster.StartAgents) args say where the state is.
		argv = append(argv, "--snapshot", a.snapshot, "--snapshot-poll", agentPoll.String())
	}
	argv = append(argv, args...)
	cmd := exec.Command("ip", argv...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// The agent dies with this process even when it is killed outright;
	// the next run's sweep removes the namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start agent for %s: %w", node, err)
	}
	p := &agentProc{node: node, ns: ns, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.exited)
	}()
	p.client = &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			// The health endpoint is on the node namespace's loopback.
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
	a.log.Debug().Str("node", node).Str("ns", ns.Name).Str("log", logPath).Strs("argv", argv).Msg("agent started")
	return p, nil
}

// logTail returns the last lines the agent wrote, for error messages.
func (p *agentProc) logTail() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}

func (p *agentProc) deadErr() error {
	return fmt.Errorf("agent of %s exited (%v); its last log lines:\n%s", p.node, p.waitErr, p.logTail())
}

func (p *agentProc) waitReady(ctx context.Context, deadline time.Time) error {
	last := ""
	for {
		select {
		case <-p.exited:
			return p.deadErr()
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		body, code, err := p.get(ctx, "/readyz")
		switch {
		case err == nil && code == http.StatusOK:
			return nil
		case err != nil:
			last = err.Error()
		default:
			last = strings.TrimSpace(string(body))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent of %s not ready in time (%s); its last log lines:\n%s", p.node, last, p.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *agentProc) get(ctx context.Context, path string) ([]byte, int, error) {
	return AgentGet(ctx, p.client, path)
}

// AgentGet fetches path from an agent's health address with c, a client
// whose connections are made inside the agent's node namespace. It returns
// the body (at most 1 MiB) and the status code.
func AgentGet(ctx context.Context, c *http.Client, path string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+AgentHealthAddr+path, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return body, resp.StatusCode, err
}

// counters reads the agent's compile counters from /debug/counters.
func (p *agentProc) counters(ctx context.Context) (compiles, errs uint64, err error) {
	body, code, err := p.get(ctx, "/debug/counters")
	if err != nil {
		return 0, 0, err
	}
	if code != http.StatusOK {
		return 0, 0, fmt.Errorf("agent of %s: /debug/counters: HTTP %d", p.node, code)
	}
	var st struct {
		Compiles      uint64 `json:"compiles"`
		CompileErrors uint64 `json:"compile_errors"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return 0, 0, fmt.Errorf("agent of %s: /debug/counters: %w", p.node, err)
	}
	return st.Compiles, st.CompileErrors, nil
}

// AgentCounters are verdict counters summed over agents (their
// /debug/counters "total").
type AgentCounters struct {
	Allowed       uint64 `json:"allowed"`
	Denied        uint64 `json:"denied"`
	Malformed     uint64 `json:"malformed"`
	VerdictErrors uint64 `json:"verdict_errors"`
	NoBufs        uint64 `json:"enobufs"`
}

func (c *AgentCounters) add(o AgentCounters) {
	c.Allowed += o.Allowed
	c.Denied += o.Denied
	c.Malformed += o.Malformed
	c.VerdictErrors += o.VerdictErrors
	c.NoBufs += o.NoBufs
}

// verdicts sums the agents' verdict counters.
func (a *agentSet) verdicts(ctx context.Context) (AgentCounters, error) {
	var sum AgentCounters
	for _, p := range a.agents {
		body, code, err := p.get(ctx, "/debug/counters")
		if err != nil {
			return sum, err
		}
		if code != http.StatusOK {
			return sum, fmt.Errorf("agent of %s: /debug/counters: HTTP %d", p.node, code)
		}
		var st struct {
			Total AgentCounters `json:"total"`
		}
		if err := json.Unmarshal(body, &st); err != nil {
			return sum, fmt.Errorf("agent of %s: /debug/counters: %w", p.node, err)
		}
		sum.add(st.Total)
	}
	return sum, nil
}

// load swaps the snapshot for s's objects and returns once every agent
// has compiled the new state: this exercises the agents' reload path.
func (a *agentSet) load(ctx context.Context, p *prepared) error {
	data, err := encodeSnapshot(p)
	if err != nil {
		return err
	}
	if bytes.Equal(data, a.last) {
		return nil // same objects: the agents would see no change
	}
	type before struct{ compiles, errs uint64 }
	was := make([]before, len(a.agents))
	for i, p := range a.agents {
		c, e, err := p.counters(ctx)
		if err != nil {
			return err
		}
		was[i] = before{c, e}
	}
	if err := writeFileAtomic(a.snapshot, data); err != nil {
		return err
	}
	a.last = data
	deadline := time.Now().Add(15 * time.Second)
	var wg sync.WaitGroup
	errs := make([]error, len(a.agents))
	for i, p := range a.agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-p.exited:
					errs[i] = p.deadErr()
					return
				case <-ctx.Done():
					errs[i] = ctx.Err()
					return
				default:
				}
				c, e, err := p.counters(ctx)
				switch {
				case err != nil:
					errs[i] = err
					return
				case e > was[i].errs:
					errs[i] = fmt.Errorf("agent of %s could not compile the new state; its last log lines:\n%s", p.node, p.logTail())
					return
				case c > was[i].compiles:
					return
				}
				if time.Now().After(deadline) {
					errs[i] = fmt.Errorf("agent of %s did not reload the snapshot within 15s", p.node)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The compile counter moves just before the engine swaps the ruleset
	// in; give the swap a moment so the first probes meet the new state.
	time.Sleep(20 * time.Millisecond)
	return nil
}

// alive fails if an agent has exited.
func (a *agentSet) alive() error {
	for _, p := range a.agents {
		select {
		case <-p.exited:
			return p.deadErr()
		default:
		}
	}
	return nil
}

// stop ends every agent (SIGTERM, then SIGKILL after 3s) and removes the
// snapshot directory.
func (a *agentSet) stop() error {
	var errs []error
	for _, p := range a.agents {
		select {
		case <-p.exited:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range a.agents {
		select {
		case <-p.exited:
		case <-time.After(3 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			errs = append(errs, fmt.Errorf("agent of %s ignored SIGTERM for 3s and was killed", p.node))
		}
	}
	if err := os.RemoveAll(a.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove agent directory: %w", err))
	}
	return errors.Join(errs...)
}

// encodeSnapshot renders the scenario's objects as one kind: List, with
// the nodes the topology gave to pods that name none.
func encodeSnapshot(p *prepared) ([]byte, error) {
	var items []any
	s, c := p.s, p.s.Cluster
	for _, ns := range c.Namespaces {
		o := ns.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}
		items = append(items, o)
	}
	for _, n := range c.Nodes {
		o := n.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}
		items = append(items, o)
	}
	for _, pod := range c.Pods {
		o := pod.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
		if node, ok := p.pl.assigned[o.Namespace+"/"+o.Name]; ok {
			o.Spec.NodeName = node
		}
		items = append(items, o)
	}
	for _, pol := range c.Policies {
		o := pol.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
		items = append(items, o)
	}
	for _, pol := range c.ClusterPolicies {
		o := pol.DeepCopy()
		o.TypeMeta = metav1.TypeMeta{APIVersion: "policy.networking.k8s.io/v1beta1", Kind: "ClusterNetworkPolicy"}
		items = append(items, o)
	}
	data, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode snapshot of %s: %w", s.Name, err)
	}
	return data, nil
}

// writeSnapshot writes the scenario's objects to path and returns them.
func writeSnapshot(path string, p *prepared) ([]byte, error) {
	data, err := encodeSnapshot(p)
	if err != nil {
		return nil, err
	}
	return data, writeFileAtomic(path, data)
}

// writeFileAtomic replaces path by a rename, so that an agent polling the
// file never reads half of it.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".snapshot-*.tmp")
	if err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}
