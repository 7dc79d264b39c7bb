// Command nfqpolicy is the node agent (run) and the offline tools (test,
// matrix, explain, lint, audit) of the nfqpolicy NetworkPolicy enforcer.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command runs one subcommand and returns the process exit status:
// 0 success, 1 a negative result (a mismatch, a finding), 2 bad input.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"run":     {"run the node agent: divert new flows to NFQUEUE and decide them", cmdRun},
		"cleanup": {"remove every iptables rule and chain nfqpolicy installed", cmdCleanup},
		"test":    {"run reachability scenario files through the verdict path", cmdTest},
		"matrix":  {"print the pod-to-pod reachability table of a snapshot", cmdMatrix},
		"explain": {"explain the verdict for one flow, both sides", cmdExplain},
		"lint":    {"warn about policies and pods the documentation warns about", cmdLint},
		"audit":   {"summarise a flow log for an audit-mode rollout (audit report)", cmdAudit},
		"trace":   {"stream live decisions from a running agent", cmdTrace},
		"whatif":  {"replay recorded flows through a proposed policy change", cmdWhatif},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "nfqpolicy: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	code := c.run(ctx, args[1:], stdout, stderr)
	if code == 2 && helpAsked(args[1:]) {
		return 0 // the usage was asked for, as kubectl's --help exits 0
	}
	return code
}

// helpAsked reports whether a command's arguments ask for its usage (the
// flag parser stops there and the command prints it).
func helpAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

func usage(w io.Writer, cmds map[string]command) {
	prog := progName()
	fmt.Fprintf(w, "usage: %s COMMAND [flags]\n\ncommands:\n", prog)
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun '%s COMMAND -h' for a command's flags.\n", prog)
}
