package main

import (
	"context"
	"fmt"
	"io"
)

// cmdAudit is not written yet; its owner replaces this file.
func cmdAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "nfqpolicy audit: not implemented yet")
	return 2
}
