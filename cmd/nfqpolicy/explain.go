package main

import (
	"context"
	"fmt"
	"io"
)

// cmdExplain is not written yet; its owner replaces this file.
func cmdExplain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy explain: not implemented yet")
	return 2
}
