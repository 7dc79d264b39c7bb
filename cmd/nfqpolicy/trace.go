package main

import (
	"context"
	"fmt"
	"io"
)

// cmdTrace is not written yet; its owner replaces this file.
func cmdTrace(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy trace: not implemented yet")
	return 2
}
