package whatif

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

// Parsing is most of the cost of a replay, and each line parses on its
// own, so readParallel spreads it: one goroutine splits the input into
// lines (bufio.Scanner, exactly as the serial reader does) and hands them
// on in batches, Reader.workers goroutines parse the batches, and the
// calling goroutine adds the parsed lines to the flows strictly in input
// order, so that the result (first and last seen, the pods of the latest
// record, the first malformed line) is the serial reader's.

// batchLines is how many lines go to a worker at once: enough to make
// handing over rare, few enough that the workers start early.
const batchLines = 2048

// batch is a run of consecutive lines and, once parsed, their results.
// Batches are recycled, so a steady read allocates nothing.
type batch struct {
	buf   []byte // the lines' bytes
	lines []batchLine
	res   []lineResult
	arena []byte        // the parsed fields' bytes
	done  chan struct{} // a worker has parsed the batch
}

type batchLine struct {
	start, end int
	line       int
}

type lineResult struct {
	line  int
	blank bool
	err   error
	f     flowlog.Fields // views into the batch's arena
}

func (b *batch) reset() {
	b.buf, b.lines = b.buf[:0], b.lines[:0]
}

// parse parses the batch's lines with p.
func (b *batch) parse(p *flowlog.Parser, f *flowlog.Fields) {
	b.res, b.arena = b.res[:0], b.arena[:0]
	for _, l := range b.lines {
		text := b.buf[l.start:l.end]
		res := lineResult{line: l.line}
		switch {
		case len(bytes.TrimSpace(text)) == 0:
			res.blank = true
		default:
			if err := parseLine(p, text, f); err != nil {
				res.err = err
				break
			}
			// Copy what the replay reads: f's views alias the Parser's
			// scratch, which the next line reuses.
			res.f = flowlog.Fields{
				Time: f.Time, Node: b.keep(f.Node), Verdict: b.keep(f.Verdict), Proto: b.keep(f.Proto),
				Src: b.keep(f.Src), Dst: b.keep(f.Dst), SrcPod: b.keep(f.SrcPod), DstPod: b.keep(f.DstPod),
				DstPort: f.DstPort, Lost: f.Lost, RateLimited: f.RateLimited,
			}
		}
		b.res = append(b.res, res)
	}
}

// keep copies v into the arena. A view taken before the arena grew still
// points at the old array, whose bytes stay as they were.
func (b *batch) keep(v []byte) []byte {
	n := len(b.arena)
	b.arena = append(b.arena, v...)
	return b.arena[n:len(b.arena):len(b.arena)]
}

func (r *Reader) readParallel(name string, in io.Reader) error {
	n := 2*r.workers + 2
	free := make(chan *batch, n)
	for range n {
		free <- &batch{done: make(chan struct{}, 1)}
	}
	// Never more batches in flight than exist: sends on work and order
	// never block.
	work, order := make(chan *batch, n), make(chan *batch, n)
	var scanErr error
	go func() {
		defer close(order)
		defer close(work)
		sc := newScanner(in)
		line := 0
		b := <-free
		b.reset()
		for sc.Scan() {
			line++
			start := len(b.buf)
			b.buf = append(b.buf, sc.Bytes()...)
			b.lines = append(b.lines, batchLine{start: start, end: len(b.buf), line: line})
			if len(b.lines) == batchLines {
				work <- b
				order <- b
				b = <-free
				b.reset()
			}
		}
		scanErr = sc.Err()
		if len(b.lines) > 0 {
			work <- b
			order <- b
		}
	}()
	var wg sync.WaitGroup
	for range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var p flowlog.Parser
			var f flowlog.Fields
			for b := range work {
				b.parse(&p, &f)
				b.done <- struct{}{}
			}
		}()
	}
	for b := range order {
		<-b.done
		for i := range b.res {
			res := &b.res[i]
			if res.blank {
				continue
			}
			err := res.err
			if err == nil {
				err = r.add(&res.f)
			}
			if err != nil {
				r.malformed(name, res.line, err)
			}
		}
		free <- b
	}
	wg.Wait()
	if scanErr != nil {
		return fmt.Errorf("read %s: %w", name, scanErr)
	}
	return nil
}
