package main

import (
	"context"
	"fmt"
	"io"
)

// cmdCleanup is not written yet; its owner replaces this file.
func cmdCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy cleanup: not implemented yet")
	return 2
}
