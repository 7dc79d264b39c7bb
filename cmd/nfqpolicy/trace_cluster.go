package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/nfqpolicy/nfqpolicy/agents"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

func traceUsage(w io.Writer, fs *flag.FlagSet, kf *kubeFlags) {
	kubectlUsage(w, fs, kf, "trace [--node NAME...] [--from X] [--to Y] [--port 80/TCP] [-o text|json] [options]", `
Streams the decisions the agents make, as they make them, until
interrupted.

With the cluster (any of kubectl's flags such as --kubeconfig or
--context, --node, or run as "kubectl nfqpolicy"), every node's agent is
traced through the API server (pods/exec into the nfqpolicy DaemonSet's
pods; nothing listens on the nodes) and the streams are merged in time
order, each line labelled with its node. Without, the agent on this
machine is traced through --agent SOCKET. Decisions the terminal cannot
keep up with are dropped by the agent and reported as lost.`, `
# Every node, only what x/a sends to port 80
nfqpolicy trace --kubeconfig ~/.kube/config --from x/a --port 80/TCP

# Two nodes, as JSON lines (each names its node)
nfqpolicy trace --node node-1 --node node-2 -o json

# The agent on this machine
nfqpolicy trace --agent /run/nfqpolicy/debug.sock`)
}

// traceInCluster says whether trace reaches the agents through the API
// server: asked for by a kubeconfig flag or --node, or implied by running
// as a kubectl plugin without --agent.
func traceInCluster(fs *flag.FlagSet, kf *kubeFlags, nodes []string) bool {
	if kf.given() || len(nodes) > 0 {
		return true
	}
	agentSet := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "agent" {
			agentSet = true
		}
	})
	return progName() != "nfqpolicy" && !agentSet
}

// traceCluster streams every chosen node's decisions, merged in time order.
func traceCluster(ctx context.Context, kf *kubeFlags, nodes []string, from, to, port, out string, stdout, stderr io.Writer) int {
	ac, err := kf.agents()
	if err != nil {
		printLiveError(stderr, err)
		return 2
	}
	as, err := ac.Find(ctx, nodes...)
	if err != nil {
		printLiveError(stderr, err)
		return 2
	}
	names := make([]string, len(as))
	for i, a := range as {
		names[i] = a.Node
	}
	fmt.Fprintf(stderr, "tracing %d node(s): %v (Ctrl-C to stop)\n", len(as), names)
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	q := agents.TraceQuery{From: from, To: to, Port: port}
	err = ac.Trace(ctx, as, q, agents.DefaultWindow, func(l agents.Line) error {
		if out == "json" {
			_, err := fmt.Fprintf(stdout, "%s\n", l.JSON)
			return err
		}
		var e flowlog.Entry
		if err := json.Unmarshal(l.JSON, &e); err != nil {
			return fmt.Errorf("agent on %s sent a line that is not a decision: %w", l.Node, err)
		}
		_, err := fmt.Fprintf(stdout, "%-*s %s\n", width, l.Node, traceText(&e))
		return err
	}, func(a agents.Agent, err error) {
		fmt.Fprintln(stderr, kubeError(err))
	})
	if err != nil {
		fmt.Fprintln(stderr, kubeError(err))
		return 1
	}
	return 0
}
