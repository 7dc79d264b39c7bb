package filter

import (
	"net/netip"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// cachedFrom counts the cached verdicts that point at rs.
func cachedFrom(e *Engine, rs *Ruleset) int {
	n := 0
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		for _, k := range sh.lru.Keys() {
			if v, ok := sh.lru.Peek(k); ok && v.Ruleset == rs {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}

// TestSwapReleasesOldRuleset: after a Swap the cache holds no verdict of
// the previous Ruleset, which would otherwise stay alive through it.
func TestSwapReleasesOldRuleset(t *testing.T) {
	old, err := Compile(&cluster.Cluster{})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(old, 1024)
	for i := range 200 {
		src := netip.AddrFrom4([4]byte{192, 168, 0, byte(i)})
		e.Decide(Flow{Src: src, Dst: netip.MustParseAddr("192.168.1.1"), SrcPort: 1000, DstPort: 80, Proto: ProtoTCP})
	}
	if n := cachedFrom(e, old); n == 0 {
		t.Fatal("no verdict cached before the swap: the test proves nothing")
	}
	next, err := Compile(&cluster.Cluster{})
	if err != nil {
		t.Fatal(err)
	}
	e.Swap(next)
	if n := cachedFrom(e, old); n != 0 {
		t.Errorf("%d cached verdicts still point at the swapped-out Ruleset", n)
	}
	f := Flow{Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("192.168.1.1"), SrcPort: 1001, DstPort: 80, Proto: ProtoTCP}
	if v := e.Decide(f); v.Cached || v.Ruleset != next {
		t.Errorf("first decision after the swap: cached=%v, by the new Ruleset=%v", v.Cached, v.Ruleset == next)
	}
	if v := e.Decide(f); !v.Cached {
		t.Error("second decision after the swap did not hit the cache")
	}
}
