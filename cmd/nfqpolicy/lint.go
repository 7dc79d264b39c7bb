package main

import (
	"context"
	"fmt"
	"io"
)

// cmdLint is not written yet; its owner replaces this file.
func cmdLint(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy lint: not implemented yet")
	return 2
}
