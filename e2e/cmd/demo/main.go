// Command demo shows nfqpolicy enforcing a NetworkPolicy on real traffic.
// It builds a two-node cluster out of network namespaces from an embedded
// scenario (the example policy of the Kubernetes documentation), starts
// one `nfqpolicy run` agent per node, sends each probe of the scenario as
// a real connection or datagram, prints every verdict as it happens with
// the reason the policy engine gives, and tears everything down.
//
//	sudo go run ./e2e/cmd/demo
//
// Exit status: 0 every verdict was the expected one, 1 some was not, 2 the
// demo could not run (not root, the agent does not build).
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/e2e"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// scenario.yaml is a copy of
// testdata/conformance/public/seed-1-docs-test-network-policy.yaml
// (go:embed cannot reach outside this directory).
//
//go:embed scenario.yaml
var scenarioYAML []byte

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agent := fs.String("agent", "", "nfqpolicy binary (default: build ./cmd/nfqpolicy)")
	denyAction := fs.String("deny-action", "drop", "the agents' --deny-action: drop or reject")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	scenarios, err := scenario.Parse("scenario.yaml", scenarioYAML)
	if err != nil {
		fmt.Fprintf(stderr, "demo: embedded scenario: %v\n", err)
		return 2
	}
	s := scenarios[0]
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "demo: must run as root: it creates network namespaces (nothing outside them is touched)")
		return 2
	}
	bin := *agent
	if bin == "" {
		dir, err := os.MkdirTemp("", "nfqp-demo-")
		if err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return 2
		}
		defer os.RemoveAll(dir)
		fmt.Fprintln(stdout, "building ./cmd/nfqpolicy ...")
		if bin, err = e2e.BuildAgent(ctx, "", dir); err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return 2
		}
	}
	describe(stdout, s)

	rs, err := filter.Compile(s.Cluster)
	if err != nil {
		fmt.Fprintf(stderr, "demo: compile the scenario: %v\n", err)
		return 2
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stdout, NoColor: true, TimeFormat: "15:04:05"}).
		Level(zerolog.InfoLevel).With().Timestamp().Logger()
	opts := e2e.Options{
		Agent:     bin,
		AgentArgs: []string{"--deny-action=" + *denyAction},
		// One probe at a time, so that the lines follow the traffic.
		Parallel: 1,
		Log:      log,
		OnResult: func(r e2e.Result) {
			fmt.Fprintln(stdout, e2e.FormatVerdict(r))
			if why := reason(rs, r.Probe); why != "" {
				fmt.Fprintf(stdout, "       why: %s\n", why)
			}
		},
	}
	start := time.Now()
	rep, err := e2e.Run(ctx, scenarios, opts)
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 2
	}
	fmt.Fprintf(stdout, "\n%d probes sent as real traffic through the agents: %d as the policy says, %d not (%s); every namespace is deleted\n",
		len(rep.Results), rep.Passed, rep.Failed, time.Since(start).Round(100*time.Millisecond))
	if rep.Failed > 0 {
		return 1
	}
	return 0
}

// describe prints what the demo builds.
func describe(w io.Writer, s *scenario.Scenario) {
	fmt.Fprintf(w, "\nscenario %s\n  %s\n\n", s.Name, s.Source)
	for _, n := range s.Cluster.Nodes {
		fmt.Fprintf(w, "node %-8s %s  (a network namespace with a bridge and an nfqpolicy agent)\n", n.Name, join(cluster.NodeAddrs(n)))
		for _, p := range s.Cluster.Pods {
			if p.Spec.NodeName == n.Name && cluster.PodActive(p) {
				fmt.Fprintf(w, "  pod %-18s %s\n", p.Namespace+"/"+p.Name, join(cluster.PodAddrs(p)))
			}
		}
	}
	for _, p := range s.Cluster.Policies {
		fmt.Fprintf(w, "policy %s/%s\n", p.Namespace, p.Name)
	}
	fmt.Fprintln(w)
}

func join[T fmt.Stringer](xs []T) string {
	var out []string
	for _, x := range xs {
		out = append(out, x.String())
	}
	return strings.Join(out, " ")
}

// reason asks the policy engine why a probe is allowed or denied.
func reason(rs *filter.Ruleset, p scenario.Probe) string {
	if !p.Src.Addr.IsValid() || !p.Dst.Addr.IsValid() {
		return ""
	}
	proto := map[string]uint8{"TCP": filter.ProtoTCP, "UDP": filter.ProtoUDP, "SCTP": filter.ProtoSCTP}[p.Protocol]
	return rs.Describe(rs.Decide(filter.Flow{Src: p.Src.Addr, Dst: p.Dst.Addr, SrcPort: 40000, DstPort: uint16(p.Port), Proto: proto}))
}
