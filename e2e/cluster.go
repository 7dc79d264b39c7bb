package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// Cluster is one scenario's topology with its probe servers and, once
// StartAgents ran, one agent per node, held open between steps. Run is the
// one-shot path fed by snapshot files; Cluster is for harnesses that feed
// the agents from elsewhere (a real API server) and change the cluster
// between rounds of probes.
type Cluster struct {
	p      *prepared
	top    *topology
	srv    *servers
	pr     *prober
	keys   map[serverKey]bool
	agents *agentSet
	opts   Options
}

// NewCluster builds the namespaces of s (named NamePrefix+"<pid>-"+name+"-…",
// so SweepStale knows them), starts the probe servers and checks the wiring
// with one SYN per address pair before anything polices it. opts.Agent and
// opts.Fresh are ignored: agents come from StartAgents. Close undoes it.
func NewCluster(ctx context.Context, s *scenario.Scenario, name string, opts Options) (_ *Cluster, err error) {
	opts = opts.withDefaults()
	p, err := prepare(s)
	if err != nil {
		return nil, &InputError{Err: err}
	}
	if deleted, err := SweepStale(); err != nil {
		opts.Log.Warn().Err(err).Msg("sweeping stale namespaces")
	} else if len(deleted) > 0 {
		opts.Log.Info().Strs("namespaces", deleted).Msg("deleted namespaces of dead runs")
	}
	g := groupScenarios([]*prepared{p}, true)[0]
	prefix := fmt.Sprintf("%s%d-%s-", NamePrefix, os.Getpid(), name)
	top, err := buildTopology(ctx, prefix, g.pl, g.externals)
	if err != nil {
		return nil, fmt.Errorf("build topology: %w", err)
	}
	c := &Cluster{p: p, top: top, opts: opts, keys: map[serverKey]bool{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	if c.srv, err = startServers(top, g.servers); err != nil {
		return nil, err
	}
	for _, k := range g.servers {
		c.keys[k] = true
	}
	c.pr = newProber(top, c.srv, g.servers, opts.Timeout)
	if broken := warmUp(ctx, c.pr, g, opts.Parallel); len(broken) > 0 {
		return nil, fmt.Errorf("topology self-check: address pairs that cannot reach each other with nothing policing: %v", broken)
	}
	return c, nil
}

// State is the scenario's objects as the agents must see them: pods that
// name no node carry the node the topology put them on.
func (c *Cluster) State() *cluster.Cluster {
	src := c.p.s.Cluster
	out := &cluster.Cluster{}
	for _, n := range src.Namespaces {
		out.Namespaces = append(out.Namespaces, n.DeepCopy())
	}
	for _, n := range src.Nodes {
		out.Nodes = append(out.Nodes, n.DeepCopy())
	}
	for _, p := range src.Pods {
		o := p.DeepCopy()
		if node, ok := c.p.pl.assigned[o.Namespace+"/"+o.Name]; ok {
			o.Spec.NodeName = node
		}
		out.Pods = append(out.Pods, o)
	}
	for _, p := range src.Policies {
		out.Policies = append(out.Policies, p.DeepCopy())
	}
	for _, p := range src.ClusterPolicies {
		out.ClusterPolicies = append(out.ClusterPolicies, p.DeepCopy())
	}
	return out
}

// Nodes names the topology's nodes, sorted.
func (c *Cluster) Nodes() []string {
	var out []string
	for _, n := range c.top.pl.Nodes {
		out = append(out, n.Name)
	}
	sort.Strings(out)
	return out
}

// Endpoint resolves a probe endpoint of the scenario ("ns/pod", "node/N",
// an address) for family 4 or 6 to its namespace and address.
func (c *Cluster) Endpoint(ref string, family int) (*NS, netip.Addr, error) {
	e, err := newResolver(c.p.s.Cluster, c.p.pl).resolve(ref, family)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	return c.top.nsOf(e.place), e.addr, nil
}

// NodeOf names the node whose namespace ns is, or "" for a pod's or the
// external namespace.
func (c *Cluster) NodeOf(ns *NS) string {
	for i, n := range c.top.nodes {
		if n == ns {
			return c.top.pl.Nodes[i].Name
		}
	}
	return ""
}

// StartAgents starts `nfqpolicy run --node-name N --queues 1 --health-addr
// 127.0.0.1:9901` plus args(N, its namespace) in every node namespace, with
// no snapshot: args must say where the state comes from (--kubeconfig). It
// returns once every agent is ready; Close stops them.
func (c *Cluster) StartAgents(ctx context.Context, bin string, args func(node string, ns *NS) ([]string, error)) (err error) {
	if c.agents != nil {
		return errors.New("agents already started")
	}
	dir, err := os.MkdirTemp("", "nfqp-e2e-")
	if err != nil {
		return fmt.Errorf("agent directory: %w", err)
	}
	a := &agentSet{dir: dir, log: c.opts.Log}
	c.agents = a
	for i, node := range c.top.pl.Nodes {
		extra, err := args(node.Name, c.top.nodes[i])
		if err != nil {
			return fmt.Errorf("agent flags for %s: %w", node.Name, err)
		}
		p, err := a.start(bin, extra, node.Name, c.top.nodes[i])
		if err != nil {
			return err
		}
		a.agents = append(a.agents, p)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range a.agents {
		if err := p.waitReady(ctx, deadline); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) agent(node string) (*agentProc, error) {
	if c.agents != nil {
		for _, p := range c.agents.agents {
			if p.node == node {
				return p, nil
			}
		}
	}
	return nil, fmt.Errorf("no agent runs for node %q", node)
}

// AgentGet fetches path ("/debug/counters", "/metrics") from node's agent
// and returns the body and the HTTP status.
func (c *Cluster) AgentGet(ctx context.Context, node, path string) ([]byte, int, error) {
	p, err := c.agent(node)
	if err != nil {
		return nil, 0, err
	}
	return p.get(ctx, path)
}

// AgentLogTail returns the last lines node's agent wrote.
func (c *Cluster) AgentLogTail(node string) string {
	p, err := c.agent(node)
	if err != nil {
		return err.Error()
	}
	return p.logTail()
}

// AgentLog is the path of node's agent log.
func (c *Cluster) AgentLog(node string) string {
	if c.agents == nil {
		return ""
	}
	return filepath.Join(c.agents.dir, "agent-"+node+".log")
}

// AgentsAlive fails if an agent has exited.
func (c *Cluster) AgentsAlive() error {
	if c.agents == nil {
		return errors.New("no agents started")
	}
	return c.agents.alive()
}

// Probe sends every probe of the scenario, as Run does, and reports the
// kernel's verdicts in probe order.
func (c *Cluster) Probe(ctx context.Context) *Report {
	start := time.Now()
	rep := &Report{Topologies: 1}
	var results []Result
	done := make(chan struct{})
	ch := make(chan Result)
	go func() {
		defer close(done)
		for r := range ch {
			results = append(results, r)
		}
	}()
	runProbes(ctx, c.pr, c.p, c.opts, func(r Result) { ch <- r })
	close(ch)
	<-done
	sort.Slice(results, func(i, j int) bool { return results[i].Index < results[j].Index })
	for _, r := range results {
		switch {
		case r.Skipped():
			rep.Skipped++
		case r.Pass():
			rep.Passed++
		default:
			rep.Failed++
		}
	}
	rep.Results = results
	rep.Elapsed = time.Since(start)
	if c.agents != nil {
		if a, err := c.agents.verdicts(ctx); err == nil {
			rep.Agents = a
		}
	}
	return rep
}

// ProbeOnce sends one attempt of a probe whose destination, port and
// protocol the scenario's own probes serve (other destinations have no
// server, so they would always look denied: that is an error). It reports
// whether it was allowed and what was seen.
func (c *Cluster) ProbeOnce(ctx context.Context, pr scenario.Probe) (allowed bool, detail string, err error) {
	from, err := newResolver(c.p.s.Cluster, c.p.pl).resolve(pr.From, pr.Family)
	if err != nil {
		return false, "", fmt.Errorf("from: %w", err)
	}
	to, err := newResolver(c.p.s.Cluster, c.p.pl).resolve(pr.To, pr.Family)
	if err != nil {
		return false, "", fmt.Errorf("to: %w", err)
	}
	if pr.Protocol != "SCTP" && !c.keys[serverKey{place: to.place, addr: to.addr, port: pr.Port, proto: pr.Protocol}] {
		return false, "", fmt.Errorf("no server for %s %s:%d: only the scenario's probe destinations are served", pr.Protocol, to.addr, pr.Port)
	}
	o := c.pr.once(ctx, from, to, pr.Port, pr.Protocol)
	return o.allowed, o.detail, o.err
}

// Close stops the agents and the servers and deletes every namespace.
func (c *Cluster) Close() error {
	var errs []error
	if c.agents != nil {
		errs = append(errs, c.agents.stop())
		c.agents = nil
	}
	if c.srv != nil {
		c.srv.close()
		c.srv = nil
	}
	if c.top != nil {
		if err := c.top.close(); err != nil {
			errs = append(errs, fmt.Errorf("tear down topology: %w", err))
		}
		c.top = nil
	}
	return errors.Join(errs...)
}
