package main

import (
	"context"
	"fmt"
	"io"
)

// cmdMatrix is not written yet; its owner replaces this file.
func cmdMatrix(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy matrix: not implemented yet")
	return 2
}
