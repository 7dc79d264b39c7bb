package main

import (
	"context"
	"fmt"
	"io"
)

// cmdTest is not written yet; its owner replaces this file.
func cmdTest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy test: not implemented yet")
	return 2
}
