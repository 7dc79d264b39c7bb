package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/nfqpolicy/nfqpolicy/debugapi"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// explainAgent asks a running agent's debug socket to explain the flow
// against its live state, and prints the answer like the offline explain.
func explainAgent(socket, from, to string, pt portSpec, family int, out string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := debugapi.Explain(ctx, socket, from, to, pt.String(), family)
	if err != nil {
		fmt.Fprintf(stderr, "nfqpolicy explain: agent %s: %v\n", socket, err)
		return 2
	}
	if out == "json" {
		fmt.Fprintf(stdout, "%s\n", raw)
		return 0
	}
	var e filter.Explanation
	if err := json.Unmarshal(raw, &e); err != nil {
		fmt.Fprintf(stderr, "nfqpolicy explain: agent %s: unexpected answer: %v\n", socket, err)
		return 2
	}
	writeExplanation(stdout, e)
	return 0
}
