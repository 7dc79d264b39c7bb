package main

import (
	"context"
	"fmt"
	"io"
)

// cmdRun is not written yet; its owner replaces this file.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy run: not implemented yet")
	return 2
}
