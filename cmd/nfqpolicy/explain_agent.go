package main

import (
	"fmt"
	"io"
)

// explainAgent asks a running agent; wired to the debug API client.
func explainAgent(socket, from, to string, pt portSpec, family int, out string, stdout, stderr io.Writer) int {
	fmt.Fprintf(stderr, "nfqpolicy explain: --agent is not available yet (socket %s)\n", socket)
	return 2
}
