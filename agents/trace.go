package agents

import (
	"bufio"
	"container/heap"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// TraceQuery selects the decisions streamed ("" for any); the agents'
// own trace filter applies it, so unmatched decisions never leave a node.
type TraceQuery struct {
	From, To, Port string
}

// Line is one decision as one node's agent rendered it (a flow-log JSON
// line, flowlog.Entry reads it).
type Line struct {
	Node string
	Time time.Time
	JSON []byte
}

// DefaultWindow is how long Trace holds a decision back so that one made
// earlier on another node, still in flight, can be printed before it.
const DefaultWindow = 300 * time.Millisecond

// Trace streams the decisions of every agent in as, merged in time order,
// calling emit with each until ctx is done (nil), emit fails (its error),
// or every stream has ended. Decisions are held back for window (at most)
// and released in timestamp order, so nodes' streams interleave correctly
// as long as their clocks agree within that. A stream that fails is
// reported through failed and the others go on; Trace then returns an
// error naming how many failed.
func (c *Cluster) Trace(ctx context.Context, as []Agent, q TraceQuery, window time.Duration, emit func(Line) error, failed func(Agent, error)) error {
	if window <= 0 {
		window = DefaultWindow
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan arrival, 256)
	type result struct {
		a   Agent
		err error
	}
	done := make(chan result, len(as))
	var wg sync.WaitGroup
	for _, a := range as {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done <- result{a, c.stream(ctx, a, q, lines)}
		}()
	}
	go func() { wg.Wait(); close(lines) }()

	var pending arrivals
	tick := time.NewTicker(window / 4)
	defer tick.Stop()
	nfailed, finished := 0, 0
	finish := func(r result) {
		finished++
		if r.err != nil && ctx.Err() == nil {
			nfailed++
			failed(r.a, r.err) // now, while the other nodes keep streaming
		}
	}
	flush := func(all bool) error {
		now := time.Now()
		for len(pending) > 0 && (all || now.Sub(pending[0].at) >= window) {
			a := heap.Pop(&pending).(arrival)
			if err := emit(a.line); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		select {
		case a, ok := <-lines:
			if ok {
				heap.Push(&pending, a)
				continue
			}
			for finished < len(as) {
				finish(<-done)
			}
			if ctx.Err() != nil {
				return nil
			}
			if err := flush(true); err != nil {
				return err
			}
			if nfailed > 0 {
				return fmt.Errorf("%d of %d agents' trace streams failed", nfailed, len(as))
			}
			return ErrStreamEnded
		case <-tick.C:
			if err := flush(false); err != nil {
				return err
			}
		case r := <-done:
			finish(r)
		}
	}
}

// stream runs `nfqpolicy trace -o json` in a's pod and sends each line.
func (c *Cluster) stream(ctx context.Context, a Agent, q TraceQuery, out chan<- arrival) error {
	args := []string{"trace", "--agent", c.opts.Socket, "-o", "json"}
	for _, f := range []struct{ name, v string }{{"--from", q.From}, {"--to", q.To}, {"--port", q.Port}} {
		if f.v != "" {
			args = append(args, f.name, f.v)
		}
	}
	pr, pw := io.Pipe()
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			raw := append([]byte(nil), sc.Bytes()...)
			var head struct {
				Time time.Time `json:"time"`
			}
			now := time.Now()
			l := Line{Node: a.Node, JSON: raw, Time: now}
			if json.Unmarshal(raw, &head) == nil && !head.Time.IsZero() {
				l.Time = head.Time
			}
			select {
			case out <- arrival{line: l, at: now}:
			case <-ctx.Done():
			}
		}
		// Drain so that the exec stream never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := c.Run(ctx, a, args, pw)
	pw.Close()
	<-read
	if err == nil && ctx.Err() == nil {
		return fmt.Errorf("agent %s on %s: %w", a, a.Node, ErrStreamEnded)
	}
	return err
}

// arrival is a decision and when this process received it.
type arrival struct {
	line Line
	at   time.Time
}

// arrivals is a min-heap by decision time, then node.
type arrivals []arrival

func (h arrivals) Len() int { return len(h) }
func (h arrivals) Less(i, j int) bool {
	if !h[i].line.Time.Equal(h[j].line.Time) {
		return h[i].line.Time.Before(h[j].line.Time)
	}
	return h[i].line.Node < h[j].line.Node
}
func (h arrivals) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *arrivals) Push(x any)   { *h = append(*h, x.(arrival)) }
func (h *arrivals) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
