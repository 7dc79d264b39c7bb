// Command netcheck runs reachability scenarios against the real kernel: it
// builds a cluster of network namespaces per scenario topology, starts an
// `nfqpolicy run` agent in every node namespace, sends every probe as real
// TCP, UDP or SCTP traffic and reports the probes whose kernel verdict
// differs from the scenario's expectation.
//
//	go run ./e2e/cmd/netcheck [--json] PATH...
//
// Exit status: 0 every probe passed, 1 at least one mismatch, 2 bad input
// or an environment that cannot run the check (not root, no ip command,
// the agent does not build).
package main

import (
	"context"
	"encoding/json"
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

	"github.com/nfqpolicy/nfqpolicy/e2e"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("netcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the report as one JSON document")
	agent := fs.String("agent", "", "nfqpolicy binary to start in every node (default: build ./cmd/nfqpolicy)")
	noAgent := fs.Bool("no-agent", false, "start no agent: every probe must then be allowed (tests the topology itself)")
	timeout := fs.Duration("timeout", time.Second, "time one probe attempt waits for a connection or reply")
	attempts := fs.Int("attempts", 3, "tries of a probe expected to be allowed before it counts as denied")
	parallel := fs.Int("parallel", 256, "probes in flight")
	quiet := fs.Bool("quiet", false, "no progress log on stderr")
	fresh := fs.Bool("fresh", false, "a new topology and agents per scenario (default: scenarios with the same pods share them and the agents reload)")
	all := fs.Bool("all", false, "print every probe's verdict, not only the mismatches")
	verbose := fs.Bool("v", false, "debug log: agent command lines and log files, reload times")
	var agentArgs stringList
	fs.Var(&agentArgs, "agent-arg", "extra flag for every `nfqpolicy run`, e.g. --agent-arg=--deny-action=reject (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: netcheck [flags] PATH...\n\nRuns reachability scenario files (or directories of them) against the kernel.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	log := zerolog.New(stderr).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	if *verbose {
		log = log.Level(zerolog.DebugLevel)
	}
	if *quiet {
		log = zerolog.Nop()
	}
	scenarios, err := scenario.LoadAll(fs.Args()...)
	if err != nil {
		fmt.Fprintf(stderr, "netcheck: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "netcheck: must run as root (it creates network namespaces)")
		return 2
	}
	opts := e2e.Options{Timeout: *timeout, Attempts: *attempts, Parallel: *parallel, Log: log, AgentArgs: agentArgs, Fresh: *fresh}
	if !*noAgent {
		opts.Agent = *agent
		if opts.Agent == "" {
			dir, err := os.MkdirTemp("", "netcheck-")
			if err != nil {
				fmt.Fprintf(stderr, "netcheck: %v\n", err)
				return 2
			}
			defer os.RemoveAll(dir)
			if opts.Agent, err = e2e.BuildAgent(ctx, "", dir); err != nil {
				fmt.Fprintf(stderr, "netcheck: %v\n", err)
				return 2
			}
		}
	}
	rep, err := e2e.Run(ctx, scenarios, opts)
	var inErr *e2e.InputError
	if errors.As(err, &inErr) {
		fmt.Fprintf(stderr, "netcheck: %v\n", err)
		return 2
	}
	if rep == nil {
		rep = &e2e.Report{}
	}
	if *asJSON {
		writeJSON(stdout, rep, err)
	} else {
		for _, r := range rep.Results {
			switch {
			case r.Skipped():
				fmt.Fprintln(stderr, e2e.FormatMismatch(r))
			case !r.Pass():
				fmt.Fprintln(stdout, e2e.FormatMismatch(r))
			case *all:
				fmt.Fprintf(stdout, "%s: probes[%d] %s\n", r.Scenario, r.Index, e2e.FormatVerdict(r))
			}
		}
		line := fmt.Sprintf("%d passed, %d failed", rep.Passed, rep.Failed)
		if rep.Skipped > 0 {
			line += fmt.Sprintf(", %d skipped (no kernel verdict possible)", rep.Skipped)
		}
		if err != nil {
			line += " before the run stopped"
		}
		fmt.Fprintln(stdout, line)
	}
	if err != nil {
		fmt.Fprintf(stderr, "netcheck: run stopped: %v\n", err)
		return 2
	}
	if rep.Failed > 0 {
		return 1
	}
	return 0
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

type jsonMismatch struct {
	Scenario string `json:"scenario"`
	File     string `json:"file"`
	Probe    int    `json:"probe"`
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Family   int    `json:"family"`
	Expect   string `json:"expect"`
	Got      string `json:"got"`
	Detail   string `json:"detail,omitempty"`
	Attempts int    `json:"attempts"`
}

func writeJSON(w io.Writer, rep *e2e.Report, runErr error) {
	out := struct {
		Passed     int               `json:"passed"`
		Failed     int               `json:"failed"`
		Skipped    int               `json:"skipped"`
		Topologies int               `json:"topologies"`
		Seconds    float64           `json:"seconds"`
		Error      string            `json:"error,omitempty"`
		Agents     e2e.AgentCounters `json:"agents"`
		Mismatches []jsonMismatch    `json:"mismatches"`
		Skips      []jsonMismatch    `json:"skips,omitempty"`
	}{Passed: rep.Passed, Failed: rep.Failed, Skipped: rep.Skipped, Topologies: rep.Topologies, Seconds: rep.Elapsed.Seconds(), Agents: rep.Agents, Mismatches: []jsonMismatch{}}
	if runErr != nil {
		out.Error = runErr.Error()
	}
	for _, r := range rep.Results {
		if r.Pass() {
			continue
		}
		p := r.Probe
		m := jsonMismatch{
			Scenario: r.Scenario, File: r.File, Probe: r.Index, From: p.From, To: p.To, Port: p.Port,
			Protocol: p.Protocol, Family: p.Family, Expect: p.Expect, Got: r.Got, Detail: r.Detail, Attempts: r.Attempts,
		}
		if r.Skipped() {
			out.Skips = append(out.Skips, m)
		} else {
			out.Mismatches = append(out.Mismatches, m)
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
