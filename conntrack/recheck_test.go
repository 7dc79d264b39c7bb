package conntrack

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

var nopLog = zerolog.Nop()

// TestOnSwapCoalesces: swaps that arrive while a recheck runs collapse
// into one more recheck, against the latest Ruleset, after it ends.
func TestOnSwapCoalesces(t *testing.T) {
	r, err := NewRechecker(0x10000, 0, 0x30000, nopLog)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var rss []*filter.Ruleset
	for range 7 {
		rss = append(rss, compileYAML(t, clusterBase))
	}
	var mu sync.Mutex
	var ran []*filter.Ruleset
	started := make(chan struct{}, 10)
	release := make(chan struct{})
	r.run = func(ctx context.Context, rs *filter.Ruleset) (Stats, error) {
		mu.Lock()
		ran = append(ran, rs)
		first := len(ran) == 1
		mu.Unlock()
		started <- struct{}{}
		if first {
			<-release
		}
		return Stats{}, nil
	}
	r.OnSwap(nil, rss[0])
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("first recheck did not start")
	}
	for _, rs := range rss[1:5] {
		r.OnSwap(nil, rs) // while the first one runs
	}
	r.OnSwap(nil, nil) // ignored
	close(release)
	r.wg.Wait()
	mu.Lock()
	got := append([]*filter.Ruleset(nil), ran...)
	mu.Unlock()
	if len(got) != 2 || got[0] != rss[0] || got[1] != rss[4] {
		t.Fatalf("ran %d rechecks (%v), want 2: the first and the latest of the swaps during it", len(got), indexes(rss, got))
	}

	// Idle again: the next swap runs at once.
	r.OnSwap(nil, rss[5])
	r.wg.Wait()
	mu.Lock()
	n := len(ran)
	last := ran[n-1]
	mu.Unlock()
	if n != 3 || last != rss[5] {
		t.Fatalf("after an idle swap: %d rechecks, last %v", n, indexes(rss, []*filter.Ruleset{last}))
	}

	// Closed: nothing runs.
	r.Close()
	r.OnSwap(nil, rss[6])
	r.wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 3 {
		t.Fatalf("a swap after Close ran a recheck")
	}
}

func indexes(all, got []*filter.Ruleset) []int {
	var out []int
	for _, g := range got {
		i := -1
		for j, a := range all {
			if a == g {
				i = j
			}
		}
		out = append(out, i)
	}
	return out
}

// TestRecheckErrors: refused rechecks are errors, counted, never panics.
func TestRecheckErrors(t *testing.T) {
	r, err := NewRechecker(0x10000, 0, 0x30000, nopLog)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Recheck(context.Background(), nil); err == nil {
		t.Error("Recheck(nil) succeeded")
	}
	r.Close()
	if _, err := r.Recheck(context.Background(), compileYAML(t, clusterBase)); err == nil {
		t.Error("Recheck after Close succeeded")
	}
	if c := r.Counters(); c.Errors != 1 || c.Rechecks != 1 {
		t.Errorf("counters %+v, want one failed recheck", c)
	}
}
