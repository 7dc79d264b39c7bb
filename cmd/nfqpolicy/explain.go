package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/probe"
)

func cmdExplain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var snaps flagList
	fs.Var(&snaps, "snapshot", "snapshot file (kubectl YAML/JSON or a scenario); repeatable")
	agent := fs.String("agent", "", "ask a running agent's debug socket instead of reading a snapshot")
	from := fs.String("from", "", "source: ns/pod, node/NAME or an IP address")
	to := fs.String("to", "", "destination: ns/pod, node/NAME or an IP address")
	portFlag := fs.String("port", "80/TCP", "destination port as 80/TCP")
	family := fs.Int("family", 4, "address family for pod and node endpoints: 4 or 6")
	out := fs.String("o", "text", "output: text or json")
	kf := addKubeFlags(fs, true)
	kf.addAgentFlags()
	live := fs.Bool("live", false, "ask the agent on the destination's node (or the source's) for its live verdict, through the API server")
	fs.Usage = func() { explainUsage(stderr, fs, kf) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *from == "" || *to == "" {
		fmt.Fprintln(stderr, "nfqpolicy explain: --from and --to are required")
		return 2
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "nfqpolicy explain: -o %q: want text or json\n", *out)
		return 2
	}
	pt, err := parsePort(*portFlag)
	if err != nil {
		fmt.Fprintf(stderr, "nfqpolicy explain: %v\n", err)
		return 2
	}
	if *agent != "" {
		return explainAgent(*agent, *from, *to, pt, *family, *out, stdout, stderr)
	}
	if len(snaps) == 0 {
		return explainCluster(ctx, kf, *live, *from, *to, pt, *family, *out, stdout, stderr)
	}
	if kf.given() || *live {
		fmt.Fprintln(stderr, "error: --snapshot reads files: kubeconfig flags and --live cannot be used with it")
		return 2
	}
	c, rs, err := loadSnapshot(snaps)
	if err != nil {
		printLoadError(stderr, err)
		return 2
	}
	e, err := explainFlow(c, rs, *from, *to, pt, *family)
	if err != nil {
		fmt.Fprintf(stderr, "nfqpolicy explain: %v\n", err)
		return 2
	}
	if *out == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(e); err != nil {
			fmt.Fprintf(stderr, "nfqpolicy explain: %v\n", err)
			return 2
		}
		return 0
	}
	writeExplanation(stdout, e)
	return 0
}

// explainFlow resolves the endpoints, builds and decodes the flow's first
// packet and explains the verdict on the decoded flow.
func explainFlow(c *cluster.Cluster, rs *filter.Ruleset, from, to string, pt portSpec, family int) (filter.Explanation, error) {
	ix := cluster.NewIndex(c)
	src, err := ix.Resolve(from, family)
	if err != nil {
		return filter.Explanation{}, fmt.Errorf("--from: %w", err)
	}
	dst, err := ix.Resolve(to, family)
	if err != nil {
		return filter.Explanation{}, fmt.Errorf("--to: %w", err)
	}
	f, err := probe.NewPath(rs, 0).Flow(src.Addr, dst.Addr, pt.port, pt.proto)
	if err != nil {
		return filter.Explanation{}, err
	}
	return rs.Explain(f), nil
}

func writeExplanation(w io.Writer, e filter.Explanation) {
	fmt.Fprintf(w, "flow:    %s\nverdict: %s\n", e.Flow, strings.ToUpper(e.Verdict))
	for _, s := range []struct {
		name string
		side filter.SideExplanation
	}{{"egress", e.Egress}, {"ingress", e.Ingress}} {
		fmt.Fprintf(w, "\n%s", s.name)
		if s.side.Pod != "" {
			fmt.Fprintf(w, " of %s", s.side.Pod)
		}
		fmt.Fprintf(w, ": %s\n", s.side.Summary)
		for _, p := range s.side.Policies {
			staged := ""
			if p.Staged {
				staged = " (staged: audit mode, not enforced)"
			}
			if p.Priority != nil {
				// A ClusterNetworkPolicy: its tier and priority, and each
				// rule's name and action.
				fmt.Fprintf(w, "  %s policy %s priority %d%s\n", p.Tier, p.Policy, *p.Priority, staged)
			} else {
				fmt.Fprintf(w, "  policy %s%s\n", p.Policy, staged)
			}
			for _, r := range p.Rules {
				mark := "no match"
				switch {
				case r.Decided && r.Action == "Pass":
					mark = "PASS"
				case r.Decided:
					mark = "DECIDES"
				case r.Matched:
					mark = "MATCH"
				}
				rule := r.Rule
				if r.Name != "" {
					rule += " " + strconv.Quote(r.Name)
				}
				if r.Action != "" {
					rule += " " + r.Action
				}
				fmt.Fprintf(w, "    %-12s %-8s %s\n", rule, mark, r.Why)
			}
		}
	}
}
