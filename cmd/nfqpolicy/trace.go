package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/debugapi"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

func cmdTrace(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agentSock := fs.String("agent", debugapi.DefaultSocket, "the agent's debug socket")
	from := fs.String("from", "", "only flows from this source: ns/pod, an IP address or a CIDR prefix")
	to := fs.String("to", "", "only flows to this destination: ns/pod, an IP address or a CIDR prefix")
	port := fs.String("port", "", "only flows to this port: 80, 80/TCP, 53/UDP or /SCTP")
	out := fs.String("o", "text", "output: text (one line per decision) or json (the agent's JSON lines)")
	kf := addKubeFlags(fs, false)
	kf.addAgentFlags()
	var nodes flagList
	fs.Var(&nodes, "node", "with the cluster: only this node's agent (repeatable; default every node)")
	fs.Usage = func() { traceUsage(stderr, fs, kf) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nfqpolicy trace: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "nfqpolicy trace: -o %q: want text or json\n", *out)
		return 2
	}
	// Check the filter here so that a typo is reported as bad input, not
	// as an agent error.
	if _, err := debugapi.ParseFilter(*from, *to, *port); err != nil {
		fmt.Fprintf(stderr, "nfqpolicy trace: %v\n", err)
		return 2
	}
	if traceInCluster(fs, kf, nodes) {
		return traceCluster(ctx, kf, nodes, *from, *to, *port, *out, stdout, stderr)
	}
	q := debugapi.TraceQuery{From: *from, To: *to, Port: *port}
	err := debugapi.Trace(ctx, *agentSock, q, func(line []byte) error {
		if *out == "json" {
			_, err := fmt.Fprintf(stdout, "%s\n", line)
			return err
		}
		var e flowlog.Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("agent sent a line that is not a decision: %w", err)
		}
		_, err := fmt.Fprintln(stdout, traceText(&e))
		return err
	})
	if err != nil {
		fmt.Fprintf(stderr, "nfqpolicy trace: %v\n", err)
		return 1
	}
	return 0
}

// traceText renders one decision on one line:
//
//	12:00:01.123456 DENY  y/c (10.0.1.3):40000 -> x/b (10.0.1.2):80/TCP  deny: egress: ...
func traceText(e *flowlog.Entry) string {
	var b strings.Builder
	ts := e.Time.Format("15:04:05.000000")
	if e.IsSummary() {
		fmt.Fprintf(&b, "%s LOST  %d decisions (the agent dropped what this client could not keep up with)", ts, e.Lost)
		return b.String()
	}
	fmt.Fprintf(&b, "%s %-5s %s -> %s/%s", ts, strings.ToUpper(e.Verdict),
		side(e.SrcPod, e.Src, e.SrcPort), side(e.DstPod, e.Dst, e.DstPort), strings.ToUpper(e.Proto))
	if e.AuditDiffers {
		fmt.Fprintf(&b, " [%s by %s]", e.AuditVerdict, strings.Join(e.StagedPolicies, ","))
	}
	if e.Cached {
		b.WriteString(" (cached)")
	}
	if e.Reason != "" {
		b.WriteString("  " + e.Reason)
	}
	if e.Lost > 0 {
		fmt.Fprintf(&b, "  [%d earlier decisions lost]", e.Lost)
	}
	return b.String()
}

func side(pod, addr string, port uint16) string {
	s := addr
	if pod != "" {
		s = pod + " (" + addr + ")"
	}
	if port != 0 {
		s += fmt.Sprintf(":%d", port)
	}
	return s
}
