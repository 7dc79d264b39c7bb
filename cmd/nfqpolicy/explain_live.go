package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/nfqpolicy/nfqpolicy/agents"
	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

func explainUsage(w io.Writer, fs *flag.FlagSet, kf *kubeFlags) {
	kubectlUsage(w, fs, kf, "explain --from X --to Y [--port 80/TCP] [--family 4|6] [--live] [-o text|json] [options]", `
Explains the verdict for one flow: which policies select the source and
the destination, and which rule and peer matched or why none did.

The cluster is read from the API server (kubectl's flags: --kubeconfig,
--context, -n for bare pod names) unless --snapshot files are given, and
decided through the agent's own compile and decide path. --live asks the
agent on the destination pod's node (the source's when the destination is
not a pod) for its live verdict instead, through the API server (pods/exec
into the agent's pod; no port is opened on the node). --agent SOCKET asks
an agent on this machine.`, `
# Why can't frontend reach db on 6379?
nfqpolicy explain -n shop --from frontend --to db --port 6379/TCP

# Ask the agent on db's node what it decides right now
nfqpolicy explain --from shop/frontend --to shop/db --port 6379/TCP --live

# From files instead of a cluster
nfqpolicy explain --snapshot objects.yaml --from 10.0.0.7 --to shop/db --port 6379/TCP`)
}

// explainCluster explains a flow against the live cluster: offline on this
// machine from a fresh list, or (live) by the agent on the flow's node.
func explainCluster(ctx context.Context, kf *kubeFlags, live bool, from, to string, pt portSpec, family int, out string, stdout, stderr io.Writer) int {
	from, to = kf.qualify(from), kf.qualify(to)
	c, rs, err := kf.loadLive(ctx)
	if err != nil && c == nil {
		printLiveError(stderr, err)
		return 2
	}
	// Policies the agent skips as invalid do not stop an explanation:
	// they are reported and the rest is explained, as the agent decides.
	if err != nil {
		printLoadError(stderr, err)
	}
	if live {
		return explainByAgent(ctx, kf, c, from, to, pt, family, out, stdout, stderr)
	}
	e, err := explainFlow(c, rs, from, to, pt, family)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 2
	}
	return printExplanation(e, out, stdout, stderr)
}

func printExplanation(e filter.Explanation, out string, stdout, stderr io.Writer) int {
	if out == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(e); err != nil {
			fmt.Fprintf(stderr, "error: %v\n", err)
			return 2
		}
		return 0
	}
	writeExplanation(stdout, e)
	return 0
}

// explainByAgent asks the agent on the node that decides the flow's
// ingress (the destination pod's), or its egress when the destination is
// not a pod, to explain it against its live state.
func explainByAgent(ctx context.Context, kf *kubeFlags, c *cluster.Cluster, from, to string, pt portSpec, family int, out string, stdout, stderr io.Writer) int {
	ix := cluster.NewIndex(c)
	src, err := ix.Resolve(from, family)
	if err != nil {
		fmt.Fprintf(stderr, "error: --from: %v\n", err)
		return 2
	}
	dst, err := ix.Resolve(to, family)
	if err != nil {
		fmt.Fprintf(stderr, "error: --to: %v\n", err)
		return 2
	}
	node := ""
	switch {
	case dst.Kind == cluster.EndpointPod && dst.NodeName != "":
		node = dst.NodeName
	case src.Kind == cluster.EndpointPod && src.NodeName != "":
		node = src.NodeName
	default:
		fmt.Fprintln(stderr, "error: --live: neither endpoint is a pod scheduled on a node, so no agent decides this flow")
		return 2
	}
	ac, err := kf.agents()
	if err != nil {
		printLiveError(stderr, err)
		return 2
	}
	as, err := ac.Find(ctx, node)
	if err != nil {
		printLiveError(stderr, err)
		return 2
	}
	var buf bytes.Buffer
	args := []string{"explain", "--agent", ac.Socket(), "--from", from, "--to", to, "--port", pt.String(), "--family", fmt.Sprint(family), "-o", "json"}
	if err := ac.Run(ctx, as[0], args, &buf); err != nil {
		printLiveError(stderr, err)
		return 2
	}
	var e filter.Explanation
	if err := json.Unmarshal(buf.Bytes(), &e); err != nil {
		fmt.Fprintf(stderr, "error: agent %s on %s: unexpected answer: %v\n", as[0], node, err)
		return 2
	}
	if out == "json" {
		return printExplanation(e, out, stdout, stderr)
	}
	fmt.Fprintf(stdout, "node:    %s (live verdict of agent %s)\n", node, as[0])
	writeExplanation(stdout, e)
	return 0
}

// agents returns the agent finder for the flags' cluster.
func (k *kubeFlags) agents() (*agents.Cluster, error) {
	cfg, err := k.restConfig()
	if err != nil {
		return nil, err
	}
	if k.cf.Timeout == nil || *k.cf.Timeout == "" || *k.cf.Timeout == "0" {
		cfg.Timeout = 0 // a trace streams until interrupted
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	// client-go logs the exec streams' teardown (Ctrl-C) through klog as
	// unhandled errors; our own error path reports what matters.
	klog.SetLogger(logr.Discard())
	return agents.New(client, agents.NewExecer(cfg, client), k.agentOpts), nil
}
