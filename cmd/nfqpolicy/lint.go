package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/lint"
)

// lintReport is the -o json output.
type lintReport struct {
	Findings []lint.Finding `json:"findings"`
	// Errors are the objects that failed validation and were not linted.
	Errors []string `json:"errors,omitempty"`
	// Skipped are the objects of kinds nfqpolicy does not read (Services,
	// Deployments...), which a snapshot may hold: not linted either.
	Skipped []string `json:"skipped,omitempty"`
}

// cmdLint warns about what the NetworkPolicy and hostNetwork documentation
// warns about. Exit status: 0 clean, 1 findings, 2 bad input (objects that
// fail validation are reported, and the rest is still linted).
func cmdLint(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var snapshots flagList
	fs.Var(&snapshots, "snapshot", "snapshot file or directory (repeatable; kubectl YAML/JSON or scenario files)")
	output := fs.String("o", "text", "output format: text or json")
	kf := addKubeFlags(fs, true)
	fs.Usage = func() { lintUsage(stderr, fs, kf) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	snapshots = append(snapshots, fs.Args()...)
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "nfqpolicy lint: -o %q: want text or json\n", *output)
		return 2
	}
	c, err := lintLoad(ctx, kf, snapshots)
	var ve *cluster.ValidationError
	if err != nil && !errors.As(err, &ve) {
		printLiveError(stderr, err)
		return 2
	}
	findings := lintScope(kf, lint.Lint(c))
	report := lintReport{Findings: findings}
	if ve != nil {
		for _, e := range ve.Errors {
			report.Errors = append(report.Errors, e.Error())
		}
	}
	if c != nil {
		for _, e := range c.Skipped {
			report.Skipped = append(report.Skipped, e.Error())
		}
	}
	if *output == "json" {
		if report.Findings == nil {
			report.Findings = []lint.Finding{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			fmt.Fprintf(stderr, "nfqpolicy lint: %v\n", err)
			return 2
		}
	} else {
		for _, s := range report.Skipped {
			fmt.Fprintf(stderr, "note: %s\n", s)
		}
		for _, f := range findings {
			fmt.Fprintln(stdout, f)
		}
		objects := map[string]bool{}
		for _, f := range findings {
			objects[f.Object] = true
		}
		switch len(findings) {
		case 0:
			fmt.Fprintf(stdout, "no findings (%d policies, %d pods)\n", len(c.Policies), len(c.Pods))
		default:
			fmt.Fprintf(stdout, "%d %s about %d %s (%d policies, %d pods)\n", len(findings), plural(len(findings), "warning", "warnings"),
				len(objects), plural(len(objects), "object", "objects"), len(c.Policies), len(c.Pods))
		}
	}
	if ve != nil {
		for _, e := range ve.Errors {
			fmt.Fprintf(stderr, "error: %v\n", e)
		}
		return 2
	}
	if len(findings) > 0 {
		return 1
	}
	return 0
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
