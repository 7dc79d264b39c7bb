package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/probe"
)

func cmdTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print one JSON object per probe")
	staged := fs.Bool("staged", false, "enforce staged (audit-mode) policies too, to check a rollout offline")
	kf := addKubeFlags(fs, false)
	fs.Usage = func() { testUsage(stderr, fs, kf) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	scs, err := loadScenarios(ctx, kf, fs.Args(), stderr)
	if err != nil {
		return 2
	}
	enc := json.NewEncoder(stdout)
	passed, failed := 0, 0
	for _, sc := range scs {
		if ctx.Err() != nil {
			return 2
		}
		res, err := probe.Scenario(sc, probe.Options{Staged: *staged})
		if err != nil {
			fmt.Fprintf(stderr, "nfqpolicy test: %v\n", err)
			return 2
		}
		for _, r := range res {
			if r.Pass() {
				passed++
			} else {
				failed++
			}
			switch {
			case *asJSON:
				if err := enc.Encode(r); err != nil {
					fmt.Fprintf(stderr, "nfqpolicy test: %v\n", err)
					return 2
				}
			case !r.Pass():
				fmt.Fprintf(stdout, "MISMATCH %s:%d %s: %s -> %s %d/%s IPv%d: expected %s, got %s: %s\n",
					filepath.Base(r.File), r.Line, r.Scenario, r.From, r.To, r.Port, r.Protocol, r.Family, r.Expect, r.Got, r.Reason)
			}
		}
	}
	summary := stdout
	if *asJSON {
		summary = stderr // keep stdout one JSON object per line
	}
	fmt.Fprintf(summary, "%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// printLoadError prints every problem of a validation error on its own
// line, so that one bad object does not hide the others.
func printLoadError(w io.Writer, err error) {
	var ve *cluster.ValidationError
	if errors.As(err, &ve) {
		for _, e := range ve.Errors {
			fmt.Fprintf(w, "error: %v\n", e)
		}
		return
	}
	fmt.Fprintf(w, "error: %v\n", err)
}
